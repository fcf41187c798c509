"""Behaviour events: client batches through the gateway, server events from the streams, the staff
timeline, and the identity merge of a visitor's anonymous events (exactly once, one member)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from mall.community.v1 import community_events_pb2 as cev
from mall.events.v1 import events_pb2
from mall.members.v1 import members_service_pb2 as pb
from mall.orders.v1 import orders_events_pb2 as oev
from mall.points.v1 import points_events_pb2 as pev
from members.models import BehaviourEvent, Visitor
from tests.fixtures import deliver


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def visitor() -> str:
    return f"v{uuid.uuid4().hex[:20]}"


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def client_event(kind: str, when: datetime, cid: str | None = None, **kw) -> dict:
    return {"clientEventId": cid or uuid.uuid4().hex, "kind": kind, "occurTime": iso(when), **kw}


async def staff_token(gateway) -> str:
    r = await gateway.post("/v1/staff:login", json={"username": "test-admin", "password": "test-admin-password"})
    assert r.status_code == 200, r.text
    return r.json()["accessToken"]


async def http_login(gateway, user: str, **extra) -> dict:
    r = await gateway.post("/v1/members:loginWithWechat", json={"code": f"{user}#{uuid.uuid4().hex[:6]}", **extra})
    assert r.status_code == 200, r.text
    return r.json()


async def timeline(gateway, token: str, member: str, **params) -> list[dict]:
    """Every page of a member's timeline (following next_page_token)."""
    out, page = [], ""
    for _ in range(100):
        r = await gateway.get(f"/v1/{member}/behaviorEvents", params={**params, "pageToken": page},
                              headers=bearer(token))
        assert r.status_code == 200, r.text
        body = r.json()
        # member.registered arrives through the stream at its own pace: the client's events only
        out += [e for e in body.get("behaviorEvents", []) if e.get("source") == "client" or params.get("kinds")]
        page = body.get("nextPageToken", "")
        if not page:
            return out
    raise AssertionError("too many pages")


async def test_client_batch_counts_each_event_once_and_joins_the_member_on_login(gateway):
    vid, now = visitor(), datetime.now(UTC)
    batch = [client_event("BEHAVIOR_KIND_VIEW_PRODUCT", now - timedelta(minutes=5), target="products/7", touchpoint="pages/item"),
             client_event("BEHAVIOR_KIND_SEARCH", now - timedelta(minutes=4), detail="口红", touchpoint="pages/search"),
             client_event("BEHAVIOR_KIND_ADD_TO_CART", now - timedelta(minutes=3), target="products/7", touchpoint="pages/item")]
    r = await gateway.post("/v1/behaviorEvents:record", json={"visitorId": vid, "events": batch})
    assert r.status_code == 200, r.text
    assert r.json() == {"recordedCount": 3, "duplicateCount": 0}
    again = await gateway.post("/v1/behaviorEvents:record", json={"visitorId": vid, "events": batch + batch[:1]})
    assert again.json() == {"recordedCount": 0, "duplicateCount": 4}  # sent twice: counted once

    session = await http_login(gateway, f"u{uuid.uuid4().hex[:10]}", visitorId=vid)
    member = session["member"]["name"]
    staff = await staff_token(gateway)
    events = await timeline(gateway, staff, member)
    assert [e["kind"] for e in events] == ["BEHAVIOR_KIND_ADD_TO_CART", "BEHAVIOR_KIND_SEARCH", "BEHAVIOR_KIND_VIEW_PRODUCT"]  # newest first
    assert all(e["visitorId"] == vid and e["source"] == "client" for e in events)
    assert events[1]["detail"] == "口红" and events[2]["touchpoint"] == "pages/item"

    # after the merge, anonymous events of that visitor go to the member directly
    later = client_event("BEHAVIOR_KIND_OPEN_MESSAGE", now, touchpoint="subscribe")
    assert (await gateway.post("/v1/behaviorEvents:record",
                               json={"visitorId": vid, "events": [later]})).json()["recordedCount"] == 1
    assert len(await timeline(gateway, staff, member)) == 4


async def test_bad_client_events_are_refused_naming_the_field(gateway):
    now, vid = datetime.now(UTC), visitor()
    cases = [
        ([client_event("BEHAVIOR_KIND_VIEW_PRODUCT", now), client_event("BEHAVIOR_KIND_VIEW_PRODUCT", now + timedelta(hours=1))],
         "events[1].occur_time"),
        ([client_event("BEHAVIOR_KIND_VIEW_PRODUCT", now - timedelta(days=30))], "events[0].occur_time"),
        ([client_event("BEHAVIOR_KIND_ORDER_PAID", now)], "events[0].kind"),  # server kinds are not the client's to send
        ([client_event("BEHAVIOR_KIND_SEARCH", now, cid="not a valid id!")], "events[0].client_event_id"),
        ([client_event("BEHAVIOR_KIND_SEARCH", now, target="x" * 129)], "events[0].target"),
        ([], "events"),
    ]
    for events, field in cases:
        r = await gateway.post("/v1/behaviorEvents:record", json={"visitorId": vid, "events": events})
        assert r.status_code == 400, (field, r.text)
        fields = [v["field"] for d in r.json()["error"]["details"] for v in d.get("fieldViolations", [])]
        assert field in fields, (field, r.text)
    r = await gateway.post("/v1/behaviorEvents:record", json={"visitorId": "short", "events": []})
    assert r.status_code == 400
    r = await gateway.post("/v1/behaviorEvents:record",
                           json={"visitorId": vid, "events": [client_event("BEHAVIOR_KIND_SEARCH", now)] * 101})
    assert r.status_code == 400


