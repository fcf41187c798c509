"""The mini-program's and the operators' view of community: HTTP through the gateway."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import func, select

from community.models import Group


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def login(gw) -> dict:
    r = await gw.post("/v1/members:loginWithWechat", json={"code": f"h{uuid.uuid4().hex[:10]}#{uuid.uuid4().hex[:4]}"})
    assert r.status_code == 200, r.text
    return r.json()


async def staff_token(gw) -> str:
    r = await gw.post("/v1/staff:login", json={"username": "test-admin", "password": "test-admin-password"})
    assert r.status_code == 200, r.text
    return r.json()["accessToken"]


def violations(resp) -> list[str]:
    body = resp.json()["error"]
    return [v["field"] for d in body["details"] if d["@type"].endswith("BadRequest") for v in d["fieldViolations"]]


def reason(resp) -> str:
    return next(d["reason"] for d in resp.json()["error"]["details"] if d["@type"].endswith("ErrorInfo"))


async def test_member_flow_join_read_share_and_anonymous_view(community_gateway):
    gw = community_gateway
    staff = bearer(await staff_token(gw))
    r = await gw.post("/v1/groups", json={"displayName": "宝妈群", "type": "GROUP_TYPE_GENERAL", "owner": "staff/3"},
                      headers=staff)
    assert r.status_code == 200, r.text
    group = r.json()
    assert group["capacity"] == 500 and group["state"] == "GROUP_STATE_OPEN" and group["inviteCode"]
    r = await gw.post(f"/v1/{group['name']}/posts", json={"kind": "POST_KIND_ARTICLE", "title": "辅食添加顺序"},
                      headers=staff)
    assert r.status_code == 200, r.text
    article = r.json()

    member = await login(gw)
    me = bearer(member["accessToken"])
    r = await gw.post(f"/v1/{group['name']}:join", json={}, headers=me)
    assert r.status_code == 200 and r.json()["state"] == "MEMBERSHIP_STATE_ACTIVE", r.text
    r = await gw.get(f"/v1/{group['name']}/posts", headers=me)
    assert r.status_code == 200 and [p["name"] for p in r.json()["posts"]] == [article["name"]]
    r = await gw.post(f"/v1/{article['name']}:share", json={}, headers=me)
    assert r.status_code == 200 and r.json()["depth"] == 1
    token = r.json()["token"]
    # A stranger without any session opens the shared link.
    visitor = "v" + uuid.uuid4().hex
    event_id = uuid.uuid4().hex
    for _ in range(2):  # a resent view (same client event id) counts once
        r = await gw.post(f"/v1/{article['name']}:view",
                          json={"visitorId": visitor, "shareToken": token, "clientEventId": event_id})
        assert r.status_code == 200 and r.json()["post"]["title"] == "辅食添加顺序", r.text
        assert r.json()["view"] == f"{article['name']}/views/{event_id}"
    r = await gw.post(f"/v1/{article['name']}:view", json={"visitorId": visitor, "shareToken": token,
                                                          "clientEventId": "bad id!"})
    assert r.status_code == 400 and "client_event_id" in str(r.json()), r.text
    stranger = await login(gw)
    r = await gw.post(f"/v1/visitors/{visitor}:link", json={}, headers=bearer(stranger["accessToken"]))
    assert r.status_code == 200 and r.json()["linkedViewCount"] == "1"
    r = await gw.get(f"/v1/{article['name']}/report", headers=staff)
    assert r.status_code == 200 and r.json()["membersGained"] == "1" and r.json()["sharers"][0]["chainViews"] == "1"


async def test_members_see_only_groups_they_belong_to_or_may_join(community_gateway):
    gw = community_gateway
    staff = bearer(await staff_token(gw))
    mk = lambda **g: gw.post("/v1/groups", json={"displayName": "g", "owner": "staff/3", **g}, headers=staff)  # noqa: E731
    open_group = (await mk(type="GROUP_TYPE_GENERAL")).json()
    secret = (await mk(type="GROUP_TYPE_GENERAL", joinPolicy="JOIN_POLICY_INVITE_ONLY")).json()
    vip = (await mk(type="GROUP_TYPE_VIP", vipRule={"minGrowthThreshold": "999999999"})).json()
    member = bearer((await login(gw))["accessToken"])
    seen, token = set(), ""
    while True:
        r = await gw.get("/v1/groups", params={"pageSize": 100, "pageToken": token}, headers=member)
        assert r.status_code == 200, r.text
        seen |= {g["name"] for g in r.json()["groups"]}
        token = r.json().get("nextPageToken", "")
        if not token:
            break
    assert open_group["name"] in seen and secret["name"] not in seen and vip["name"] not in seen
    for g in (secret, vip):
        assert (await gw.get(f"/v1/{g['name']}", headers=member)).status_code == 403
    r = await gw.post(f"/v1/{vip['name']}:join", json={}, headers=member)
    assert r.status_code == 400 and reason(r) == "TIER_TOO_LOW"
    r = await gw.post(f"/v1/{secret['name']}:join", json={"inviteCode": secret["inviteCode"]}, headers=member)
    assert r.status_code == 200
    r = await gw.get("/v1/groups", params={"joinedOnly": "true"}, headers=member)
    assert [g["name"] for g in r.json()["groups"]] == [secret["name"]] and r.json()["groups"][0]["joined"]


async def test_staff_routes_refuse_members(community_gateway):
    gw = community_gateway
    member = bearer((await login(gw))["accessToken"])
    for method, path, body in [
        ("POST", "/v1/groups", {"displayName": "x"}),
        ("GET", "/v1/broadcasts", None),
        ("POST", "/v1/broadcasts", {"title": "x"}),
        ("GET", "/v1/groups/1/memberships", None),
        ("GET", "/v1/groups/1/posts/1/report", None),
        ("GET", "/v1/quickReplyCategories", None),
        ("GET", "/v1/quickReplyCategories/-/quickReplies", None),
        ("POST", "/v1/groups/1:close", {}),
        ("GET", "/v1/members/1/communityActivity", None),
    ]:
        r = await gw.request(method, path, json=body, headers=member)
        assert r.status_code == 403, (path, r.text)
    for path in ["/v1/groups", "/v1/members/me/messages"]:
        assert (await gw.get(path)).status_code == 401
    other = await login(gw)
    r = await gw.get(f"/v1/{other['member']['name']}/messages", headers=member)
    assert r.status_code == 403


async def test_bad_input_gets_clear_4xx_naming_the_field_and_writes_nothing(community_gateway, community):
    gw = community_gateway
    staff = {**bearer(await staff_token(gw)), "Content-Type": "application/json"}
    async with community.engine.connect() as conn:
        before = (await conn.execute(select(func.count()).select_from(Group))).scalar_one()
    cases = [
        (b'{"displayName": "x"', "body"),
        (json.dumps({"displayName": "x", "type": "GROUP_TYPE_CASTLE", "owner": "staff/3"}).encode(), "type"),
        (json.dumps({"displayName": 5, "type": "GROUP_TYPE_GENERAL", "owner": "staff/3"}).encode(), "display_name"),
        (json.dumps({"displayName": "名" * 80, "type": "GROUP_TYPE_GENERAL", "owner": "staff/3"}).encode(),
         "group.display_name"),
        (json.dumps({"displayName": "<script>", "type": "GROUP_TYPE_GENERAL", "owner": "staff/3"}).encode(),
         "group.display_name"),
        (json.dumps({"displayName": "x", "type": "GROUP_TYPE_GENERAL", "owner": "staff/1 OR 1=1"}).encode(),
         "group.owner"),
        (json.dumps({"displayName": "x", "type": "GROUP_TYPE_GENERAL", "owner": "staff/3", "capacity": 100000}).encode(),
         "group.capacity"),
        (json.dumps({"displayName": "x", "type": "GROUP_TYPE_FLASH", "owner": "staff/3"}).encode(), "group.end_time"),
    ]
    for body, field in cases:
        r = await gw.post("/v1/groups", content=body, headers=staff)
        assert r.status_code == 400, (body, r.text)
        assert any(field in v for v in violations(r)), (body, violations(r))
    member = bearer((await login(gw))["accessToken"])
    r = await gw.post("/v1/groups/abc:join", json={}, headers=member)
    assert r.status_code in (400, 404), r.text
    r = await gw.post("/v1/groups/1/posts/1:view", json={"visitorId": "x'; DROP TABLE views;--"})
    assert r.status_code == 400 and violations(r) == ["visitor_id"]
    r = await gw.post("/v1/groups/1/posts/1:answerQuiz", json={"option": 99}, headers=member)
    assert r.status_code == 400 and violations(r) == ["option"]
    async with community.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(Group))).scalar_one() == before


async def test_out_of_range_times_and_durations_are_400_not_500(community_gateway):
    gw = community_gateway
    staff = bearer(await staff_token(gw))
    r = await gw.post("/v1/groups", json={"displayName": "g", "type": "GROUP_TYPE_GENERAL", "owner": "staff/3"},
                      headers=staff)
    group = r.json()["name"]
    r = await gw.post(f"/v1/{group}/posts", json={"kind": "POST_KIND_FLASH_SALE_NOTICE", "title": "秒杀",
                                                  "flashSale": {"product": "products/1",
                                                                "startTime": "9999-12-31T23:59:59Z"}},
                      headers=staff)
    assert r.status_code == 200, r.text
    r = await gw.get("/v1/members/1/communityActivity", params={"window": "99999999999s"}, headers=staff)
    assert r.status_code == 400, r.text
    r = await gw.get("/v1/members/1/communityActivity", params={"window": "-5s"}, headers=staff)
    assert r.status_code == 400, r.text
    r = await gw.post(f"/v1/{group}/posts", json={"kind": "POST_KIND_QUIZ", "title": "Q",
                                                  "quiz": {"question": "q", "options": ["a"], "rewardPoints": "5"}},
                      headers=staff)
    assert r.status_code == 400 and "post.quiz.options" in violations(r)
