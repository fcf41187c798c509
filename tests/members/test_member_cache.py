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

    first = members.app.platform.broadcasts[0].cache
    await until(lambda: _on(first), 30, "the first replica's member cache on")
    replica = build(members_settings(members.url, fake_wechat.url))  # its own engine, cache and NATS connection
    await replica.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}")
    try:
        second = replica.platform.broadcasts[0].cache
        await until(lambda: _on(second), 30, "the second replica's member cache on")
        other = pb_grpc.MembersServiceStub(channel)
        login, md = await members.login()
        me = pb.GetMemberRequest(name="members/me")
        member_id = int(login.member.name.split("/")[1])
        assert (await members.stub.GetMember(me, metadata=md)).nickname == (await other.GetMember(me, metadata=md)).nickname
        assert member_id in first._entries and member_id in second._entries  # both answer from memory now

        # An ORM update through the first replica: there at once, on the second after the broadcast.
        await members.stub.UpdateMember(pb.UpdateMemberRequest(
            member=pb.Member(name="members/me", nickname="缓存之后"), update_mask=field_mask_pb2.FieldMask(paths=["nickname"])),
            metadata=md)
        assert (await members.stub.GetMember(me, metadata=md)).nickname == "缓存之后"

        async def second_sees(field, value):
            return getattr(await other.GetMember(me, metadata=md), field) == value

        await until(lambda: second_sees("nickname", "缓存之后"), 30, "the second replica to drop the member")

        # A Core UPDATE through the second replica's sessions (the way growth and tiers write).
        async with replica.sessions() as s:
            await s.execute(sa.update(Member).where(Member.id == member_id).values(growth_value=4321))
            await s.commit()
        assert (await other.GetMember(me, metadata=md)).growth_value == 4321

        async def first_sees():
            return (await members.stub.GetMember(me, metadata=md)).growth_value == 4321

        await until(first_sees, 30, "the first replica to drop the member")
    finally:
        await channel.close()
        await replica.stop(grace=0)
