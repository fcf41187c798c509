"""Path templates (google/api/http.proto grammar) and the route table built from the protos."""

from __future__ import annotations

import pytest

from gateway.config import SERVICES
from gateway.routing import NoRouteError, PathTemplate, RouteTable, TemplateError, WrongMethodError, build_routes


def table() -> RouteTable:
    return RouteTable(build_routes([("members", SERVICES["members"].descriptor())]))


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("/v1/{name}", "/v1/abc", {("name",): "abc"}),
        ("/v1/{name=members/*}", "/v1/members/42", {("name",): "members/42"}),
        ("/v1/{member.name=members/*}", "/v1/members/me", {("member", "name"): "members/me"}),
        ("/v1/{a.b=x/*/y/*}", "/v1/x/1/y/2", {("a", "b"): "x/1/y/2"}),
        ("/v1/{name=tagGroups/*/tags/*}", "/v1/tagGroups/g/tags/t", {("name",): "tagGroups/g/tags/t"}),
        ("/v1/{path=files/**}", "/v1/files/a/b/c", {("path",): "files/a/b/c"}),
        ("/v1/{path=files/**}", "/v1/files", {("path",): "files"}),
        ("/v1/*/{id}", "/v1/anything/7", {("id",): "7"}),
        ("/v1/{name}", "/v1/%E5%B0%8F%20%2F", {("name",): "小 /"}),  # a single segment decodes fully
        ("/v1/{name=members/*}", "/v1/members/a%2Fb", {("name",): "members/a%2Fb"}),  # keeps %2F
    ],
)
def test_templates_bind_variables(template, path, expected):
    assert PathTemplate(template).match(path[1:].split("/")) == expected


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("/v1/{name=members/*}", "/v1/members"),
        ("/v1/{name=members/*}", "/v1/members/1/2"),
        ("/v1/{name=members/*}", "/v1/stores/1"),
        ("/v1/{name=members/*}", "/v1/members/"),  # an empty segment is not a value
        ("/v1/members", "/v1/members/x"),
    ],
)
def test_templates_refuse_other_paths(template, path):
    assert PathTemplate(template).match(path[1:].split("/")) is None


def test_custom_verbs_are_parsed():
    t = PathTemplate("/v1/{parent=members/*}/subscriptions:record")
    assert t.verb == "record"
    assert [v.name for v in t.variables] == ["parent"]
    assert PathTemplate("/v1/members:loginWithWechat").verb == "loginWithWechat"


@pytest.mark.parametrize(
    "bad", ["v1/x", "/v1/{name", "/v1/{na-me}", "/v1/**/x", "/v1/{a={b}}", "/v1/{a}/{a}", "/v1/x:", "/v1//x"]
)
def test_malformed_templates_are_refused(bad):
    with pytest.raises(TemplateError):
        PathTemplate(bad)


def test_literal_routes_win_over_variable_ones():
    routes = table()
    route, values = routes.match("GET", "/v1/members")
    assert route.method.name == "ListMembers" and values == {}
    route, values = routes.match("GET", "/v1/members/42")
    assert route.method.name == "GetMember" and values == {("name",): "members/42"}
    route, _ = routes.match("POST", "/v1/members:applyTags")
    assert route.method.name == "ApplyTags"
    route, values = routes.match("PATCH", "/v1/members/me")
    assert route.method.name == "UpdateMember" and values == {("member", "name"): "members/me"}


def test_custom_verb_routes_bind_the_path_before_the_verb():
    route, values = table().match("POST", "/v1/members/me/subscriptions:record")
    assert route.method.name == "RecordSubscriptions"
    assert values == {("parent",): "members/me"}


def test_unknown_paths_and_methods():
    routes = table()
    with pytest.raises(NoRouteError):
        routes.match("GET", "/v1/nothing")
    with pytest.raises(WrongMethodError) as exc:
        routes.match("DELETE", "/v1/members")
    assert exc.value.allowed == ["GET"]
    with pytest.raises(WrongMethodError):
        routes.match("GET", "/v1/members:applyTags")


def test_only_rpcs_with_an_http_rule_get_routes():
    names = {r.method.name for r in table()}
    assert "GetMember" in names and "LoginWithWechat" in names
    internal = {"AddGrowth", "SendReach", "GetMemberIdentity", "CheckPrincipals", "ListSegmentMembers",
                "CheckSegmentMembership"}
    assert not internal & names
    service = SERVICES["members"].descriptor()
    assert names == {m.name for m in service.methods} - internal


def test_two_rpcs_on_one_route_are_refused():
    routes = build_routes([("members", SERVICES["members"].descriptor())])
    with pytest.raises(TemplateError):
        RouteTable([*routes, routes[0]])


def test_the_indexed_table_answers_as_a_scan_of_every_route():
    """The table tries only the routes a path's second segment allows; the answer for every
    route's own path (and a few that match none) is the one a scan of all routes in order gives."""
    from mall.community.v1 import community_service_pb2  # noqa: F401  (descriptors load)

    routes = build_routes([(n, SERVICES[n].descriptor()) for n in ("members", "points", "orders", "community")])
    t = RouteTable(routes)

    def scan(method, path):
        parts = path[1:].split("/")
        head, colon, verb = parts[-1].rpartition(":")
        candidate = [*parts[:-1], head] if colon else parts
        allowed = []
        for r in t.routes:
            if (r.template.verb != verb or not r.template.verb) if colon else bool(r.template.verb):
                continue
            if r.template.match(candidate) is None:
                continue
            if r.http_method == method:
                return r
            allowed.append(r.http_method)
        return tuple(sorted(set(allowed))) or None

    def indexed(method, path):
        try:
            return t.match(method, path)[0]
        except WrongMethodError as exc:
            return tuple(sorted(set(exc.allowed)))
        except NoRouteError:
            return None

    paths = []
    for r in t.routes:
        p = "/" + "/".join(s.literal or "x1" for s in r.template.segments)
        paths.append(p + (f":{r.template.verb}" if r.template.verb else ""))
    paths += ["/v1", "/", "/v2/members/me", "/v1/nothing/here", "/v1/members/me:unknownVerb"]
    assert len(t.routes) > 50
    for p in paths:
        for method in ("GET", "POST", "PATCH", "DELETE"):
            assert indexed(method, p) == scan(method, p), (method, p)
