"""RPCs of broadcasts (and the members' messages) and of quick replies."""

from __future__ import annotations

from datetime import timedelta

from mall.community.v1 import community_service_pb2 as pb
from mallkit.auth import member_scope, principal
from mallkit.errors import InvalidArgument
from mallkit.names import optional_id, parse_id, parse_ids
from mallkit.pagination import page_size
from mallkit.validation import Validator

from ..messages import (
    KEYWORD,
    MAX_AHEAD,
    PAGE_PATH,
    URL,
    broadcast_pb,
    category_pb,
    message_pb,
    quick_reply_pb,
    to_dt,
    valid_time,
)
from .base import RpcBase


def _is_set(msg, name: str) -> bool:
    field = msg.DESCRIPTOR.fields_by_name[name]
    return msg.HasField(name) if field.message_type is not None else bool(getattr(msg, name))


class BroadcastsRpc(RpcBase):

    async def CreateBroadcast(self, request, context):
        b, v = request.broadcast, Validator()
        v.text("broadcast.title", b.title, max_len=64, min_len=1)
        v.text("broadcast.text", b.text, max_len=1000, min_len=1)
        v.check(len(b.groups) <= 50, "broadcast.groups", "at most 50 groups")
        v.check(len(b.members) <= 1000, "broadcast.members", "at most 1000 members")
        if b.segment:
            v.check(not b.groups and not b.members, "broadcast.segment", "a segment broadcast names no groups or members")
            return await self._segment_broadcast(request, v)
        v.check(bool(b.groups) or bool(b.members), "broadcast.groups", "name target groups, members or a segment")
        for name in ("subscribe_message", "template_id", "send_time", "daily", "end_time", "segment_version"):
            v.check(not _is_set(b, name), f"broadcast.{name}", "only segment broadcasts are scheduled or sent by reach")
        v.done()
        if b.post:
            parse_ids(b.post, "groups/{}/posts/{}", "broadcast.post")
        groups = list(dict.fromkeys(parse_id(g, "groups", f"broadcast.groups[{i}]") for i, g in enumerate(b.groups)))
        members = list(dict.fromkeys(parse_id(m, "members", f"broadcast.members[{i}]") for i, m in enumerate(b.members)))
        sender, now = principal().subject, self.clock()

        async def use_case(s):
            row = await self.broadcasts.create_broadcast(s, title=b.title, text=b.text, post=b.post, group_ids=groups,
                                                         member_ids=members, sender=sender, now=now)
            return broadcast_pb(row)

        return await self._run(request, pb.Broadcast, use_case, required=True)

    async def _segment_broadcast(self, request, v: Validator):
        b, now = request.broadcast, self.clock()
        v.check(not b.subscribe_message or bool(b.template_id), "broadcast.template_id",
                "is required with subscribe_message")
        v.check(bool(b.subscribe_message) or not b.template_id, "broadcast.template_id", "only with subscribe_message")
        send_time = end_time = None
        if b.HasField("send_time") and valid_time(v, "broadcast.send_time", b.send_time):
            send_time = to_dt(b.send_time)
            v.check(now - timedelta(minutes=5) <= send_time <= now + MAX_AHEAD, "broadcast.send_time",
                    "must be now or in the future (within a year)")
        v.check(not b.daily or send_time is not None, "broadcast.send_time", "is required for a daily broadcast")
        if b.HasField("end_time") and valid_time(v, "broadcast.end_time", b.end_time):
            end_time = to_dt(b.end_time)
            v.check(b.daily, "broadcast.end_time", "only daily broadcasts have an end time")
            v.check(send_time is None or end_time > send_time, "broadcast.end_time", "must be after send_time")
        v.done()
        if b.post:
            parse_ids(b.post, "groups/{}/posts/{}", "broadcast.post")
        segment = b.segment.removeprefix("segments/")
        await self.directory.snapshot(segment, b.segment_version)  # NOT_FOUND on field segment before anything is written
        fields = {"title": b.title, "text": b.text, "post": b.post, "segment": segment,
                  "segment_version": b.segment_version, "subscribe_message": b.subscribe_message,
                  "template_id": b.template_id, "send_time": send_time, "daily": b.daily, "end_time": end_time}
        sender = principal().subject

        async def use_case(s):
            return broadcast_pb(await self.broadcasts.create_segment_broadcast(s, fields=fields, sender=sender, now=now))

        return await self._run(request, pb.Broadcast, use_case, required=True)

    async def CancelBroadcast(self, request, context):
        broadcast_id = parse_id(request.name, "broadcasts", "name")

        async def use_case(s):
            b = await self.broadcasts.broadcast(s, broadcast_id)
            await self.broadcasts.cancel(s, b)
            return broadcast_pb(b)

        return await self._run(request, pb.Broadcast, use_case)

    async def GetBroadcast(self, request, context):
        broadcast_id = parse_id(request.name, "broadcasts", "name")
        async with self.sessions() as s:
            return broadcast_pb(await self.broadcasts.broadcast(s, broadcast_id))

    async def ListBroadcasts(self, request, context):
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.broadcasts.list_broadcasts(s, size, request.page_token)
        return pb.ListBroadcastsResponse(broadcasts=[broadcast_pb(b) for b in rows], next_page_token=token)

    async def ListMessages(self, request, context):
        member_id = member_scope(request.parent, "parent")
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.broadcasts.list_messages(s, member_id, size, request.page_token)
        return pb.ListMessagesResponse(messages=[message_pb(m, b) for m, b in rows], next_page_token=token)

    async def _touch(self, request, what: str):
        parts = request.name.split("/")
        if len(parts) != 4 or parts[2] != "messages":
            raise InvalidArgument.field("name", "must look like members/me/messages/{id}")
        member_id = member_scope("/".join(parts[:2]), "name")
        message_id = parse_id("/".join(parts[2:]), "messages", "name")
        now = self.clock()

        async def use_case(s):
            m, b = await self.broadcasts.touch_message(s, member_id, message_id, what, now)
            return message_pb(m, b)

        return await self._run(request, pb.Message, use_case)

    async def OpenMessage(self, request, context):
        return await self._touch(request, "open")

    async def ClickMessage(self, request, context):
        return await self._touch(request, "click")

    # --- quick replies ---------------------------------------------------------------------

    async def CreateQuickReplyCategory(self, request, context):
        c, v = request.quick_reply_category, Validator()
        v.text("quick_reply_category.display_name", c.display_name, max_len=32, min_len=1)
        v.done()
        now = self.clock()

        async def use_case(s):
            return category_pb(await self.quick_replies.create_category(s, c.display_name, now))

        return await self._run(request, pb.QuickReplyCategory, use_case)

    async def ListQuickReplyCategories(self, request, context):
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.quick_replies.list_categories(s, size, request.page_token)
        return pb.ListQuickReplyCategoriesResponse(quick_reply_categories=[category_pb(c) for c in rows],
                                                   next_page_token=token)

    async def CreateQuickReply(self, request, context):
        category_id = parse_id(request.parent, "quickReplyCategories", "parent")
        q, v = request.quick_reply, Validator()
        v.enum("quick_reply.kind", q.kind, pb.QuickReplyKind, required=True)
        v.text("quick_reply.title", q.title, max_len=64, min_len=1)
        v.text("quick_reply.text", q.text, max_len=2000, required=q.kind == pb.QUICK_REPLY_KIND_TEXT)
        v.pattern("quick_reply.image_url", q.image_url, URL, "must be an https URL of at most 512 characters",
                  required=q.kind in (pb.QUICK_REPLY_KIND_IMAGE, pb.QUICK_REPLY_KIND_MINI_PROGRAM_CARD))
        v.pattern("quick_reply.page_path", q.page_path, PAGE_PATH, "must be a mini-program page path",
                  required=q.kind == pb.QUICK_REPLY_KIND_MINI_PROGRAM_CARD)
        v.check(len(q.keywords) <= 10, "quick_reply.keywords", "at most 10 keywords")
        for i, k in enumerate(q.keywords):
            v.pattern(f"quick_reply.keywords[{i}]", k, KEYWORD, "1 to 16 characters without spaces or '<' '>'")
        v.done()
        now = self.clock()
        fields = {"kind": q.kind, "title": q.title, "text": q.text, "image_url": q.image_url, "page_path": q.page_path}

        async def use_case(s):
            row = await self.quick_replies.create_quick_reply(s, category_id, fields, list(dict.fromkeys(q.keywords)), now)
            return quick_reply_pb(row)

        return await self._run(request, pb.QuickReply, use_case)

    async def ListQuickReplies(self, request, context):
        category_id = None if request.parent == "quickReplyCategories/-" else \
            optional_id(request.parent, "quickReplyCategories", "parent")
        if category_id is None and request.parent != "quickReplyCategories/-":
            raise InvalidArgument.field("parent", "must look like quickReplyCategories/{id} or quickReplyCategories/-")
        v = Validator()
        v.text("keyword", request.keyword, max_len=32)
        v.done()
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.quick_replies.list_quick_replies(s, category_id, request.keyword, size,
                                                                      request.page_token)
        return pb.ListQuickRepliesResponse(quick_replies=[quick_reply_pb(q) for q in rows], next_page_token=token)

    async def UseQuickReply(self, request, context):
        category_id, reply_id = parse_ids(request.name, "quickReplyCategories/{}/quickReplies/{}", "name")

        async def use_case(s):
            return quick_reply_pb(await self.quick_replies.use_quick_reply(s, category_id, reply_id))

        return await self._run(request, pb.QuickReply, use_case)
