"""Errors: upstream rich statuses, gateway-made errors, body limits, unreachable or slow upstreams."""

from __future__ import annotations

from tests.gateway.conftest import ADMIN, bearer, error_of, gateway_settings, running_gateway, violations


async def test_rich_upstream_errors_keep_their_details(gw, admin_auth):
    r = await gw.get("/v1/members/404", headers=admin_auth)
    assert r.status_code == 404
    err = error_of(r)
    assert err["status"] == "NOT_FOUND"
    assert err["message"] == "member not found"
    info = err["by_type"]["ErrorInfo"]
    assert (info["reason"], info["domain"]) == ("MEMBER_NOT_FOUND", "members.mall")
    assert err["by_type"]["LocalizedMessage"] == {
        "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
        "locale": "zh-CN",
        "message": "会员不存在",
    }
    assert err["by_type"]["ResourceInfo"]["resourceName"] == "members/404"


async def test_failed_precondition_from_abort_with_status_is_400_with_violations(gw):
    r = await gw.post(
        "/v1/members:applyTags",
        json={"members": ["members/1"], "tags": ["tagGroups/single/tags/a", "tagGroups/single/tags/b"]},
        headers=bearer(ADMIN),
    )
    assert r.status_code == 400
    err = error_of(r)
    assert err["status"] == "FAILED_PRECONDITION"
    assert err["by_type"]["ErrorInfo"]["reason"] == "SINGLE_SELECT_CONFLICT"
    assert violations(r) == {"tags": "two tags of group tagGroups/single"}
    assert err["by_type"]["LocalizedMessage"]["message"] == "同一单选标签组只能选一个标签"


async def test_internal_errors_never_show_their_text(gw, admin_auth):
    for name in ("500", "501"):  # the fake fails on these
        r = await gw.get(f"/v1/members/{name}", headers=admin_auth)
        assert r.status_code == 500
        err = error_of(r)
        assert err["status"] == "INTERNAL"
        assert "hunter2" not in r.text and "Traceback" not in r.text
        assert "ErrorInfo" in err["by_type"] and "LocalizedMessage" in err["by_type"]


async def test_unknown_route_is_404_in_the_error_shape(gw, upstream):
    r = await gw.get("/v1/nothing/here")
    assert r.status_code == 404
    err = error_of(r)
    assert err["by_type"]["ErrorInfo"] == {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "ROUTE_NOT_FOUND",
        "domain": "gateway.mall",
        "metadata": {},
    }
    assert err["by_type"]["LocalizedMessage"]["message"]
    assert upstream.servicer.calls == []


async def test_wrong_method_on_a_known_path_is_405_with_allow(gw):
    r = await gw.delete("/v1/members", headers=bearer(ADMIN))
    assert r.status_code == 405
    assert r.headers["allow"] == "GET"
    assert error_of(r)["by_type"]["ErrorInfo"]["reason"] == "METHOD_NOT_ALLOWED"
    r = await gw.put("/v1/tiers")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "POST"}


async def test_large_bodies_are_413_by_content_length_and_while_reading(upstream):
    async with running_gateway(gateway_settings(upstream.addr, max_body_bytes=1024)) as gw:
        headers = {**bearer(ADMIN), "Content-Type": "application/json"}
        big = b'{"displayName": "' + b"x" * 2000 + b'"}'
        r = await gw.post("/v1/tiers", content=big, headers=headers)
        assert r.status_code == 413
        err = error_of(r)
        assert err["status"] == "INVALID_ARGUMENT"
        assert err["by_type"]["ErrorInfo"]["reason"] == "BODY_TOO_LARGE"
        assert "body" in violations_of(err)

        async def chunks():  # no Content-Length: chunked transfer
            for _ in range(10):
                yield b" " * 200

        r = await gw.post("/v1/tiers", content=chunks(), headers=headers)
        assert "content-length" not in r.request.headers
        assert r.status_code == 413
        assert error_of(r)["by_type"]["ErrorInfo"]["reason"] == "BODY_TOO_LARGE"

        r = await gw.post("/v1/tiers", content=b'{"displayName": "x"}' + b" " * 900,
                          headers={**headers, "content-type": "application/json"})
        assert r.status_code == 200
        assert upstream.servicer.methods() == ["CreateTier"]


def violations_of(err: dict) -> set[str]:
    return {v["field"] for v in err["by_type"]["BadRequest"]["fieldViolations"]}


async def test_unreachable_upstream_is_503(upstream, member_auth):
    async with running_gateway(gateway_settings(upstream.addr)) as gw:
        await upstream.stop()
        r = await gw.get("/v1/members/me", headers=member_auth)
    assert r.status_code == 503
    err = error_of(r)
    assert err["status"] == "UNAVAILABLE"
    assert err["by_type"]["ErrorInfo"]["reason"] == "UPSTREAM_UNAVAILABLE"
    assert "127.0.0.1" not in r.text  # no addresses or gRPC internals


async def test_slow_upstream_hits_the_deadline_and_is_504(upstream, admin_auth):
    async with running_gateway(gateway_settings(upstream.addr, call_timeout_seconds=0.3)) as gw:
        r = await gw.get("/v1/members/504", headers=admin_auth)
    assert r.status_code == 504
    assert error_of(r)["by_type"]["ErrorInfo"]["reason"] == "UPSTREAM_TIMEOUT"