async def test_timeline_filters_by_kind_and_time_pages_and_refuses_members(gateway):
    session = await http_login(gateway, f"u{uuid.uuid4().hex[:10]}")
    token, member = session["accessToken"], session["member"]["name"]
    vid, now = visitor(), datetime.now(UTC)
    kinds = ["BEHAVIOR_KIND_VIEW_PRODUCT", "BEHAVIOR_KIND_VIEW_CONTENT", "BEHAVIOR_KIND_SHARE"]
    batch = [client_event(kinds[i % 3], now - timedelta(hours=50 - i)) for i in range(45)]
    r = await gateway.post("/v1/behaviorEvents:record", json={"visitorId": vid, "events": batch},
                           headers=bearer(token))  # with a member token: the member's own events
    assert r.json()["recordedCount"] == 45
    staff = await staff_token(gateway)
    everything = await timeline(gateway, staff, member, pageSize=7)
    assert len(everything) == 45
    times = [e["occurTime"] for e in everything]
    assert times == sorted(times, reverse=True) and len({e["name"] for e in everything}) == 45
    shares = await timeline(gateway, staff, member, kinds="BEHAVIOR_KIND_SHARE", pageSize=4)
    assert len(shares) == 15 and {e["kind"] for e in shares} == {"BEHAVIOR_KIND_SHARE"}
    start, end = now - timedelta(hours=30), now - timedelta(hours=20)
    window = await timeline(gateway, staff, member, startTime=iso(start), endTime=iso(end), pageSize=3)
    expected = [e for e in batch if start <= datetime.fromisoformat(e["occurTime"]) < end]
    assert len(window) == len(expected) == 10
    r = await gateway.get(f"/v1/{member}/behaviorEvents", headers=bearer(token))
    assert r.status_code == 403  # the timeline is staff-only
    r = await gateway.get(f"/v1/{member}/behaviorEvents", params={"kinds": "BEHAVIOR_KIND_UNSPECIFIED"},
                          headers=bearer(staff))
    assert r.status_code == 400


def _event(source: str, event_type: str, payload) -> events_pb2.Event:
    e = events_pb2.Event(id=str(uuid.uuid4()), type=event_type, source=source)
    e.time.GetCurrentTime()
    e.data.Pack(payload)
    return e


