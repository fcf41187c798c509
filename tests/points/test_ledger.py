"""Ledger and statements: balances equal the ledger, adjustments record who did them, never below zero."""

from __future__ import annotations

import grpc
import pytest

from mall.points.v1 import points_service_pb2 as pb
from mallkit.errors import error_info, status_of
from tests.fixtures.points import fresh_member_id, rid


async def test_adjust_records_operator_and_reason_and_never_goes_negative(points, members):
    login, _ = await members.login()
    name = f"{login.member.name}/pointsAccount"
    staff = points.staff_md("operator", staff_id=7)
    entry = await points.stub.AdjustPoints(pb.AdjustPointsRequest(name=name, points=120, reason="客诉补偿",
                                                                  request_id=rid()), metadata=staff)
    assert entry.kind == pb.ENTRY_KIND_ADJUST and entry.available_delta == 120
    assert entry.operator == "staff/7" and entry.description == "客诉补偿"
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await points.stub.AdjustPoints(pb.AdjustPointsRequest(name=name, points=-121, reason="扣回", request_id=rid()),
                                       metadata=staff)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(await status_of(e.value)).reason == "INSUFFICIENT_POINTS"
    await points.stub.AdjustPoints(pb.AdjustPointsRequest(name=name, points=-20, reason="扣回", request_id=rid()),
                                   metadata=staff)
    account = await points.account(int(login.member.name.split("/")[1]))
    assert account.available_points == 100 and account.pending_points == 0
    await points.check()


async def test_adjust_of_an_unknown_member_is_not_found(points):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await points.stub.AdjustPoints(pb.AdjustPointsRequest(name="members/987654321/pointsAccount", points=5,
                                                              reason="x", request_id=rid()),
                                       metadata=points.staff_md())
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_adjust_retried_with_one_request_id_applies_once(points, members):
    login, _ = await members.login()
    req = pb.AdjustPointsRequest(name=f"{login.member.name}/pointsAccount", points=30, reason="活动奖励",
                                 request_id=rid())
    import asyncio

    out = await asyncio.gather(*[points.stub.AdjustPoints(req, metadata=points.staff_md()) for _ in range(10)])
    assert len({e.name for e in out}) == 1
    assert (await points.account(int(login.member.name.split("/")[1]))).available_points == 30


async def test_statement_pages_through_the_ledger_newest_first(points):
    member = fresh_member_id()
    for i in range(7):
        await points.grant(member, i + 1)
    md = points.member_md(member)
    seen, token = [], ""
    while True:
        page = await points.stub.ListPointsEntries(pb.ListPointsEntriesRequest(parent="members/me", page_size=3,
                                                                               page_token=token), metadata=md)
        seen += [e.available_delta for e in page.points_entries]
        token = page.next_page_token
        if not token:
            break
    assert seen == [7, 6, 5, 4, 3, 2, 1]
    acc = await points.stub.GetPointsAccount(pb.GetPointsAccountRequest(name="members/me/pointsAccount"), metadata=md)
    assert acc.available_points == 28 and acc.name == f"members/{member}/pointsAccount"
    await points.check()
