"""Shared helpers of the community tests."""

from __future__ import annotations

import uuid

import grpc
import pytest

from mall.community.v1 import community_service_pb2 as pb
from mallkit.errors import error_info, status_of
from tests.fixtures import directory


def new_member_id() -> int:
    """A new member of the members service (no other test uses it; every service refuses tokens of
    members that do not exist)."""
    return directory().new_member()


def rid() -> str:
    return str(uuid.uuid4())


async def make_group(community, **fields) -> pb.Group:
    fields.setdefault("display_name", f"群{uuid.uuid4().hex[:6]}")
    fields.setdefault("type", pb.GROUP_TYPE_GENERAL)
    fields.setdefault("owner", "staff/3")
    return await community.stub.CreateGroup(pb.CreateGroupRequest(group=pb.Group(**fields)),
                                            metadata=community.staff_md("operator"))


async def join(community, group: pb.Group, member_id: int, **kw) -> pb.Membership:
    return await community.stub.JoinGroup(pb.JoinGroupRequest(name=group.name, **kw),
                                          metadata=community.member_md(member_id))


async def refused(call) -> tuple[grpc.StatusCode, object]:
    """Run a call that must fail; returns (code, ErrorInfo)."""
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    return e.value.code(), error_info(await status_of(e.value))