async def test_server_events_become_behaviour_once_beside_the_apply_consumer(members):
    login, _ = await members.login()
    name = login.member.name
    mid = int(name.split("/")[1])
    when = datetime.now(UTC) - timedelta(hours=1)
    paid = oev.OrderPaidEvent(order="orders/991", member=name, paid_amount_fen=12_300)
    paid.pay_time.FromDatetime(when)
    paid_event = _event("orders", "order.paid", paid)
    joined = cev.GroupJoinedEvent(group="groups/5", member=name)
    left = cev.GroupLeftEvent(group="groups/5", member=name)
    checked = pev.CheckedInEvent(member=name, day="2026-12-01", streak=3, points=10)
    shared = cev.ContentSharedEvent(post="groups/5/posts/9", sharer=name)
    posted = cev.MemberPostedEvent(post="groups/5/posts/9", member=name, reply=True)
    for source, event_type, payload in [("community", "community.group_joined", joined),
                                        ("community", "community.member_posted", posted),
                                        ("community", "community.group_left", left),
                                        ("points", "points.checked_in", checked),
                                        ("community", "community.content_shared", shared)]:
        e = _event(source, event_type, payload)
        assert not (await deliver(members.app, e, purpose="behaviour")).duplicate
        assert (await deliver(members.app, e, purpose="behaviour")).duplicate
    # order.paid is read by both consumers, each through its own inbox: both effects happen once
    assert not (await deliver(members.app, paid_event, purpose="apply")).duplicate
    assert not (await deliver(members.app, paid_event, purpose="behaviour")).duplicate
    assert (await deliver(members.app, paid_event, purpose="behaviour")).duplicate
    staff = await members.staff()
    page = await members.stub.ListBehaviorEvents(pb.ListBehaviorEventsRequest(parent=name), metadata=staff)
    kinds = sorted(pb.BehaviorKind.Name(e.kind) for e in page.behavior_events)
    # member.registered of this login arrives through the real stream as well (the relay is running)
    assert [k for k in kinds if k != "BEHAVIOR_KIND_REGISTERED"] == sorted(
        ["BEHAVIOR_KIND_ORDER_PAID", "BEHAVIOR_KIND_GROUP_JOINED", "BEHAVIOR_KIND_GROUP_LEFT", "BEHAVIOR_KIND_CHECK_IN", "BEHAVIOR_KIND_CONTENT_SHARED",
         "BEHAVIOR_KIND_POSTED"])
    order = next(e for e in page.behavior_events if e.kind == pb.BEHAVIOR_KIND_ORDER_PAID)
    assert order.value_fen == 12_300 and order.target == "orders/991" and order.source == "orders"
    assert order.occur_time.ToDatetime(tzinfo=UTC) == when.replace(microsecond=when.microsecond // 1000 * 1000)
    me = await members.stub.GetMember(pb.GetMemberRequest(name=name), metadata=members.service_md)
    assert me.growth_value == 123
    async with members.engine.connect() as conn:
        n = (await conn.execute(select(func.count()).select_from(BehaviourEvent)
                                .where(BehaviourEvent.member_id == mid, BehaviourEvent.kind == pb.BEHAVIOR_KIND_ORDER_PAID))).scalar()
    assert n == 1


async def test_registered_arrives_through_the_real_stream(members):
    """The members-behaviour consumer reads the members stream itself over NATS (no shortcut)."""
    login, _ = await members.login()
    mid = int(login.member.name.split("/")[1])
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        async with members.engine.connect() as conn:
            n = (await conn.execute(select(func.count()).select_from(BehaviourEvent).where(
                BehaviourEvent.member_id == mid, BehaviourEvent.kind == pb.BEHAVIOR_KIND_REGISTERED))).scalar()
        if n == 1 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert n == 1


async def _anonymous(members, vid: str, n: int) -> None:
    now = datetime.now(UTC)
    req = pb.RecordBehaviorEventsRequest(visitor_id=vid)
    for i in range(n):
        e = req.events.add(client_event_id=f"e{i}", kind=pb.BEHAVIOR_KIND_VIEW_PRODUCT, target=f"products/{i}")
        e.occur_time.FromDatetime(now - timedelta(seconds=n - i))
    resp = await members.stub.RecordBehaviorEvents(req)
    assert resp.recorded_count == n


async def test_concurrent_logins_of_one_visitor_merge_once(members):
    vid, user = visitor(), f"u{uuid.uuid4().hex[:10]}"
    await _anonymous(members, vid, 12)
    logins = await asyncio.gather(*(members.login(user, visitor_id=vid) for _ in range(8)))
    names = {resp.member.name for resp, _ in logins}
    assert len(names) == 1
    mid = int(names.pop().split("/")[1])
    async with members.engine.connect() as conn:
        v = (await conn.execute(select(Visitor).where(Visitor.visitor_id == vid))).one()
        owners = (await conn.execute(select(BehaviourEvent.member_id, func.count()).where(
            BehaviourEvent.visitor_id == vid).group_by(BehaviourEvent.member_id))).all()
    assert v.member_id == mid and v.merged_count == 12  # merged once: 12 events moved in total
    assert owners == [(mid, 12)]


async def test_one_visitor_never_merges_into_two_members(members):
    vid = visitor()
    await _anonymous(members, vid, 5)
    users = [f"u{uuid.uuid4().hex[:10]}" for _ in range(6)]
    logins = await asyncio.gather(*(members.login(u, visitor_id=vid) for u in users))
    async with members.engine.connect() as conn:
        v = (await conn.execute(select(Visitor).where(Visitor.visitor_id == vid))).one()
        owners = set((await conn.execute(select(BehaviourEvent.member_id).where(
            BehaviourEvent.visitor_id == vid))).scalars())
    assert owners == {v.member_id} and v.merged_count == 5
    assert v.member_id in {int(r.member.name.split("/")[1]) for r, _ in logins}
    # an explicit link of that visitor by another member is refused; by the owner it is a no-op
    other = next(md for r, md in logins if int(r.member.name.split("/")[1]) != v.member_id)
    try:
        await members.stub.LinkVisitor(pb.LinkVisitorRequest(member="members/me", visitor_id=vid), metadata=other)
        raise AssertionError("linked a visitor of another member")
    except Exception as exc:  # grpc.aio.AioRpcError
        assert exc.code().name == "FAILED_PRECONDITION"  # type: ignore[attr-defined]
    owner = next(md for r, md in logins if int(r.member.name.split("/")[1]) == v.member_id)
    again = await members.stub.LinkVisitor(pb.LinkVisitorRequest(member="members/me", visitor_id=vid), metadata=owner)
    assert again.merged_count == 0


async def test_link_visitor_merges_anonymous_events_of_a_signed_in_member(members):
    resp, md = await members.login()
    vid = visitor()
    await _anonymous(members, vid, 3)
    linked = await asyncio.gather(*(members.stub.LinkVisitor(
        pb.LinkVisitorRequest(member="members/me", visitor_id=vid), metadata=md) for _ in range(5)))
    assert sorted(r.merged_count for r in linked) == [0, 0, 0, 0, 3]
    staff = await members.staff()
    page = await members.stub.ListBehaviorEvents(pb.ListBehaviorEventsRequest(
        parent=resp.member.name, kinds=[pb.BEHAVIOR_KIND_VIEW_PRODUCT]), metadata=staff)
    assert len(page.behavior_events) == 3
