"""Segments through the real gateway and server: validation naming the bad node (unknown field, wrong
type, cycles), preview, materialize into versioned snapshots that services read, staff-only routes."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from mall.events.v1 import events_pb2
from mall.members.v1 import members_service_pb2 as pb
from mall.orders.v1 import orders_events_pb2 as oev
from tests.fixtures import deliver
from tests.members.test_behaviour import bearer, http_login, staff_token


def cond(field: str, op: str, *values: str, **extra) -> dict:
    return {"condition": {"field": field, "operator": op, "values": list(values), **extra}}


def violations(r) -> list[str]:
    return [v["field"] for d in r.json()["error"]["details"] for v in d.get("fieldViolations", [])]


def key() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


async def create(gateway, staff: str, segment_id: str, rule: dict, **kw):
    return await gateway.post("/v1/segments", params={"segmentId": segment_id},
                              json={"displayName": kw.get("name", segment_id), "rule": rule}, headers=bearer(staff))


async def paid(members, member: str, fen: int, days_ago: float) -> None:
    p = oev.OrderPaidEvent(order=f"orders/{uuid.uuid4().int % 10**12}", member=member, paid_amount_fen=fen)
    p.pay_time.FromDatetime(datetime.now(UTC) - timedelta(days=days_ago))
    e = events_pb2.Event(id=str(uuid.uuid4()), type="order.paid", source="orders", subject=p.order)
    e.data.Pack(p)
    await deliver(members.app, e)


async def test_invalid_rules_are_refused_naming_the_node(gateway):
    staff = await staff_token(gateway)
    bad = [
        ({"all": [cond("orders", "ge", "1"), cond("shoe_size", "eq", "42")]}, "segment.rule.all[1].condition.field"),
        ({"any": [cond("orders", "ge", "many")]}, "segment.rule.any[0].condition.values[0]"),
        ({"not": cond("gender", "gt", "GENDER_MALE")}, "segment.rule.not.condition.operator"),
        ({"all": [cond("age", "between", "20")]}, "segment.rule.all[0].condition.values"),
        ({"all": [cond("behavior", "did", kind="BEHAVIOR_KIND_VIEW_PRODUCT", withinDays=0)]},
         "segment.rule.all[0].condition.within_days"),
        ({"all": []}, "segment.rule"),
        ({"all": [cond("segment", "in", "segments/nope-nope")]}, "segment.rule.all[0].condition.values[0]"),
    ]
    for rule, field in bad:
        r = await create(gateway, staff, key(), rule)
        assert r.status_code == 400, (rule, r.text)
        assert field in violations(r), (field, r.text)
    # a cycle of segments: a -> b -> a is refused when b is changed to point back at a
    a, b = key(), key()
    assert (await create(gateway, staff, a, cond("orders", "ge", "1"))).status_code == 200
    assert (await create(gateway, staff, b, cond("segment", "in", f"segments/{a}"))).status_code == 200
    r = await gateway.post(f"/v1/segments/{a}", params={"updateMask": "rule"},
                           json={"rule": {"any": [cond("city", "eq", "杭州市"), cond("segment", "in", f"segments/{b}")]}},
                           headers={**bearer(staff), "X-HTTP-Method-Override": "PATCH"})
    assert r.status_code == 400, r.text
    assert "segment.rule.any[1].condition.values[0]" in violations(r)
    assert "cycle" in r.json()["error"]["message"]
    r = await gateway.post(f"/v1/segments/{a}", params={"updateMask": "rule"},
                           json={"rule": cond("segment", "in", f"segments/{a}")},
                           headers={**bearer(staff), "X-HTTP-Method-Override": "PATCH"})
    assert r.status_code == 400 and "cycle" in r.json()["error"]["message"]


async def test_preview_materialize_and_read_snapshots(gateway, members):
    staff = await staff_token(gateway)
    city = f"城{uuid.uuid4().hex[:6]}"
    buyers = []
    for i in range(5):
        s = await http_login(gateway, f"u{uuid.uuid4().hex[:10]}")
        r = await gateway.post("/v1/members/me", json={"region": {"province": "浙江省", "city": city}},
                               headers={**bearer(s["accessToken"]), "X-HTTP-Method-Override": "PATCH"})
        assert r.status_code == 200, r.text
        buyers.append(s["member"]["name"])
    for i, name in enumerate(buyers):
        for _ in range(i):  # member i has i paid orders
            await paid(members, name, 10_000, days_ago=3)
    rule = {"all": [cond("city", "eq", city), cond("orders", "ge", "2"), cond("days_since_last_order", "le", "7")]}
    r = await gateway.post("/v1/segments:preview", json={"rule": rule, "sampleSize": 2}, headers=bearer(staff))
    assert r.status_code == 200, r.text
    assert r.json()["memberCount"] == "3"  # members 2, 3 and 4
    assert r.json()["sampleMembers"] == buyers[2:4]

    seg = key()
    created = await create(gateway, staff, seg, rule, name="复购会员")
    assert created.status_code == 200, created.text
    assert created.json()["name"] == f"segments/{seg}" and created.json()["rule"]["all"][1]["condition"]["field"] == "orders"
    snaps = await asyncio.gather(*(gateway.post(f"/v1/segments/{seg}:materialize", json={}, headers=bearer(staff))
                                   for _ in range(3)))
    assert sorted(s.json()["version"] for s in snaps) == [1, 2, 3]  # concurrent materializes: distinct versions
    assert {s.json()["memberCount"] for s in snaps} == {3}
    # a fourth buyer appears: version 4 has them, version 1 still does not
    await paid(members, buyers[1], 10_000, days_ago=1)
    v4 = await gateway.post(f"/v1/segments/{seg}:materialize", json={"requestId": str(uuid.uuid4())},
                            headers=bearer(staff))
    assert v4.json()["version"] == 4 and v4.json()["memberCount"] == 4

    async def read(parent: str, size: int) -> tuple[list[str], pb.SegmentSnapshot]:
        out, token = [], ""
        while True:
            page = await members.stub.ListSegmentMembers(pb.ListSegmentMembersRequest(
                parent=parent, page_size=size, page_token=token), metadata=members.service_md)
            out += page.members
            token = page.next_page_token
            if not token:
                return out, page.snapshot

    got, snap = await read(f"segments/{seg}/snapshots/1", 2)
    assert got == buyers[2:] and snap.version == 1
    got, snap = await read(f"segments/{seg}/snapshots/latest", 1)
    assert got == buyers[1:] and snap.version == 4
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.ListSegmentMembers(pb.ListSegmentMembersRequest(parent=f"segments/{seg}/snapshots/9"),
                                              metadata=members.service_md)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_builtin_layers_exist_and_staff_routes_refuse_members(gateway, members):
    staff = await staff_token(gateway)
    r = await gateway.get("/v1/segments", headers=bearer(staff))
    assert r.status_code == 200
    names = [s["name"] for s in r.json()["segments"]]
    assert names[:3] == ["segments/core", "segments/loyal", "segments/regular"]
    assert all(s["builtin"] for s in r.json()["segments"][:3])
    member = await http_login(gateway, f"u{uuid.uuid4().hex[:10]}")
    tok = member["accessToken"]
    for method, path, body in [("get", "/v1/segments", None), ("post", "/v1/segments:preview",
                                                                {"rule": cond("orders", "ge", "1")}),
                               ("post", "/v1/segments/core:materialize", {}),
                               ("get", "/v1/segments/core", None)]:
        r = await (gateway.get(path, headers=bearer(tok)) if method == "get"
                   else gateway.post(path, json=body, headers=bearer(tok)))
        assert r.status_code == 403, (path, r.text)
    # the snapshot read is for services only: the gateway does not expose it, members are refused over gRPC
    _, md = await members.login()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.ListSegmentMembers(pb.ListSegmentMembersRequest(parent="segments/core/snapshots/latest"),
                                              metadata=md)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_delete_segment_is_soft_and_refused_while_referred_to(gateway, members):
    staff = await staff_token(gateway)
    base, user = key(), key()
    assert (await create(gateway, staff, base, cond("orders", "ge", "1"))).status_code == 200
    assert (await create(gateway, staff, user, cond("segment", "in", f"segments/{base}"))).status_code == 200
    snap = await gateway.post(f"/v1/segments/{base}:materialize", json={}, headers=bearer(staff))
    assert snap.status_code == 200, snap.text
    r = await gateway.delete(f"/v1/segments/{base}", headers=bearer(staff))
    assert r.status_code == 400 and r.json()["error"]["details"][0]["reason"] == "SEGMENT_IN_USE", r.text
    assert f"segments/{user}" in r.json()["error"]["details"][0]["metadata"]["referrers"]
    assert (await gateway.delete(f"/v1/segments/{user}", headers=bearer(staff))).status_code == 200
    assert (await gateway.delete(f"/v1/segments/{base}", headers=bearer(staff))).status_code == 200
    assert (await gateway.get(f"/v1/segments/{base}", headers=bearer(staff))).status_code == 404
    assert (await gateway.delete(f"/v1/segments/{base}", headers=bearer(staff))).status_code == 404
    listed = await gateway.get("/v1/segments", params={"pageSize": 100}, headers=bearer(staff))
    names = {s["name"] for s in listed.json()["segments"]}
    token = listed.json().get("nextPageToken")
    while token:
        page = await gateway.get("/v1/segments", params={"pageSize": 100, "pageToken": token}, headers=bearer(staff))
        names |= {s["name"] for s in page.json()["segments"]}
        token = page.json().get("nextPageToken")
    assert f"segments/{base}" not in names and f"segments/{user}" not in names
    # a deleted segment can no longer be referred to, nor re-created under its id ...
    r = await create(gateway, staff, key(), cond("segment", "in", f"segments/{base}"))
    assert r.status_code == 400 and "segment.rule.condition.values[0]" in violations(r)
    assert (await create(gateway, staff, base, cond("orders", "ge", "1"))).status_code == 409
    # ... but the snapshots taken before stay readable (a campaign paging one goes on)
    page = await members.stub.ListSegmentMembers(pb.ListSegmentMembersRequest(
        parent=f"segments/{base}/snapshots/1"), metadata=members.service_md)
    assert page.snapshot.version == 1 and page.snapshot.member_count == snap.json()["memberCount"]
    r = await gateway.delete("/v1/segments/core", headers=bearer(staff))
    assert r.status_code == 400 and r.json()["error"]["details"][0]["reason"] == "SEGMENT_BUILTIN"
    member = await http_login(gateway, f"u{uuid.uuid4().hex[:10]}")
    assert (await gateway.delete(f"/v1/segments/{key()}", headers=bearer(member["accessToken"]))).status_code == 403
