"""Fail closed on who is calling: a validly signed token whose member or staff account does not exist
(or is disabled) is refused by every service, through the gateway, and nothing is written."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from sqlalchemy import func, select

from community.models import Group, Membership
from mallkit.auth import MEMBER, STAFF, Principal
from members.models import TagGroup
from members.seed import set_staff_disabled
from orders.models import Address, Category
from points.app import build as build_points
from points.models import Account, Task
from tests.fixtures import PRINCIPAL_TTL, gateway_client
from tests.fixtures.points import points_settings

ADDRESS = {"recipient": "张三", "phone": "13800138000", "province": "浙江省", "city": "杭州市", "detail": "湖滨路 1 号"}


@pytest.fixture(scope="module")
async def mall(members, points, orders, community):
    """The gateway in front of the four real services."""
    async with gateway_client(members=members.addr, points=points.addr, orders=orders.addr,
                              community=community.addr) as client:
        yield client


def bearer(codec, principal: Principal) -> dict[str, str]:
    return {"Authorization": f"Bearer {codec.issue(principal)[0]}"}


async def count(engine, stmt) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(stmt)).scalar_one()


def staff_writes(tag: str):
    """One staff-only create per service: (path, body, how to count what it would write)."""
    return [
        ("/v1/tagGroups", {"displayName": f"g{tag}", "selection": "TAG_SELECTION_MULTIPLE"},
         "members", select(func.count()).select_from(TagGroup).where(TagGroup.display_name == f"g{tag}")),
        ("/v1/tasks", {"kind": "TASK_KIND_REVIEW_ORDER", "displayName": f"t{tag}", "rewardPoints": "5",
                       "frequency": "TASK_FREQUENCY_DAILY", "limitPerPeriod": 1},
         "points", select(func.count()).select_from(Task).where(Task.display_name == f"t{tag}")),
        ("/v1/categories", {"displayName": f"c{tag}"},
         "orders", select(func.count()).select_from(Category).where(Category.display_name == f"c{tag}")),
        ("/v1/groups", {"displayName": f"q{tag}", "type": "GROUP_TYPE_GENERAL", "owner": "staff/3"},
         "community", select(func.count()).select_from(Group).where(Group.display_name == f"q{tag}")),
    ]


async def test_forged_staff_token_of_a_missing_account_is_refused_everywhere(mall, members, points, orders, community):
    engines = {"members": members.engine, "points": points.engine, "orders": orders.engine, "community": community.engine}
    ghost = bearer(members.codec, Principal(STAFF, f"staff/{9_000_000 + uuid.uuid4().int % 1_000_000}",
                                            frozenset({"admin"})))
    real = await members.staff()
    real_headers = {"Authorization": real[0][1]}
    for path, body, service, stmt in staff_writes(uuid.uuid4().hex[:8]):
        r = await mall.post(path, json=body, headers=ghost)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["details"][0]["reason"] == "PRINCIPAL_INACTIVE"
        assert await count(engines[service], stmt) == 0, path  # nothing written
        ok = await mall.post(path, json=body, headers=real_headers)  # the same request, by a real admin, writes
        assert ok.status_code == 200, (path, ok.text)
        assert await count(engines[service], stmt) == 1, path


async def test_forged_member_token_of_a_missing_member_is_refused_everywhere(mall, members, points, orders, community):
    ghost_id = 9_000_000_000_000 + uuid.uuid4().int % 1_000_000_000
    ghost = bearer(members.codec, Principal(MEMBER, f"members/{ghost_id}"))
    group = await mall.post("/v1/groups", json={"displayName": "g", "type": "GROUP_TYPE_GENERAL", "owner": "staff/3"},
                            headers={"Authorization": (await members.staff())[0][1]})
    assert group.status_code == 200, group.text
    calls = [
        ("GET", "/v1/members/me", None),
        ("POST", "/v1/members/me/addresses", ADDRESS),
        ("POST", "/v1/members/me/pointsAccount:checkIn", {}),
        ("GET", "/v1/members/me/pointsAccount", None),
        ("POST", f"/v1/{group.json()['name']}:join", {}),
        ("GET", "/v1/members/me/messages", None),
    ]
    for method, path, body in calls:
        r = await mall.request(method, path, json=body, headers=ghost)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["details"][0]["reason"] == "PRINCIPAL_INACTIVE"
    # Nothing was written for the ghost anywhere: no address, no points account, no membership.
    assert await count(orders.engine, select(func.count()).select_from(Address).where(Address.member_id == ghost_id)) == 0
    assert await count(points.engine, select(func.count()).select_from(Account).where(Account.member_id == ghost_id)) == 0
    assert await count(community.engine, select(func.count()).select_from(Membership).where(
        Membership.member_id == ghost_id)) == 0
    # A real member's token (the control) goes through every one of those doors.
    login, _ = await members.login()
    real = {"Authorization": f"Bearer {login.access_token}"}
    for method, path, body in calls:
        r = await mall.request(method, path, json=body, headers=real)
        assert r.status_code == 200, (path, r.text)


async def test_a_disabled_staff_account_stops_working_within_the_ttl(mall, members):
    admin = {"Authorization": (await members.staff())[0][1]}
    username = f"op{uuid.uuid4().hex[:8]}"
    created = await mall.post("/v1/staff", json={"username": username, "displayName": "临时运营",
                                                 "role": "STAFF_ROLE_OPERATOR", "password": "operator-password-1"},
                              headers=admin)
    assert created.status_code == 200, created.text
    login = await mall.post("/v1/staff:login", json={"username": username, "password": "operator-password-1"})
    headers = {"Authorization": f"Bearer {login.json()['accessToken']}"}
    reads = ["/v1/members?pageSize=1", "/v1/tasks", "/v1/couponTemplates", "/v1/groups"]  # one per service
    for path in reads:
        assert (await mall.get(path, headers=headers)).status_code == 200, path

    assert await set_staff_disabled(members.engine, username, True)
    disabled_at = time.monotonic()
    refused: dict[str, float] = {}
    deadline = disabled_at + PRINCIPAL_TTL * 10 + 5  # generous: the bound asserted below is the TTL
    while len(refused) < len(reads) and time.monotonic() < deadline:
        for path in reads:
            if path not in refused:
                r = await mall.get(path, headers=headers)
                if r.status_code == 401:
                    refused[path] = time.monotonic() - disabled_at
        await asyncio.sleep(0.1)  # between polls of the outcome; the deadline above bounds the wait
    assert set(refused) == set(reads), f"still served after {deadline - disabled_at:.0f}s: {set(reads) - set(refused)}"
    # Within the cache TTL (plus the time one poll takes on a loaded machine).
    assert max(refused.values()) <= PRINCIPAL_TTL + 3, refused
    again = await mall.post("/v1/staff:login", json={"username": username, "password": "operator-password-1"})
    assert again.status_code == 401


async def test_members_unreachable_fails_closed(points_db, members):
    """When members cannot say who the caller is, the call is UNAVAILABLE (503), never served."""
    url, _ = points_db
    app = build_points(points_settings(url, "127.0.0.1:1", db_pool_size=2), background=False)
    await app.start()
    try:
        async with gateway_client(points=f"127.0.0.1:{app.port}") as gw:
            login, _ = await members.login()  # a real member: only the check is missing
            r = await gw.get("/v1/members/me/pointsAccount", headers={"Authorization": f"Bearer {login.access_token}"})
            assert r.status_code == 503, r.text
            assert r.json()["error"]["details"][0]["reason"] == "PRINCIPALS_UNAVAILABLE"
    finally:
        await app.stop(grace=0)
