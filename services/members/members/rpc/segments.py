"""RPCs of segments: define, preview, materialize, and read a snapshot (services)."""

from __future__ import annotations

import re

from google.protobuf import empty_pb2
from sqlalchemy import select

from mall.members.v1 import members_service_pb2 as pb
from mallkit.errors import InvalidArgument
from mallkit.names import parse_id
from mallkit.pagination import page_size
from mallkit.validation import Validator

from ..messages import segment_pb, snapshot_pb, update_paths
from ..models import SegmentSnapshotMember
from ..rules import SEGMENT_KEY, rule_of
from .base import RpcBase

SEGMENT_NAME = re.compile(r"segments/([a-z][a-z0-9-]{2,62})")
SNAPSHOT_NAME = re.compile(r"segments/([a-z][a-z0-9-]{2,62})/snapshots/(latest|[1-9][0-9]{0,8})")


def segment_key(name: str, field: str) -> str:
    m = SEGMENT_NAME.fullmatch(name)
    if not m:
        raise InvalidArgument.field(field, "must look like segments/{segment}")
    return m.group(1)


class SegmentsRpc(RpcBase):
    async def CreateSegment(self, request, context):
        seg, v = request.segment, Validator()
        v.pattern("segment_id", request.segment_id, SEGMENT_KEY,
                  "must be 3 to 63 characters of [a-z0-9-] starting with a letter", required=True)
        v.text("segment.display_name", seg.display_name, max_len=64, min_len=1)
        v.text("segment.description", seg.description, max_len=256)
        v.check(seg.HasField("rule"), "segment.rule", "is required")
        v.done()
        rule = rule_of(seg.rule)

        async def use_case(s):
            return segment_pb(await self.segments.create(s, request.segment_id, seg.display_name, seg.description,
                                                         rule))

        return await self.idem.run(request, pb.Segment, use_case)

    async def GetSegment(self, request, context):
        key = segment_key(request.name, "name")
        async with self.sessions() as s:
            return segment_pb(await self.segments.by_key(s, key))

    async def ListSegments(self, request, context):
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.segments.list_segments(s, size, request.page_token)
        return pb.ListSegmentsResponse(segments=[segment_pb(x) for x in rows], next_page_token=token)

    async def UpdateSegment(self, request, context):
        seg = request.segment
        key = segment_key(seg.name, "segment.name")
        paths = update_paths(request.update_mask.paths, seg, {"name", "builtin", "latest_version", "create_time",
                                                               "update_time"},
                             {"display_name", "description", "rule"}, "Segment")
        v, changes = Validator(), {}
        if "display_name" in paths:
            v.text("segment.display_name", seg.display_name, max_len=64, min_len=1)
            changes["display_name"] = seg.display_name
        if "description" in paths:
            v.text("segment.description", seg.description, max_len=256)
            changes["description"] = seg.description
        if "rule" in paths:
            changes["rule"] = rule_of(seg.rule)
        v.done()

        async def use_case(s):
            return segment_pb(await self.segments.update(s, key, changes))

        return await self.idem.run(request, pb.Segment, use_case)

    async def DeleteSegment(self, request, context):
        key = segment_key(request.name, "name")

        async def use_case(s):
            await self.segments.delete(s, key)
            return empty_pb2.Empty()

        return await self.idem.run(request, empty_pb2.Empty, use_case)

    async def PreviewSegment(self, request, context):
        v = Validator()
        v.range("sample_size", request.sample_size, 0, 100)
        v.check(request.HasField("rule"), "rule", "is required")
        v.done()
        async with self.sessions() as s:
            count, sample = await self.segments.preview(s, rule_of(request.rule), request.sample_size or 20)
        return pb.PreviewSegmentResponse(member_count=count, sample_members=[f"members/{i}" for i in sample])

    async def MaterializeSegment(self, request, context):
        key = segment_key(request.name, "name")

        async def use_case(s):
            return snapshot_pb(key, await self.segments.materialize(s, key))

        return await self.idem.run(request, pb.SegmentSnapshot, use_case)

    async def ListSegmentMembers(self, request, context):
        m = SNAPSHOT_NAME.fullmatch(request.parent)
        if not m:
            raise InvalidArgument.field("parent", "must look like segments/{segment}/snapshots/{version} or "
                                                  "segments/{segment}/snapshots/latest")
        size = page_size(request.page_size, default=100, maximum=1000)
        async with self.sessions() as s:
            snap = await self.segments.snapshot(s, m.group(1), m.group(2))
            ids, token = await self.segments.snapshot_members(s, snap, size, request.page_token)
        return pb.ListSegmentMembersResponse(members=[f"members/{i}" for i in ids], snapshot=snapshot_pb(m.group(1), snap),
                                             next_page_token=token)

    async def CheckSegmentMembership(self, request, context):
        key = segment_key(request.segment, "segment")
        member_id = parse_id(request.member, "members", "member")
        async with self.sessions() as s:
            snap = await self.segments.snapshot(s, key, "latest")
            sm = SegmentSnapshotMember
            found = (await s.execute(select(sm.member_id).where(sm.snapshot_id == snap.id, sm.member_id == member_id))
                     ).scalar_one_or_none()
        return pb.CheckSegmentMembershipResponse(member_in_segment=found is not None, snapshot=snapshot_pb(key, snap))
