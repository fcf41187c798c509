"""RPCs of tag groups, tags and the tags of members."""

from __future__ import annotations

from google.protobuf import empty_pb2

from mall.members.v1 import members_service_pb2 as pb
from mallkit.auth import member_scope, principal
from mallkit.names import parse_id, parse_ids
from mallkit.pagination import page_size
from mallkit.validation import Validator

from ..messages import (
    set_time,
    tag_group_pb,
    tag_ids_of,
    tag_pb,
    update_paths,
)
from .base import RpcBase


class TagsRpc(RpcBase):
    async def CreateTagGroup(self, request, context):
        g, v = request.tag_group, Validator()
        v.text("tag_group.display_name", g.display_name, max_len=32, min_len=1)
        v.enum("tag_group.selection", g.selection, pb.TagSelection, required=True)
        v.text("tag_group.description", g.description, max_len=256)
        v.done()

        async def use_case(s):
            return tag_group_pb(await self.tags.create_tag_group(s, g.display_name, g.selection, g.description))

        return await self.idem.run(request, pb.TagGroup, use_case)

    async def ListTagGroups(self, request, context):
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.tags.list_tag_groups(s, size, request.page_token)
        return pb.ListTagGroupsResponse(tag_groups=[tag_group_pb(g) for g in rows], next_page_token=token)

    async def UpdateTagGroup(self, request, context):
        g = request.tag_group
        group_id = parse_id(g.name, "tagGroups", "tag_group.name")
        paths = update_paths(request.update_mask.paths, g, {"name", "create_time", "selection"},
                             {"display_name", "description"}, "TagGroup")
        v, changes = Validator(), {}
        if "display_name" in paths:
            v.text("tag_group.display_name", g.display_name, max_len=32, min_len=1)
            changes["display_name"] = g.display_name
        if "description" in paths:
            v.text("tag_group.description", g.description, max_len=256)
            changes["description"] = g.description
        v.done()

        async def use_case(s):
            return tag_group_pb(await self.tags.update_tag_group(s, group_id, changes))

        return await self.idem.run(request, pb.TagGroup, use_case)

    async def DeleteTagGroup(self, request, context):
        group_id = parse_id(request.name, "tagGroups", "name")

        async def use_case(s):
            await self.tags.delete_tag_group(s, group_id)
            return empty_pb2.Empty()

        return await self.idem.run(request, empty_pb2.Empty, use_case)

    async def CreateTag(self, request, context):
        group_id = parse_id(request.parent, "tagGroups", "parent")
        v = Validator()
        v.text("tag.display_name", request.tag.display_name, max_len=32, min_len=1)
        v.done()

        async def use_case(s):
            return tag_pb(await self.tags.create_tag(s, group_id, request.tag.display_name))

        return await self.idem.run(request, pb.Tag, use_case)

    async def ListTags(self, request, context):
        group_id = None if request.parent == "tagGroups/-" else parse_id(request.parent, "tagGroups", "parent")
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.tags.list_tags(s, group_id, size, request.page_token)
        return pb.ListTagsResponse(tags=[tag_pb(t) for t in rows], next_page_token=token)

    async def DeleteTag(self, request, context):
        group_id, tag_id = parse_ids(request.name, "tagGroups/{}/tags/{}", "name")

        async def use_case(s):
            await self.tags.delete_tag(s, group_id, tag_id)
            return empty_pb2.Empty()

        return await self.idem.run(request, empty_pb2.Empty, use_case)

    def _bulk(self, request) -> tuple[list[int], list[int]]:
        v = Validator()
        v.check(1 <= len(request.members) <= 1000, "members", "1 to 1000 members")
        v.check(1 <= len(request.tags) <= 20, "tags", "1 to 20 tags")
        v.done()
        members = [parse_id(n, "members", f"members[{i}]") for i, n in enumerate(request.members)]
        return members, tag_ids_of(request.tags, "tags")

    async def ApplyTags(self, request, context):
        members, tags = self._bulk(request)
        p = principal()
        if p.is_staff:
            source, ref = pb.TAG_SOURCE_MANUAL, p.subject
        else:
            v = Validator()
            v.enum("source", request.source, pb.TagSource)
            v.text("source_ref", request.source_ref, max_len=128)
            v.done()
            source, ref = request.source or pb.TAG_SOURCE_RULE, request.source_ref

        async def use_case(s):
            return pb.ApplyTagsResponse(applied_count=await self.tags.apply_tags(s, members, tags, source, ref))

        return await self.idem.run(request, pb.ApplyTagsResponse, use_case)

    async def RemoveTags(self, request, context):
        members, tags = self._bulk(request)

        async def use_case(s):
            return pb.RemoveTagsResponse(removed_count=await self.tags.remove_tags(s, members, tags))

        return await self.idem.run(request, pb.RemoveTagsResponse, use_case)

    async def ListMemberTags(self, request, context):
        member_id = member_scope(request.parent, "parent")
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.tags.list_member_tags(s, member_id, size, request.page_token)
        out = []
        for mt, tag in rows:
            item = pb.MemberTag(tag=f"tagGroups/{tag.group_id}/tags/{tag.id}", tag_display_name=tag.display_name,
                                source=mt.source, source_ref=mt.source_ref)
            set_time(item.create_time, mt.create_time)
            out.append(item)
        return pb.ListMemberTagsResponse(member_tags=out, next_page_token=token)
