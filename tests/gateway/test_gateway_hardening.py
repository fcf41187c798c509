"""Defect classes 6 (identifiers) and 7 (error shape and routing), proven over every route.

The routes are read from the running gateway's route table, so a new route is
covered without a new test. Each request goes through the real gateway to the
real services.
"""

from __future__ import annotations

from gateway.app import create_app
from gateway.routing import DEEP, LITERAL, Route
from mallkit.names import is_id, parse_key
from mallkit.testing import HttpServer
from tests.fixtures.system import new_member

#: Ids that must never resolve: Unicode digits, a trailing newline, padding, signs,
#: zero, leading zeros, full-width digits, 19 digits (beyond the 18 an id may have).
BAD_IDS = ["%C2%B2", "%D9%A1", "1%0A", "%0A1", "1%20", "0", "01", "-1", "%2B1", "1.0", "%EF%BC%91",
           "1234567890123456789", "99999999999999999999999"]
#: Keys that are not numeric ids (visitors/{visitor_id}) still refuse these.
BAD_KEYS = ["%C2%B2", "1%0A", "a%20b", "x"]


def _error_shape(resp) -> dict:
    assert resp.headers["content-type"].startswith("application/json"), (resp.status_code, resp.text[:200])
    err = resp.json()["error"]
    assert set(err) == {"code", "status", "message", "details"}, err
    assert err["code"] == resp.status_code
    return err


def _concrete(route: Route, fill: str, bad_at: int | None = None, bad: str = "") -> str:
    """The route's path with every wildcard segment ``fill`` (segment ``bad_at`` is ``bad``)."""
    parts = []
    for i, seg in enumerate(route.template.segments):
        if seg.kind == LITERAL:
            parts.append(seg.literal)
        elif seg.kind == DEEP:
            parts.append(fill)
        else:
            parts.append(bad if i == bad_at else fill)
    return "/" + "/".join(parts) + (f":{route.template.verb}" if route.template.verb else "")


def _wildcards(route: Route) -> list[tuple[int, str]]:
    """(index, collection before it) of every wildcard segment."""
    segs = route.template.segments
    return [(i, segs[i - 1].literal if i and segs[i - 1].kind == LITERAL else "")
            for i, s in enumerate(segs) if s.kind != LITERAL]


def test_the_parser_refuses_what_isdigit_accepted():
    for text in ["²", "١", "1\n", "\n1", " 1", "1 ", "0", "01", "-1", "+1", "１", "1" * 19, "", "1_0"]:
        assert not is_id(text), repr(text)
        assert parse_key(text) is None
    assert parse_key("1") == 1 and parse_key("9" * 18) == int("9" * 18)


async def test_bad_identifiers_are_4xx_json_on_every_route(mall_gateway, members, staff_caller):
    member = await new_member(members)
    routes = list(mall_gateway.app.state.routes)
    checked = 0
    for route in routes:
        for index, collection in _wildcards(route):
            bad_values = BAD_KEYS if collection == "visitors" else BAD_IDS
            for bad in bad_values:
                fill = str(member.member_id)
                path = _concrete(route, fill, index, bad)
                for caller in (member, staff_caller):
                    resp = await mall_gateway.request(route.http_method, path, headers=caller.headers,
                                                      content=b"{}" if route.body else None)
                    assert resp.status_code in (400, 401, 403, 404), (route.method.name, path, resp.status_code,
                                                                      resp.text[:300])
                    _error_shape(resp)
                    checked += 1
    assert checked > 1000  # every route with a variable was tried


async def test_unicode_digits_never_name_another_member(mall_gateway, members, staff_caller):
    # "members/١" once resolved to members/1; "members/²" was a 500 in four services.
    for path in ["/v1/members/%D9%A1", "/v1/members/%C2%B2", "/v1/members/1%0A", "/v1/members/%D9%A1/pointsAccount",
                 "/v1/members/%C2%B2/orders", "/v1/members/%D9%A1/messages"]:
        resp = await mall_gateway.get(path, headers=staff_caller.headers)
        assert resp.status_code == 400, (path, resp.text)
        assert _error_shape(resp)["status"] == "INVALID_ARGUMENT"


async def test_a_trailing_newline_does_not_resolve_a_product(mall_gateway, orders):
    name = (await orders.product()).name
    assert (await mall_gateway.get(f"/v1/{name}")).status_code == 200
    for suffix in ["%0A", "%0D%0A", "%20", "%00"]:
        resp = await mall_gateway.get(f"/v1/{name}{suffix}")
        assert resp.status_code == 400, (suffix, resp.text)
        _error_shape(resp)


# -- class 7: every answer is the JSON error or a real result ---------------------------------------------------

UNKNOWN = ["/", "/nope", "/v1", "/v1/", "/v1/nothing/here", "/v2/members/me", "/v1/members/me/", "//v1/members",
           "/v1/orders/1:", "/v1/orders/1:nope", "/v1/orders:pay", "/healthz/", "/docs/x", "/%FF", "/v1/%C0%AF"]


async def test_unknown_paths_are_404_json_over_real_http(mall_gateway):
    server = HttpServer(create_app(mall_gateway.app.state.settings))  # its own app: its own lifespan and channels
    await server.start()
    try:
        import httpx

        async with httpx.AsyncClient(base_url=server.url) as http:
            for path in UNKNOWN:
                for method in ("GET", "POST", "DELETE"):
                    resp = await http.request(method, path)
                    assert resp.status_code == 404, (method, path, resp.status_code, resp.text[:200])
                    assert _error_shape(resp)["status"] == "NOT_FOUND"
    finally:
        await server.stop()


METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS"]


async def test_405_with_a_true_allow_on_every_route(mall_gateway, staff_caller):
    table = mall_gateway.app.state.routes
    for route in table:
        path = _concrete(route, "1")
        raw_parts = path[1:]
        truly = {r.http_method for r in table if _matches(r, raw_parts)}
        assert route.http_method in truly
        for method in METHODS:
            if method in truly:
                continue
            resp = await mall_gateway.request(method, path, headers=staff_caller.headers)
            assert resp.status_code == 405, (method, path, resp.status_code, resp.text[:200])
            allow = {m.strip() for m in resp.headers["allow"].split(",")}
            assert allow == truly, (method, path, allow, truly)
            if method != "HEAD":
                assert _error_shape(resp)["status"] == "UNIMPLEMENTED"


def _matches(route: Route, raw: str) -> bool:
    head, colon, verb = raw.rpartition(":") if ":" in raw.rsplit("/", 1)[-1] else (raw, "", "")
    if (route.template.verb or "") != verb:
        return False
    return route.template.match(head.split("/") if colon else raw.split("/")) is not None


async def test_get_on_a_post_only_custom_method_is_405_not_get_order(mall_gateway, members):
    member = await new_member(members)
    resp = await mall_gateway.get("/v1/orders/1:pay", headers=member.headers)
    assert resp.status_code == 405, resp.text
    assert resp.headers["allow"] == "POST"
    assert _error_shape(resp)["details"][0]["reason"] == "METHOD_NOT_ALLOWED"


async def test_fixed_routes_answer_405_json_for_other_methods(mall_gateway):
    for path in ["/openapi.json", "/docs", "/healthz", "/metrics"]:
        resp = await mall_gateway.post(path)
        assert resp.status_code == 405, (path, resp.text)
        assert {m.strip() for m in resp.headers["allow"].split(",")} == {"GET", "HEAD"}
        _error_shape(resp)

