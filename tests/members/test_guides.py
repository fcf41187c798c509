"""Shopping guides and guide tasks: assignment with history, who sees which members (list and 360),
task items made once per (task, round, member) and moved on reassignment, completion rules,
reminders sent once, report figures against a hand count, and the community group owner rule."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa

from mall.community.v1 import community_service_pb2 as cpb
from mall.members.v1 import members_service_pb2 as pb
from mallkit.auth import MEMBER, STAFF, Principal
from mallkit.errors import error_info, status_of
from members.models import GuideTaskItem, Member
from tests.fixtures import directory
from tests.members.test_segments import paid


def rid() -> str:
    return str(uuid.uuid4())


def token(members, staff_id: int, role: str) -> str:
    return members.codec.issue(Principal(STAFF, f"staff/{staff_id}", frozenset({role})))[0]


def md(members, staff_id: int, role: str) -> tuple:
    return members.auth(token(members, staff_id, role))


def member_md(members, member_id: int) -> tuple:
    return members.auth(members.codec.issue(Principal(MEMBER, f"members/{member_id}"))[0])


async def refused(call) -> tuple[grpc.StatusCode, object]:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    return e.value.code(), error_info(await status_of(e.value))


class Shop:
    """Two stores; guides g1, g2 and manager m in store A; guide g3 and manager mb in store B."""

    def __init__(self, members):
        self.members = members

    async def staff(self, role: int, store: str) -> int:
        st = await self.members.stub.CreateStaff(pb.CreateStaffRequest(staff=pb.Staff(
            username=f"s{uuid.uuid4().hex[:12]}", display_name="员工", role=role, store=store,
            password="a-long-password")), metadata=self.admin)
        return int(st.name.split("/")[1])

    async def setup(self) -> Shop:
        self.admin = await self.members.staff()
        mk = lambda n: self.members.stub.CreateStore(pb.CreateStoreRequest(store=pb.Store(display_name=n)),  # noqa: E731
                                                     metadata=self.admin)
        self.store_a, self.store_b = (await mk("A店")).name, (await mk("B店")).name
        self.a_id, self.b_id = int(self.store_a.split("/")[1]), int(self.store_b.split("/")[1])
        self.g1 = await self.staff(pb.STAFF_ROLE_GUIDE, self.store_a)
        self.g2 = await self.staff(pb.STAFF_ROLE_GUIDE, self.store_a)
        self.g3 = await self.staff(pb.STAFF_ROLE_GUIDE, self.store_b)
        self.m = await self.staff(pb.STAFF_ROLE_STORE_MANAGER, self.store_a)
        self.mb = await self.staff(pb.STAFF_ROLE_STORE_MANAGER, self.store_b)
        self.op = await self.staff(pb.STAFF_ROLE_OPERATOR, "")
        return self

    def guide(self, staff_id: int) -> tuple:
        return md(self.members, staff_id, "guide")

    def manager(self, staff_id: int | None = None) -> tuple:
        return md(self.members, staff_id or self.m, "store_manager")

    async def assign(self, member_id: int, guide_id: int, metadata=None, reason: str = "分配") -> pb.GuideAssignment:
        return await self.members.stub.AssignGuide(pb.AssignGuideRequest(
            member=f"members/{member_id}", guide=f"staff/{guide_id}", reason=reason, request_id=rid()),
            metadata=metadata or self.admin)


async def audience(members, ids: list[int]) -> str:
    """A segment holding exactly ``ids`` (a province no other member has)."""
    province = f"P{uuid.uuid4().hex[:10]}"
    async with members.engine.begin() as conn:
        await conn.execute(sa.update(Member).where(Member.id.in_(ids)).values(province=province))
    key = f"g{uuid.uuid4().hex[:10]}"
    await members.stub.CreateSegment(pb.CreateSegmentRequest(segment_id=key, segment=pb.Segment(
        display_name="导购任务人群", rule=pb.SegmentRule(condition=pb.SegmentCondition(
            field="province", operator="in", values=[province])))), metadata=await members.staff())
    return key


def task_of(key: str, **kw) -> pb.GuideTask:
    now = datetime.now(UTC)
    t = pb.GuideTask(display_name="唤醒沉睡会员", snapshot=f"segments/{key}", script="您好,最近有新品到店~", **kw)
    if not t.HasField("due_time"):
        t.due_time.FromDatetime(now + timedelta(days=3))
    return t


async def all_items(members, task: str, metadata, state=0) -> list[pb.GuideTaskItem]:
    out, page = [], ""
    while True:
        r = await members.stub.ListGuideTaskItems(pb.ListGuideTaskItemsRequest(
            parent=task, state=state, page_size=2, page_token=page), metadata=metadata)
        out += list(r.items)
        page = r.next_page_token
        if not page:
            return out


async def test_assignment_history_and_who_sees_which_members(members):
    shop = await Shop(members).setup()
    m1, m2, m3 = directory().new_members(3)
    a = await shop.assign(m1, shop.g1)
    assert a.previous_guide == "" and a.guide == f"staff/{shop.g1}" and a.store == shop.store_a
    await shop.assign(m2, shop.g1)
    await shop.assign(m3, shop.g3)
    # the store manager reassigns m1 to another guide of the store
    b = await shop.assign(m1, shop.g2, shop.manager(), reason="导购离职交接")
    assert b.previous_guide == f"staff/{shop.g1}" and b.assigned_by == f"staff/{shop.m}"
    hist = await members.stub.ListGuideAssignments(pb.ListGuideAssignmentsRequest(parent=f"members/{m1}"),
                                                   metadata=shop.admin)
    assert [(h.guide, h.reason) for h in hist.guide_assignments] == [
        (f"staff/{shop.g2}", "导购离职交接"), (f"staff/{shop.g1}", "分配")]
    got = await members.stub.GetMember(pb.GetMemberRequest(name=f"members/{m1}"), metadata=shop.admin)
    assert got.guide == f"staff/{shop.g2}" and got.store == shop.store_a

    # last order and last contact show in "my members"
    await paid(members, f"members/{m2}", 12_000, days_ago=3)
    await members.stub.RecordSubscriptions(pb.RecordSubscriptionsRequest(
        parent="members/me", accepted_template_ids=["tmpl-care"]), metadata=member_md(members, m2))
    await members.stub.SendReach(pb.SendReachRequest(member=f"members/{m2}", template_id="tmpl-care", purpose="care",
                                                     request_id=rid()), metadata=members.service_md)

    async def listed(guide: str, metadata) -> dict[str, pb.GuideMember]:
        out, page = {}, ""
        while True:
            r = await members.stub.ListGuideMembers(pb.ListGuideMembersRequest(guide=guide, page_size=1,
                                                                               page_token=page), metadata=metadata)
            out.update({x.member: x for x in r.members})
            page = r.next_page_token
            if not page:
                return out

    mine = await listed(f"staff/{shop.g1}", shop.guide(shop.g1))
    assert list(mine) == [f"members/{m2}"]
    assert mine[f"members/{m2}"].HasField("last_order_time") and mine[f"members/{m2}"].HasField("last_contact_time")
    assert list(await listed("staff/-", shop.guide(shop.g1))) == [f"members/{m2}"]
    assert set(await listed("staff/-", shop.manager())) == {f"members/{m1}", f"members/{m2}"}
    assert set(await listed(f"staff/{shop.g2}", shop.manager())) == {f"members/{m1}"}
    assert set(await listed("staff/-", shop.manager(shop.mb))) == {f"members/{m3}"}
    for guide, metadata in ((f"staff/{shop.g2}", shop.guide(shop.g1)), (f"staff/{shop.g3}", shop.manager())):
        code, info = await refused(members.stub.ListGuideMembers(pb.ListGuideMembersRequest(guide=guide),
                                                                 metadata=metadata))
        assert code == grpc.StatusCode.PERMISSION_DENIED and info.reason == "NOT_YOUR_MEMBER"

    # Member 360: a guide only their own members, a manager only the store's (absent or not: denied)
    view = lambda mid, metadata: members.stub.GetMember360(  # noqa: E731
        pb.GetMember360Request(name=f"members/{mid}/view360"), metadata=metadata)
    assert (await view(m2, shop.guide(shop.g1))).member.name == f"members/{m2}"
    assert (await view(m1, shop.manager())).member.name == f"members/{m1}"
    for mid, metadata in ((m1, shop.guide(shop.g1)), (m3, shop.guide(shop.g1)), (9_999_999_999, shop.guide(shop.g1)),
                          (m3, shop.manager())):
        code, _ = await refused(view(mid, metadata))
        assert code == grpc.StatusCode.PERMISSION_DENIED, mid
    code, _ = await refused(view(9_999_999_999, shop.admin))
    assert code == grpc.StatusCode.NOT_FOUND

    # a manager cannot take another store's member, nor give one to another store's guide
    for mid, guide in ((m3, shop.g1), (m2, shop.g3)):
        code, _ = await refused(shop.assign(mid, guide, shop.manager()))
        assert code == grpc.StatusCode.PERMISSION_DENIED
    # only guides can be assigned; guides cannot assign
    code, info = await refused(shop.assign(m2, shop.op))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and info.reason == "NOT_A_GUIDE"
    code, _ = await refused(shop.assign(m2, shop.g1, shop.guide(shop.g1)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, info = await refused(members.stub.AssignGuide(pb.AssignGuideRequest(
        member=f"members/{m2}", guide=f"staff/{shop.g1}", reason=""), metadata=shop.admin))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and info.metadata["field"] == "reason"
    # a store manager needs a store
    code, info = await refused(members.stub.CreateStaff(pb.CreateStaffRequest(staff=pb.Staff(
        username=f"s{uuid.uuid4().hex[:12]}", display_name="店长", role=pb.STAFF_ROLE_STORE_MANAGER,
        password="a-long-password")), metadata=shop.admin))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and info.metadata["field"] == "staff.store"


async def test_task_items_reassignment_completion_and_report(members):
    shop = await Shop(members).setup()
    m1, m2, m3, m4 = directory().new_members(4)
    await shop.assign(m1, shop.g1)
    await shop.assign(m2, shop.g1)
    async with members.engine.begin() as conn:  # m3: a member of store A without a guide (the pool); m4: no store
        await conn.execute(sa.update(Member).where(Member.id == m3).values(store_id=shop.a_id))
    await paid(members, f"members/{m1}", 9_000, days_ago=2)  # before the task: not an outcome
    key = await audience(members, [m1, m2, m3, m4])
    task = await members.stub.CreateGuideTask(pb.CreateGuideTaskRequest(guide_task=task_of(
        key, quick_reply="quickReplyCategories/1/quickReplies/2"), request_id=rid()), metadata=shop.admin)
    assert task.item_count == 4 and task.round_count == 1 and task.snapshot.startswith(f"segments/{key}/snapshots/")

    by_member = lambda items: {i.member: i for i in items}  # noqa: E731
    g1_items = by_member(await all_items(members, task.name, shop.guide(shop.g1)))
    assert set(g1_items) == {f"members/{m1}", f"members/{m2}"}
    store_items = by_member(await all_items(members, task.name, shop.manager()))
    assert set(store_items) == {f"members/{m1}", f"members/{m2}", f"members/{m3}"}
    assert store_items[f"members/{m3}"].guide == "" and store_items[f"members/{m3}"].store == shop.store_a
    assert await all_items(members, task.name, shop.manager(shop.mb)) == []
    assert len(await all_items(members, "guideTasks/-", shop.admin)) >= 4

    complete = lambda item, outcome, metadata, note="": members.stub.CompleteGuideTaskItem(  # noqa: E731
        pb.CompleteGuideTaskItemRequest(name=item.name, outcome=outcome, note=note, request_id=rid()),
        metadata=metadata)
    done = await complete(g1_items[f"members/{m2}"], pb.GUIDE_TASK_ITEM_STATE_DONE, shop.guide(shop.g1), "已电话回访")
    assert done.state == pb.GUIDE_TASK_ITEM_STATE_DONE and done.completed_by == f"staff/{shop.g1}"
    # another guide may not complete g1's item; a terminal item cannot change; OPEN is no outcome
    code, _ = await refused(complete(g1_items[f"members/{m1}"], pb.GUIDE_TASK_ITEM_STATE_DONE, shop.guide(shop.g2)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, info = await refused(complete(done, pb.GUIDE_TASK_ITEM_STATE_DECLINED, shop.guide(shop.g1)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and info.reason == "GUIDE_TASK_ITEM_COMPLETED"
    code, info = await refused(complete(g1_items[f"members/{m1}"], pb.GUIDE_TASK_ITEM_STATE_OPEN, shop.guide(shop.g1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and info.metadata["field"] == "outcome"

    # reassigning moves the open item (m1) to the new guide, not the done one (m2)
    moved = await shop.assign(m1, shop.g2)
    assert moved.moved_item_count == 1
    assert (await shop.assign(m2, shop.g2)).moved_item_count == 0
    assert set(by_member(await all_items(members, task.name, shop.guide(shop.g2)))) == {f"members/{m1}"}
    assert await all_items(members, task.name, shop.guide(shop.g1)) == []
    done_items = await all_items(members, task.name, shop.admin, state=pb.GUIDE_TASK_ITEM_STATE_DONE)
    assert [(i.member, i.guide) for i in done_items] == [(f"members/{m2}", f"staff/{shop.g1}")]
    # the manager works the pool
    await complete(store_items[f"members/{m3}"], pb.GUIDE_TASK_ITEM_STATE_UNREACHABLE, shop.manager())

    # outcome: m2 (reached) and m4 (not reached) pay after the start; m1's order was before it
    await paid(members, f"members/{m2}", 30_000, days_ago=0)
    await paid(members, f"members/{m4}", 5_000, days_ago=0)
    report = await members.stub.GetGuideTaskReport(pb.GetGuideTaskReportRequest(name=f"{task.name}/report"),
                                                   metadata=shop.admin)
    t = report.task
    assert (t.item_count, t.completed_count, t.done_count, t.unreachable_count) == (4, 2, 1, 1)
    assert t.completion_rate == pytest.approx(0.5)
    guides = {g.key: (g.item_count, g.completed_count) for g in report.guides}
    assert guides == {f"staff/{shop.g1}": (1, 1), f"staff/{shop.g2}": (1, 0), "": (2, 1)}
    stores = {g.key: (g.item_count, g.completed_count) for g in report.stores}
    assert stores == {shop.store_a: (3, 2), "": (1, 0)}
    assert (report.reached_member_count, report.reached_buyer_count) == (1, 1)
    assert (report.rest_member_count, report.rest_buyer_count) == (3, 1)
    mine = await members.stub.GetGuideTaskReport(pb.GetGuideTaskReportRequest(name=f"{task.name}/report"),
                                                 metadata=shop.manager())
    assert mine.task.item_count == 3 and (mine.rest_member_count, mine.rest_buyer_count) == (2, 0)
    code, _ = await refused(members.stub.GetGuideTaskReport(pb.GetGuideTaskReportRequest(
        name=f"{task.name}/report"), metadata=shop.guide(shop.g1)))
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_items_are_made_once_per_round_however_often_or_concurrently(members):
    admin = await members.staff()
    ids = directory().new_members(30)
    key = await audience(members, ids)
    now = datetime.now(UTC)
    t = task_of(key, recurrence=pb.GUIDE_TASK_RECURRENCE_DAILY)
    t.start_time.FromDatetime(now - timedelta(days=3, hours=1))
    t.due_time.FromDatetime(now - timedelta(days=3) + timedelta(hours=10))
    req = pb.CreateGuideTaskRequest(guide_task=t, request_id=rid())
    a, b = await asyncio.gather(*[members.stub.CreateGuideTask(req, metadata=admin) for _ in range(2)])
    assert a.name == b.name and a.item_count == 30  # one task, one round 0
    task_id = int(a.name.split("/")[1])
    # three rounds are due (days -2, -1 and today): replicas race the job, then it runs again
    made = await asyncio.gather(*[members.app.guides.run_rounds(members.app.sessions) for _ in range(3)])
    assert sum(made) == 3
    assert await members.app.guides.run_rounds(members.app.sessions) == 0
    async with members.engine.connect() as conn:
        rows = (await conn.execute(sa.select(GuideTaskItem.round, sa.func.count(), sa.func.count(
            sa.distinct(GuideTaskItem.member_id))).where(GuideTaskItem.task_id == task_id)
            .group_by(GuideTaskItem.round).order_by(GuideTaskItem.round))).all()
    assert [tuple(r) for r in rows] == [(0, 30, 30), (1, 30, 30), (2, 30, 30), (3, 30, 30)]
    got = await members.stub.GetGuideTask(pb.GetGuideTaskRequest(name=a.name), metadata=admin)
    assert got.round_count == 4 and got.item_count == 120
    # rounds are due one period apart
    dues = {i.round: i.due_time.ToDatetime(tzinfo=UTC) for i in await all_items(members, a.name, admin)}
    assert dues[1] - dues[0] == timedelta(days=1) and dues[3] - dues[0] == timedelta(days=3)


async def test_reminder_goes_once_through_reach(members, fake_wechat):
    admin = await members.staff()
    consenting, silent = directory().new_members(2)
    await members.stub.RecordSubscriptions(pb.RecordSubscriptionsRequest(
        parent="members/me", accepted_template_ids=["tmpl-guide", "tmpl-guide"]), metadata=member_md(members, consenting))
    key = await audience(members, [consenting, silent])
    t = task_of(key, reminder_template_id="tmpl-guide")
    t.due_time.FromDatetime(datetime.now(UTC) + timedelta(hours=20))
    t.reminder_lead.FromSeconds(86400)  # due within a day: the reminder is due now
    task = await members.stub.CreateGuideTask(pb.CreateGuideTaskRequest(guide_task=t), metadata=admin)
    runs = await asyncio.gather(*[members.app.guides.run_reminders(members.app.sessions) for _ in range(3)])
    await members.app.guides.run_reminders(members.app.sessions)
    assert sum(runs) >= 2  # both items attempted (other tests' items may be due too)
    async with members.engine.connect() as conn:
        openid = (await conn.execute(sa.select(Member.openid).where(Member.id == consenting))).scalar_one()
    sent = [m for m in fake_wechat.messages if m["touser"] == openid and m["template_id"] == "tmpl-guide"]
    assert len(sent) == 1
    for mid, state in ((consenting, pb.TOUCH_STATE_SENT), (silent, pb.TOUCH_STATE_SKIPPED)):
        touches = await members.stub.ListTouches(pb.ListTouchesRequest(parent=f"members/{mid}"), metadata=admin)
        mine = [x for x in touches.touches if x.purpose == task.name]
        assert [x.state for x in mine] == [state], mid
    items = await all_items(members, task.name, admin)
    assert all(i.reminder_touch for i in items) and len(items) == 2


async def test_guide_routes_over_http_refuse_members(members, gateway):
    shop = await Shop(members).setup()
    mid = directory().new_member()
    admin = {"Authorization": shop.admin[0][1]}
    r = await gateway.post(f"/v1/members/{mid}:assignGuide", json={"guide": f"staff/{shop.g1}", "reason": "到店"},
                           headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["guide"] == f"staff/{shop.g1}"
    guide = {"Authorization": f"Bearer {token(members, shop.g1, 'guide')}"}
    r = await gateway.get(f"/v1/staff/{shop.g1}/members", headers=guide)
    assert r.status_code == 200 and [m["member"] for m in r.json()["members"]] == [f"members/{mid}"]
    assert (await gateway.get(f"/v1/staff/{shop.g2}/members", headers=guide)).status_code == 403
    key = await audience(members, [mid])
    due = (datetime.now(UTC) + timedelta(days=2)).isoformat().replace("+00:00", "Z")
    r = await gateway.post("/v1/guideTasks", json={"displayName": "生日关怀", "snapshot": f"segments/{key}",
                                                   "script": "生日快乐", "dueTime": due}, headers=admin)
    assert r.status_code == 200, r.text
    task = r.json()["name"]
    items = (await gateway.get(f"/v1/{task}/items", headers=guide)).json()["items"]
    assert [i["member"] for i in items] == [f"members/{mid}"]
    r = await gateway.post(f"/v1/{items[0]['name']}:complete", json={"outcome": "GUIDE_TASK_ITEM_STATE_DONE",
                                                                      "note": "ok"}, headers=guide)
    assert r.status_code == 200 and r.json()["state"] == "GUIDE_TASK_ITEM_STATE_DONE", r.text
    report = (await gateway.get(f"/v1/{task}/report", headers=admin)).json()
    assert report["task"]["completedCount"] == 1 and report["reachedMemberCount"] == 1
    export = await gateway.get(f"/v1/{task}/report:export", params={"outcomeDays": 30}, headers=admin)
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv"), export.text
    lines = export.text.splitlines()
    assert lines[0].startswith("level,key,items,completed,done")
    assert lines[1].split(",")[:5] == ["task", task, "1", "1", "1"] and lines[1].split(",")[8:10] == ["30", "1"]
    assert any(line.startswith(f"guide,staff/{shop.g1},1,1,") for line in lines[2:]), export.text
    r = await gateway.post("/v1/guideTasks", json={"displayName": "x", "snapshot": "segments/nope!", "script": "s",
                                                   "dueTime": due}, headers=admin)
    assert r.status_code == 400 and "guide_task.snapshot" in r.text
    # members (mini-program tokens) are refused on every guide route
    member = {"Authorization": f"Bearer {members.codec.issue(Principal(MEMBER, f'members/{mid}'))[0]}"}
    calls = [("POST", f"/v1/members/{mid}:assignGuide", {"guide": f"staff/{shop.g1}", "reason": "x"}),
             ("GET", f"/v1/members/{mid}/guideAssignments", None), ("GET", f"/v1/staff/{shop.g1}/members", None),
             ("POST", "/v1/guideTasks", {"displayName": "x"}), ("GET", f"/v1/{task}", None),
             ("GET", f"/v1/{task}/items", None), ("POST", f"/v1/{items[0]['name']}:complete", {}),
             ("GET", f"/v1/{task}/report", None), ("GET", f"/v1/{task}/report:export", None)]
    for method, path, body in calls:
        r = await gateway.request(method, path, json=body, headers=member)
        assert r.status_code == 403, (path, r.text)


async def test_community_group_owner_must_be_an_active_guide(members, community):
    shop = await Shop(members).setup()
    make = lambda owner: community.stub.CreateGroup(cpb.CreateGroupRequest(group=cpb.Group(  # noqa: E731
        display_name="导购群", type=cpb.GROUP_TYPE_GENERAL, owner=owner)), metadata=community.staff_md("operator"))
    assert (await make(f"staff/{shop.g1}")).owner == f"staff/{shop.g1}"
    async with members.engine.begin() as conn:
        from members.models import Staff
        await conn.execute(sa.update(Staff).where(Staff.id == shop.g2).values(disabled=True))
    for owner in (f"staff/{shop.op}", f"staff/{shop.m}", "staff/999999999", f"staff/{shop.g2}"):
        code, info = await refused(make(owner))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, owner
        assert info.reason == "OWNER_NOT_A_GUIDE" and info.metadata["field"] == "group.owner"


async def test_a_channel_code_guide_is_recorded_in_the_history(members):
    shop = await Shop(members).setup()
    qr = await members.stub.CreateChannelCode(pb.CreateChannelCodeRequest(channel_code=pb.ChannelCode(
        display_name="导购码", channel_type=pb.CHANNEL_TYPE_STORE_QR, store=shop.store_a, guide=f"staff/{shop.g1}")),
        metadata=shop.admin)
    login, _ = await members.login(channel_code=qr.scene)
    assert login.member.guide == f"staff/{shop.g1}"
    hist = await members.stub.ListGuideAssignments(pb.ListGuideAssignmentsRequest(parent=login.member.name),
                                                   metadata=shop.guide(shop.g1))
    assert [(h.guide, h.assigned_by, h.store) for h in hist.guide_assignments] == [
        (f"staff/{shop.g1}", qr.name, shop.store_a)]
