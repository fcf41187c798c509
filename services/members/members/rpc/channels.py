"""RPCs of channel codes and touchpoints."""

from __future__ import annotations

from google.protobuf import empty_pb2

from mall.members.v1 import members_service_pb2 as pb
from mallkit.auth import member_scope
from mallkit.names import optional_id, parse_id
from mallkit.pagination import page_size
from mallkit.validation import Validator

from ..messages import (
    SCENE,
    channel_pb,
    tag_ids_of,
    touchpoint_pb,
    update_paths,
)
from .base import RpcBase


class ChannelsRpc(RpcBase):
    async def CreateChannelCode(self, request, context):
        c, v = request.channel_code, Validator()
        v.text("channel_code.display_name", c.display_name, max_len=64, min_len=1)
        v.enum("channel_code.channel_type", c.channel_type, pb.ChannelType, required=True)
        v.check(len(c.tags) <= 20, "channel_code.tags", "at most 20 tags")
        v.done()
        store_id = optional_id(c.store, "stores", "channel_code.store")
        guide_id = optional_id(c.guide, "staff", "channel_code.guide")
        tag_ids = tag_ids_of(c.tags, "channel_code.tags")

        async def use_case(s):
            row = await self.channels.create_channel_code(s, display_name=c.display_name, channel_type=c.channel_type,
                                                          store_id=store_id, guide_id=guide_id, tag_ids=tag_ids)
            return channel_pb(row, (await self.channels.channel_tags(s, [row.id]))[row.id])

        return await self.idem.run(request, pb.ChannelCode, use_case)

    async def GetChannelCode(self, request, context):
        channel_id = parse_id(request.name, "channelCodes", "name")
        async with self.sessions() as s:
            c = await self.channels.channel_code(s, channel_id)
            return channel_pb(c, (await self.channels.channel_tags(s, [c.id]))[c.id])

    async def ListChannelCodes(self, request, context):
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.channels.list_channel_codes(s, size, request.page_token)
            tags = await self.channels.channel_tags(s, [c.id for c in rows])
        return pb.ListChannelCodesResponse(channel_codes=[channel_pb(c, tags[c.id]) for c in rows], next_page_token=token)

    async def UpdateChannelCode(self, request, context):
        c = request.channel_code
        channel_id = parse_id(c.name, "channelCodes", "channel_code.name")
        paths = update_paths(request.update_mask.paths, c, {"name", "scene", "arrival_count", "create_time", "channel_type"},
                             {"display_name", "store", "guide", "tags"}, "ChannelCode")
        v, changes = Validator(), {}
        tag_ids = None
        if "display_name" in paths:
            v.text("channel_code.display_name", c.display_name, max_len=64, min_len=1)
            changes["display_name"] = c.display_name
        if "tags" in paths:
            v.check(len(c.tags) <= 20, "channel_code.tags", "at most 20 tags")
        v.done()
        if "store" in paths:
            changes["store_id"] = optional_id(c.store, "stores", "channel_code.store")
        if "guide" in paths:
            changes["guide_id"] = optional_id(c.guide, "staff", "channel_code.guide")
        if "tags" in paths:
            tag_ids = tag_ids_of(c.tags, "channel_code.tags")

        async def use_case(s):
            row = await self.channels.update_channel_code(s, channel_id, changes, tag_ids)
            return channel_pb(row, (await self.channels.channel_tags(s, [row.id]))[row.id])

        return await self.idem.run(request, pb.ChannelCode, use_case)

    async def DeleteChannelCode(self, request, context):
        channel_id = parse_id(request.name, "channelCodes", "name")

        async def use_case(s):
            await self.channels.delete_channel_code(s, channel_id)
            return empty_pb2.Empty()

        return await self.idem.run(request, empty_pb2.Empty, use_case)

    async def CreateTouchpoint(self, request, context):
        member_id = member_scope(request.parent, "parent")
        v = Validator()
        v.pattern("touchpoint.scene", request.touchpoint.scene, SCENE, "must be a channel code scene", required=True)
        v.done()

        async def use_case(s):
            return touchpoint_pb(await self.channels.create_touchpoint(s, member_id, request.touchpoint.scene))

        return await self.idem.run(request, pb.Touchpoint, use_case)

    async def ListTouchpoints(self, request, context):
        member_id = member_scope(request.parent, "parent")
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.channels.list_touchpoints(s, member_id, size, request.page_token)
        return pb.ListTouchpointsResponse(touchpoints=[touchpoint_pb(t) for t in rows], next_page_token=token)
