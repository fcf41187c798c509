"""Auto-tag rules (dry run, set-wise apply and remove with source RULE, history, manual tags untouched,
replicas never apply twice) and the RFM recompute and report through the gateway."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from mall.members.v1 import members_service_pb2 as pb
from mallkit.db import utcnow
from members import jobs
from tests.members.test_behaviour import bearer, http_login, staff_token
from tests.members.test_segments import cond, paid


async def tag_of(gateway, staff: str) -> str:
    g = await gateway.post("/v1/tagGroups", json={"displayName": f"g{uuid.uuid4().hex[:8]}",
                                                  "selection": "TAG_SELECTION_MULTIPLE"}, headers=bearer(staff))
    assert g.status_code == 200, g.text
    t = await gateway.post(f"/v1/{g.json()['name']}/tags", json={"displayName": "高价值"}, headers=bearer(staff))
    assert t.status_code == 200, t.text
    return t.json()["name"]


async def holders(members, tag: str, people: list[str]) -> dict[str, str]:
    """member -> source of the tag, for the given members."""
    staff = await members.staff()
    out = {}
    for name in people:
        page = await members.stub.ListMemberTags(pb.ListMemberTagsRequest(parent=name), metadata=staff)
        for t in page.member_tags:
            if t.tag == tag:
                out[name] = pb.TagSource.Name(t.source)
    return out


async def test_auto_tag_rule_applies_and_removes_set_wise_and_leaves_manual_tags(gateway, members):
    staff = await staff_token(gateway)
    tag = await tag_of(gateway, staff)
    city = f"城{uuid.uuid4().hex[:6]}"
    people = []
    for _ in range(4):
        s = await http_login(gateway, f"u{uuid.uuid4().hex[:10]}")
        await gateway.post("/v1/members/me", json={"region": {"province": "浙江省", "city": city}},
                           headers={**bearer(s["accessToken"]), "X-HTTP-Method-Override": "PATCH"})
        people.append(s["member"]["name"])
    for name in people[:2]:
        await paid(members, name, 50_000, days_ago=2)
    # people[3] holds the tag manually and does not match: the rule must never remove it
    r = await gateway.post("/v1/members:applyTags", json={"members": [people[3]], "tags": [tag]}, headers=bearer(staff))
    assert r.status_code == 200, r.text
    rule = {"all": [cond("city", "eq", city), cond("orders", "ge", "1")]}
    created = await gateway.post("/v1/tagRules", json={"displayName": "买过的杭州会员", "tag": tag, "rule": rule},
                                 headers=bearer(staff))
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    dry = await gateway.post(f"/v1/{name}:run", json={"validateOnly": True}, headers=bearer(staff))
    assert dry.json() == {"gainedCount": "2", "lostCount": "0"}
    assert await holders(members, tag, people) == {people[3]: "TAG_SOURCE_MANUAL"}  # a dry run changes nothing

    # two replicas' jobs at once: the rule is applied by one of them (leased), never twice
    await asyncio.gather(jobs.auto_tags(members.app), jobs.auto_tags(members.app))
    assert await holders(members, tag, people) == {people[0]: "TAG_SOURCE_RULE", people[1]: "TAG_SOURCE_RULE",
                                                    people[3]: "TAG_SOURCE_MANUAL"}
    again = await gateway.post(f"/v1/{name}:run", json={}, headers=bearer(staff))
    assert again.json() == {"gainedCount": "0", "lostCount": "0"}

    # people[0] moves away: the next run removes the rule's tag; people[2] buys: gains it
    s0 = await members.stub.UpdateMember(pb.UpdateMemberRequest(
        member=pb.Member(name=people[0], region=pb.Region(province="江苏省", city="南京市")),
        update_mask={"paths": ["region"]}), metadata=await members.staff())
    assert s0.region.city == "南京市"
    await paid(members, people[2], 1_000, days_ago=1)
    run = await gateway.post(f"/v1/{name}:run", json={}, headers=bearer(staff))
    assert run.json() == {"gainedCount": "1", "lostCount": "1"}
    assert await holders(members, tag, people) == {people[1]: "TAG_SOURCE_RULE", people[2]: "TAG_SOURCE_RULE",
                                                    people[3]: "TAG_SOURCE_MANUAL"}
    history = await gateway.get(f"/v1/{name}/changes", params={"pageSize": 2}, headers=bearer(staff))
    assert history.status_code == 200
    changes, token = history.json()["changes"], history.json()["nextPageToken"]
    rest = await gateway.get(f"/v1/{name}/changes", params={"pageSize": 10, "pageToken": token}, headers=bearer(staff))
    changes += rest.json()["changes"]
    assert sorted((c["member"], c["action"]) for c in changes) == sorted([
        (people[0], "TAG_RULE_ACTION_APPLIED"), (people[1], "TAG_RULE_ACTION_APPLIED"),
        (people[0], "TAG_RULE_ACTION_REMOVED"), (people[2], "TAG_RULE_ACTION_APPLIED")])

    bad = await gateway.post("/v1/tagRules", json={"displayName": "x", "tag": tag,
                                                    "rule": {"any": [cond("orders", "ge", "-x")]}},
                             headers=bearer(staff))
    assert bad.status_code == 400 and "tag_rule.rule.any[0].condition.values[0]" in bad.text
    member = await http_login(gateway, f"u{uuid.uuid4().hex[:10]}")
    assert (await gateway.get("/v1/tagRules", headers=bearer(member["accessToken"]))).status_code == 403


async def test_rfm_recompute_and_report(gateway, members):
    staff = await staff_token(gateway)
    name = (await http_login(gateway, f"u{uuid.uuid4().hex[:10]}"))["member"]["name"]
    for _ in range(5):
        await paid(members, name, 80_000, days_ago=3)
    for attempt in range(50):  # the background job may hold the lease for a moment
        r = await gateway.post("/v1/rfm:recompute", json={}, headers=bearer(staff))
        if r.status_code != 409:
            break
        await asyncio.sleep(0.1)
    assert r.status_code == 200, r.text
    report = r.json()
    assert len(report["segments"]) == 8 and report["method"] == "thresholds"
    assert int(report["memberCount"]) >= 1 and "computeTime" in report
    important = next(x for x in report["segments"] if x["segment"] == "RFM_SEGMENT_IMPORTANT_VALUE")
    assert int(important["memberCount"]) >= 1 and int(important["amountFen"]) >= 400_000
    got = await gateway.get("/v1/rfm/report", headers=bearer(staff))
    assert got.json()["memberCount"] == report["memberCount"]
    # the member now matches a segment on RFM
    prev = await gateway.post("/v1/segments:preview", json={"rule": {"all": [
        cond("rfm.segment", "eq", "RFM_SEGMENT_IMPORTANT_VALUE"), cond("rfm.r_score", "eq", "5")]}, "sampleSize": 100},
        headers=bearer(staff))
    assert name in prev.json()["sampleMembers"] or int(prev.json()["memberCount"]) > 100
    member = await http_login(gateway, f"u{uuid.uuid4().hex[:10]}")
    assert (await gateway.get("/v1/rfm/report", headers=bearer(member["accessToken"]))).status_code == 403


async def test_rfm_job_runs_once_across_replicas(members):
    """Four replicas due at once: one takes the lease and recomputes, the others skip."""
    now = utcnow() + timedelta(hours=2)  # due whatever ran before
    results = await asyncio.gather(*(members.app.rfm.run_job(members.app.sessions, now, min_interval=timedelta(hours=1))
                                     for _ in range(4)))
    assert len([r for r in results if r is not None]) == 1, results


async def test_update_and_delete_a_tag_rule(gateway, members):
    staff = await staff_token(gateway)
    tag = await tag_of(gateway, staff)
    city = f"城{uuid.uuid4().hex[:6]}"
    people = []
    for _ in range(3):
        s = await http_login(gateway, f"u{uuid.uuid4().hex[:10]}")
        await gateway.post("/v1/members/me", json={"region": {"province": "浙江省", "city": city}},
                           headers={**bearer(s["accessToken"]), "X-HTTP-Method-Override": "PATCH"})
        people.append(s["member"]["name"])
    await paid(members, people[0], 5_000, days_ago=1)
    r = await gateway.post("/v1/members:applyTags", json={"members": [people[2]], "tags": [tag]}, headers=bearer(staff))
    assert r.status_code == 200, r.text
    created = await gateway.post("/v1/tagRules", json={"displayName": "买过", "tag": tag, "rule": {"all": [
        cond("city", "eq", city), cond("orders", "ge", "1")]}}, headers=bearer(staff))
    name = created.json()["name"]
    assert (await gateway.post(f"/v1/{name}:run", json={}, headers=bearer(staff))).json()["gainedCount"] == "1"
    patch = {**bearer(staff), "X-HTTP-Method-Override": "PATCH"}
    # widen the condition to the whole city and rename; the next run applies it
    r = await gateway.post(f"/v1/{name}", params={"updateMask": "rule,displayName"},
                           json={"displayName": "同城会员", "rule": cond("city", "eq", city)}, headers=patch)
    assert r.status_code == 200 and r.json()["displayName"] == "同城会员", r.text
    assert (await gateway.post(f"/v1/{name}:run", json={}, headers=bearer(staff))).json() == {
        "gainedCount": "1", "lostCount": "0"}  # people[1]; people[2] already holds it manually
    bad = await gateway.post(f"/v1/{name}", params={"updateMask": "rule"},
                             json={"rule": cond("shoe_size", "eq", "42")}, headers=patch)
    assert bad.status_code == 400 and "tag_rule.rule.condition.field" in bad.text
    bad = await gateway.post(f"/v1/{name}", params={"updateMask": "tag"}, json={"tag": tag}, headers=patch)
    assert bad.status_code == 400 and "update_mask" in bad.text
    r = await gateway.post(f"/v1/{name}", params={"updateMask": "disabled"}, json={"disabled": True}, headers=patch)
    assert r.json()["disabled"] is True
    # deleting removes the tags the rule gave, never the manual one
    r = await gateway.delete(f"/v1/{name}", headers=bearer(staff))
    assert r.status_code == 200 and r.json() == {"removedCount": "2"}, r.text
    assert await holders(members, tag, people) == {people[2]: "TAG_SOURCE_MANUAL"}
    assert (await gateway.delete(f"/v1/{name}", headers=bearer(staff))).status_code == 404
    assert (await gateway.post(f"/v1/{name}:run", json={}, headers=bearer(staff))).status_code == 404
