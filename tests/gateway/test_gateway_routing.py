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
