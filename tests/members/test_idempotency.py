"""request_id: one effect however often and concurrently a mutation is sent."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from sqlalchemy import func, select

from mall.members.v1 import members_service_pb2 as pb
from mallkit.errors import error_info, status_of
from members.models import GrowthEntry, Store
from tests.fixtures.members import rid


async def test_same_request_id_50_times_concurrently_has_one_effect(members):
    login, _ = await members.login()
    key = rid()
    req = pb.AddGrowthRequest(member=login.member.name, amount=700, source="order", source_ref="orders/1", request_id=key)
    results = await asyncio.gather(*[members.stub.AddGrowth(req, metadata=members.service_md) for _ in range(50)])
    assert {r.SerializeToString(deterministic=True) for r in results} == {results[0].SerializeToString(deterministic=True)}
    assert results[0].growth_value == 700
    member_id = int(login.member.name.split("/")[1])
    async with members.engine.connect() as conn:
        n = (await conn.execute(select(func.count()).select_from(GrowthEntry).where(GrowthEntry.member_id == member_id))).scalar()
    assert n == 1
    me = await members.stub.GetMember(pb.GetMemberRequest(name=login.member.name), metadata=members.service_md)
    assert me.growth_value == 700


async def test_staff_create_replayed_50_times_creates_one_store(members):
    staff = await members.staff()
    key = rid()
    name = f"门店-{key[:8]}"
    req = pb.CreateStoreRequest(store=pb.Store(display_name=name), request_id=key)
    results = await asyncio.gather(*[members.stub.CreateStore(req, metadata=staff) for _ in range(50)])
    assert len({r.name for r in results}) == 1
    async with members.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(Store).where(Store.display_name == name))).scalar() == 1


async def test_reused_request_id_with_another_request_is_rejected(members):
    login, _ = await members.login()
    key = rid()
    await members.stub.AddGrowth(pb.AddGrowthRequest(member=login.member.name, amount=5, source="order", request_id=key),
                                 metadata=members.service_md)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.AddGrowth(pb.AddGrowthRequest(member=login.member.name, amount=6, source="order", request_id=key),
                                     metadata=members.service_md)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(await status_of(e.value)).reason == "REQUEST_ID_REUSED"


async def test_growth_requires_a_request_id(members):
    login, _ = await members.login()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.AddGrowth(pb.AddGrowthRequest(member=login.member.name, amount=5, source="order"),
                                     metadata=members.service_md)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
