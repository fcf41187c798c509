"""Daily check-in (打卡): once per Asia/Shanghai calendar day, streaks, streak bonuses."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc

from mall.points.v1 import points_service_pb2 as pb
from mallkit.errors import error_info, status_of
from tests.fixtures.points import fresh_member_id, rid

ME = "members/me/pointsAccount"


async def check_in(points, member: int):
    try:
        return await points.stub.CheckIn(pb.CheckInRequest(name=ME, request_id=rid()), metadata=points.member_md(member))
    except grpc.aio.AioRpcError as err:
        return error_info(await status_of(err)).reason


async def test_check_in_twice_the_same_day_gives_points_once(points):
    member = fresh_member_id()
    base = points.app.settings.check_in_points
    with points.clock(datetime(2030, 3, 2, 4, 0, tzinfo=UTC)):
        results = await asyncio.gather(*[check_in(points, member) for _ in range(10)])
        first = [r for r in results if isinstance(r, pb.CheckInResponse)]
        assert len(first) == 1 and first[0].points == base and first[0].streak_days == 1
        assert [r for r in results if isinstance(r, str)] == ["ALREADY_CHECKED_IN"] * 9
        account = await points.account(member)
    assert account.available_points == base and account.checked_in_today
    await points.check()


async def test_the_day_boundary_is_shanghai_midnight_not_utc(points):
    member = fresh_member_id()
    # 15:59 UTC is 23:59 in Shanghai; 16:00 UTC is already the next day there.
    with points.clock(datetime(2030, 5, 10, 15, 59, 59, tzinfo=UTC)):
        r = await check_in(points, member)
        assert (r.date.year, r.date.month, r.date.day) == (2030, 5, 10)
    with points.clock(datetime(2030, 5, 10, 16, 0, 0, tzinfo=UTC)):
        r = await check_in(points, member)
        assert (r.date.month, r.date.day, r.streak_days) == (5, 11, 2)
    # Later the same UTC day is still May 11 in Shanghai: refused.
    with points.clock(datetime(2030, 5, 10, 23, 30, tzinfo=UTC)):
        assert await check_in(points, member) == "ALREADY_CHECKED_IN"
    # But 00:30 UTC on May 11 (08:30 in Shanghai) is also still May 11 there.
    with points.clock(datetime(2030, 5, 11, 0, 30, tzinfo=UTC)):
        assert await check_in(points, member) == "ALREADY_CHECKED_IN"


async def test_streak_grows_with_bonuses_and_breaks_across_a_missed_day(points):
    member = fresh_member_id()
    settings = points.app.settings
    day0 = datetime(2030, 7, 1, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
    got = []
    for i in range(7):
        with points.clock(day0 + timedelta(days=i)):
            got.append(await check_in(points, member))
    assert [r.streak_days for r in got] == [1, 2, 3, 4, 5, 6, 7]
    bonuses = settings.check_in_streak_bonuses
    assert [r.bonus_points for r in got] == [bonuses.get(i, 0) for i in range(1, 8)]
    assert sum(r.points for r in got) == 7 * settings.check_in_points + sum(bonuses.get(i, 0) for i in range(1, 8))
    # Day 8 missed: the account shows no streak on day 9, and day 9 starts again at 1.
    with points.clock(day0 + timedelta(days=8)):
        account = await points.account(member)
        assert account.check_in_streak_days == 0 and not account.checked_in_today
        again = await check_in(points, member)
    assert again.streak_days == 1 and again.bonus_points == bonuses.get(1, 0)
    await points.check()
