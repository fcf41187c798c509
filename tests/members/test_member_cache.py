"""GetMember answered from each replica's read cache stays true: a write through one replica is
seen at once there and, over NATS, on the other (two members apps on one database)."""

from __future__ import annotations

import sqlalchemy as sa
from google.protobuf import field_mask_pb2

from mall.members.v1 import members_service_pb2 as pb
from mall.members.v1 import members_service_pb2_grpc as pb_grpc
from members.app import build
from members.models import Member
from tests.fixtures import until
from tests.fixtures.members import members_settings


async def _on(cache) -> bool:
    return cache.enabled


async def test_a_write_on_one_replica_is_read_on_the_other(members, fake_wechat):
    import grpc

    # Two replicas of their own (engine, cache, NATS connection) whose entries outlive every wait
    # below: only the broadcast can make a replica see the other's write in time.
    settings = members_settings(members.url, fake_wechat.url, member_cache_seconds=60)
    replicas = [build(settings), build(settings)]
    for r in replicas:
        await r.start()
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{r.port}") for r in replicas]
    try:
        first, second = (r.platform.broadcasts[0].cache for r in replicas)
        for cache in (first, second):
            await until(lambda cache=cache: _on(cache), 30, "the replica's member cache on")
        one, other = (pb_grpc.MembersServiceStub(c) for c in channels)
        login, md = await members.login()
        me = pb.GetMemberRequest(name="members/me")
        member_id = int(login.member.name.split("/")[1])
        assert (await one.GetMember(me, metadata=md)).nickname == (await other.GetMember(me, metadata=md)).nickname
        assert member_id in first._entries and member_id in second._entries  # both answer from memory now

        # An ORM update through the first replica: there at once, on the second after the broadcast.
        await one.UpdateMember(pb.UpdateMemberRequest(
            member=pb.Member(name="members/me", nickname="缓存之后"), update_mask=field_mask_pb2.FieldMask(paths=["nickname"])),
            metadata=md)
        assert (await one.GetMember(me, metadata=md)).nickname == "缓存之后"

        async def second_sees(field, value):
            return getattr(await other.GetMember(me, metadata=md), field) == value

        await until(lambda: second_sees("nickname", "缓存之后"), 30, "the second replica to drop the member")

        # A Core UPDATE through the second replica's sessions (the way growth and tiers write).
        async with replicas[1].sessions() as s:
            await s.execute(sa.update(Member).where(Member.id == member_id).values(growth_value=4321))
            await s.commit()
        assert (await other.GetMember(me, metadata=md)).growth_value == 4321

        async def first_sees():
            return (await one.GetMember(me, metadata=md)).growth_value == 4321

        await until(first_sees, 30, "the first replica to drop the member")
    finally:
        for c in channels:
            await c.close()
        for r in replicas:
            await r.stop(grace=0)
