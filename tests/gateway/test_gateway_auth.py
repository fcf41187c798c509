"""Authentication and access policies at the edge, and internal RPCs that must stay unreachable."""

from __future__ import annotations

import pytest

from mallkit.auth import Principal, TokenCodec
from tests.gateway.conftest import ADMIN, GUIDE, MEMBER_42, ORDERS, bearer, error_of, unsigned_token

FORGED = TokenCodec("some-other-secret-that-is-long-enough-123")


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "TOKEN_MISSING"),
        (bearer(MEMBER_42, codec=FORGED), "TOKEN_INVALID"),
        (bearer(MEMBER_42, ttl=-60), "TOKEN_EXPIRED"),
        ({"Authorization": f"Bearer {unsigned_token()}"}, "TOKEN_INVALID"),
        ({"Authorization": "Bearer not-a-jwt"}, "TOKEN_INVALID"),
        ({"Authorization": "Basic bWU6cGFzcw=="}, "TOKEN_INVALID"),
        ({"Authorization": "Bearer "}, "TOKEN_INVALID"),
    ],
)
async def test_member_routes_need_a_valid_token(gw, upstream, headers, reason):
    r = await gw.get("/v1/members/me", headers=headers)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    err = error_of(r)
    assert err["status"] == "UNAUTHENTICATED"
    assert err["by_type"]["ErrorInfo"]["reason"] == reason
    assert err["by_type"]["LocalizedMessage"]["locale"] == "zh-CN"
    assert upstream.servicer.calls == []


@pytest.mark.parametrize(
    ("method", "path", "principal"),
    [
        ("GET", "/v1/members", MEMBER_42),  # staff only
        ("POST", "/v1/tiers", MEMBER_42),  # admin only
        ("POST", "/v1/tiers", GUIDE),  # admin only, guide is staff but not admin
        ("POST", "/v1/members/me/subscriptions:record", ADMIN),  # members only
        ("PATCH", "/v1/members/me", ORDERS),  # no service access
    ],
)
async def test_callers_outside_the_policy_get_403(gw, upstream, method, path, principal):
    r = await gw.request(method, path, json={}, headers=bearer(principal))
    assert r.status_code == 403, r.text
    err = error_of(r)
    assert err["status"] == "PERMISSION_DENIED"
    assert err["by_type"]["ErrorInfo"]["reason"] == "ROLE_NOT_ALLOWED"
    assert upstream.servicer.calls == []


async def test_the_token_is_forwarded_as_received(gw, upstream):
    headers = bearer(Principal("staff", "staff/1", frozenset({"admin"})))
    r = await gw.post("/v1/tiers", json={"displayName": "银卡"}, headers=headers)
    assert r.status_code == 200, r.text
    assert upstream.servicer.last("CreateTier").metadata["authorization"] == headers["Authorization"]


async def test_public_routes_need_no_token_and_ignore_a_stale_one(gw, upstream):
    r = await gw.post("/v1/members:loginWithWechat", json={"code": "wx-code"})
    assert r.status_code == 200, r.text
    assert r.json()["accessToken"] == "t0k"
    assert "authorization" not in upstream.servicer.last("LoginWithWechat").metadata
    # An expired session must never block signing in again.
    r = await gw.post("/v1/members:loginWithWechat", json={"code": "wx-code"}, headers=bearer(MEMBER_42, ttl=-60))
    assert r.status_code == 200, r.text
    assert "authorization" not in upstream.servicer.last("LoginWithWechat").metadata


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/members:addGrowth"),
        ("POST", "/v1/members/42:addGrowth"),
        ("POST", "/v1/members:sendReach"),
        ("POST", "/mall.members.v1.MembersService/AddGrowth"),
        ("POST", "/mall.members.v1.MembersService/SendReach"),
        ("GET", "/v1/addGrowth"),
    ],
)
async def test_internal_rpcs_are_unreachable(gw, upstream, method, path):
    r = await gw.request(method, path, json={"member": "members/42", "amount": "10"}, headers=bearer(ORDERS))
    assert r.status_code in (404, 405), r.text
    assert "AddGrowth" not in upstream.servicer.methods() and "SendReach" not in upstream.servicer.methods()
