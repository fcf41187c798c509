"""Member 360: one staff call joining the member's own data with points (a real points service) and
community; a peer that hangs is cut at the deadline and named in "missing"."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from mall.members.v1 import members_service_pb2 as pb
from mall.members.v1 import members_service_pb2_grpc as pb_grpc
from mallkit.settings import PlatformSettings
from members.app import build
from members.config import MembersSettings
from tests.members.test_behaviour import bearer, http_login
from tests.members.test_segments import paid


@pytest.fixture
async def blackhole():
    """A TCP peer that accepts connections and never answers (a hung service)."""
    conns = []

    async def hold(reader, writer):
        conns.append(writer)
        await reader.read()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    for w in conns:
        w.close()
    server.close()


async def test_member360_joins_every_part_and_names_the_missing_peer(members, points, fake_wechat, blackhole):
    settings = MembersSettings(port=0, database_url=members.url, wechat_base_url=fake_wechat.url, drain_seconds=0,
                               member360_peer_timeout_seconds=1.0, relay_enabled=False,
                               platform=PlatformSettings(env="test", points_addr=points.addr,
                                                         community_addr=blackhole))
    app = build(settings, engine=members.engine)
    await app.start()
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        stub = pb_grpc.MembersServiceStub(channel)
        login, md = await members.login()
        name = login.member.name
        mid = int(name.split("/")[1])
        await paid(members, name, 25_000, days_ago=2)
        await points.grant(mid, 120)
        req = pb.RecordBehaviorEventsRequest(visitor_id=f"v{uuid.uuid4().hex[:12]}")
        e = req.events.add(client_event_id="x1", kind=pb.BEHAVIOR_KIND_VIEW_PRODUCT, target="products/3")
        e.occur_time.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
        await stub.RecordBehaviorEvents(req, metadata=md)
        staff = await members.staff()
        started = time.monotonic()
        view = await stub.GetMember360(pb.GetMember360Request(name=f"{name}/view360"), metadata=staff)
        elapsed = time.monotonic() - started
        assert list(view.missing) == ["community"] and not view.HasField("community")
        assert elapsed < 5  # the hung peer was cut at its deadline (1 s)
        assert view.member.name == name and view.points.available_points == 120
        assert view.orders.order_count == 1 and view.orders.total_paid_fen == 25_000
        assert any(b.kind == pb.BEHAVIOR_KIND_VIEW_PRODUCT for b in view.recent_behavior)
        assert view.member.growth_value == 250  # the order's growth, as GetMember has it
        # members may not read it, even their own
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetMember360(pb.GetMember360Request(name="members/me/view360"), metadata=md)
        assert err.value.code() in (grpc.StatusCode.PERMISSION_DENIED,)
        await channel.close()
    finally:
        await app.stop(grace=1)


async def test_member360_route_is_staff_only(gateway):
    s = await http_login(gateway, f"u{uuid.uuid4().hex[:10]}")
    r = await gateway.get(f"/v1/{s['member']['name']}/view360", headers=bearer(s["accessToken"]))
    assert r.status_code == 403


async def test_member360_lists_the_members_groups_from_community(members, points, community, fake_wechat):
    from tests.community.helpers import join, make_group

    settings = MembersSettings(port=0, database_url=members.url, wechat_base_url=fake_wechat.url, drain_seconds=0,
                               member360_peer_timeout_seconds=10.0, relay_enabled=False,
                               platform=PlatformSettings(env="test", points_addr=points.addr,
                                                         community_addr=community.addr))
    app = build(settings, engine=members.engine)
    await app.start()
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        stub = pb_grpc.MembersServiceStub(channel)
        login, _ = await members.login()
        mid = int(login.member.name.split("/")[1])
        first, second = await make_group(community), await make_group(community)
        await join(community, first, mid)
        await join(community, second, mid)
        view = await stub.GetMember360(pb.GetMember360Request(name=f"{login.member.name}/view360"),
                                       metadata=await members.staff())
        assert list(view.missing) == []
        assert view.community.group_count == 2
        assert sorted((g.group, g.display_name) for g in view.community.groups) == sorted(
            [(first.name, first.display_name), (second.name, second.display_name)])
        assert all(g.join_time.seconds > 0 for g in view.community.groups)
        await channel.close()
    finally:
        await app.stop(grace=1)
