"""Shopping guides (导购) and guide tasks (导购任务).

Who sees what (:class:`Scope`, read from the caller's staff row, not only the token):
admins, operators and services see every member; a store manager the members of their
store; a guide only their own members (``members.guide_id``). Ownership is checked
before existence: a member outside the caller's scope is PERMISSION_DENIED whether it
exists or not.

A guide assignment updates the member, appends to ``guide_assignments`` and moves the
member's OPEN task items to the new guide, in one transaction.

A task covers one segment snapshot. Each round's items are written by one
``INSERT ... SELECT`` over the snapshot joined with ``members`` (the member's guide, or
the store's pool when the member has none), and the unique key (task, round, member)
holds each member once per round. Round 0 is created with the task; a recurring task's
later rounds are created by the ``guide_task_rounds`` job, which claims a round with a
conditional UPDATE of ``round_count`` (two replicas never create the same round).
Reminders go to the member of each still-open item through reach (consent and caps
apply), each item claimed by a conditional UPDATE of ``remind_state`` in the same
transaction as the send, so a reminder goes at most once however often the job runs.
Reports are GROUP BY queries over the items, the snapshot and ``member_purchases``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, exists, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mall.members.v1 import members_service_pb2 as pb
from mallkit.auth import Principal
from mallkit.db import run_transaction, utcnow
from mallkit.errors import FailedPrecondition, NotFound, PermissionDenied, Unavailable
from mallkit.pagination import PageTokens
from mallkit.queries import keyset_page

from . import errors as reasons
from .models import (
    GuideAssignment,
    GuideTask,
    GuideTaskItem,
    Member,
    MemberPurchase,
    MemberPurchaseStats,
    MemberRfm,
    SegmentSnapshotMember,
    Staff,
    Touch,
)
from .reach import Reach
from .segments import Segments
from .staff import Staffing

log = logging.getLogger("members.guides")

OPEN = pb.GUIDE_TASK_ITEM_STATE_OPEN
OUTCOMES = (pb.GUIDE_TASK_ITEM_STATE_DONE, pb.GUIDE_TASK_ITEM_STATE_UNREACHABLE, pb.GUIDE_TASK_ITEM_STATE_DECLINED)
PERIODS = {pb.GUIDE_TASK_RECURRENCE_DAILY: timedelta(days=1), pb.GUIDE_TASK_RECURRENCE_WEEKLY: timedelta(days=7)}
#: remind_state of an item: to send, sent (or skipped by reach), not sent because the item was already due.
TO_REMIND, REMINDED, REMIND_EXPIRED = 0, 1, 2
ALL, STORE, OWN = "all", "store", "own"


@dataclass(frozen=True)
class Scope:
    """What a caller may see: ``ALL``, ``STORE`` (``store_id``) or ``OWN`` (their members, ``staff_id``)."""

    reach: str
    staff_id: int | None = None
    store_id: int | None = None

    @property
    def subject(self) -> str:
        return f"staff/{self.staff_id}" if self.staff_id else "service"

    def sees(self, guide_id: int | None, store_id: int | None) -> bool:
        """Whether a member (or an item) with this guide and store is within the scope."""
        if self.reach == ALL:
            return True
        if self.reach == STORE:
            return store_id is not None and store_id == self.store_id
        return guide_id is not None and guide_id == self.staff_id


def not_your_member() -> PermissionDenied:
    return PermissionDenied("not a member of yours", reason=reasons.NOT_YOUR_MEMBER, zh="无权查看该会员")


def task_not_found(task_id: int) -> NotFound:
    return NotFound("guide task not found", reason=reasons.GUIDE_TASK_NOT_FOUND,
                    resource=("guideTask", f"guideTasks/{task_id}"), zh="导购任务不存在")


def round_due(task: GuideTask, r: int) -> datetime:
    return task.due_time + PERIODS.get(task.recurrence, timedelta(0)) * r


def next_round(task: GuideTask, r: int) -> datetime | None:
    """When round ``r`` starts (None: the task has no such round)."""
    period = PERIODS.get(task.recurrence)
    if period is None:
        return None
    at = task.start_time + period * r
    return None if task.end_time is not None and at > task.end_time else at


def _ignore(stmt, dialect: str):
    """INSERT that skips rows hitting a unique key (the (task, round, member) key of items)."""
    return stmt.prefix_with("OR IGNORE" if dialect == "sqlite" else "IGNORE")


@dataclass
class Completion:
    key: str
    items: int
    completed: int
    done: int
    unreachable: int
    declined: int


@dataclass
class Report:
    task: Completion
    guides: list[Completion]
    stores: list[Completion]
    reached: int
    reached_buyers: int
    rest: int
    rest_buyers: int


async def record_assignment(s: AsyncSession, member_id: int, guide_id: int, previous: int | None,
                            store_id: int | None, reason: str, by: str) -> GuideAssignment:
    """After the member's guide changed: move their OPEN items to the guide and append the history row."""
    moved = await s.execute(update(GuideTaskItem)
                            .where(GuideTaskItem.member_id == member_id, GuideTaskItem.state == OPEN)
                            .values(guide_id=guide_id, store_id=store_id))
    a = GuideAssignment(member_id=member_id, guide_id=guide_id, previous_guide_id=previous, store_id=store_id,
                        reason=reason, assigned_by=by, moved_item_count=moved.rowcount,  # type: ignore[attr-defined]
                        create_time=utcnow())
    s.add(a)
    await s.flush()
    return a


class Guides:
    def __init__(self, staffing: Staffing, segments: Segments, reach: Reach, pages: PageTokens):
        self.staffing = staffing
        self.segments = segments
        self.reach = reach
        self.pages = pages

    # --- who sees what ------------------------------------------------------------------

    async def scope_of(self, s: AsyncSession, p: Principal) -> Scope:
        if p.is_service:
            return Scope(ALL)
        if not p.is_staff:
            raise not_your_member()
        st = await s.get(Staff, int(p.id))
        if st is None or st.disabled:
            raise PermissionDenied("staff account not active", reason=reasons.STAFF_DISABLED, zh="员工账号不可用")
        if st.role in (pb.STAFF_ROLE_ADMIN, pb.STAFF_ROLE_OPERATOR):
            return Scope(ALL, st.id, st.store_id)
        if st.role == pb.STAFF_ROLE_STORE_MANAGER and st.store_id is not None:  # (never "store_id IS NULL")
            return Scope(STORE, st.id, st.store_id)
        return Scope(OWN, st.id, st.store_id)

    async def visible_member(self, s: AsyncSession, scope: Scope, member_id: int, *, for_update: bool = False) -> Member:
        """The member if the scope covers it; PERMISSION_DENIED before NOT_FOUND for narrow scopes."""
        m = await s.get(Member, member_id, with_for_update=for_update or None)
        if m is not None and scope.sees(m.guide_id, m.store_id):
            return m
        if scope.reach != ALL:
            raise not_your_member()
        raise NotFound("member not found", reason=reasons.MEMBER_NOT_FOUND, resource=("member", f"members/{member_id}"),
                       zh="会员不存在")

    # --- assignment ---------------------------------------------------------------------

    async def assign(self, s: AsyncSession, scope: Scope, member_id: int, guide_id: int, reason: str) -> GuideAssignment:
        guide = await self.staffing.guide(s, guide_id, "guide")
        if guide.disabled:
            raise FailedPrecondition("guide account is disabled", reason=reasons.STAFF_DISABLED,
                                     metadata={"field": "guide"}, zh="该导购账号已停用")
        m = await s.get(Member, member_id, with_for_update=True)
        if scope.reach == OWN:
            raise not_your_member()
        if scope.reach == STORE:  # their store's members (or members of no store) to their store's guides
            if m is None or m.store_id not in (None, scope.store_id) or guide.store_id != scope.store_id:
                raise not_your_member()
        elif m is None:
            await self.visible_member(s, scope, member_id)  # raises
        assert m is not None
        previous = m.guide_id
        m.guide_id = guide.id
        if guide.store_id is not None:
            m.store_id = guide.store_id
        m.update_time = utcnow()
        return await record_assignment(s, member_id, guide.id, previous, m.store_id, reason, scope.subject)

    async def assignments(self, s: AsyncSession, scope: Scope, member_id: int, size: int,
                          token: str) -> tuple[list[GuideAssignment], str]:
        await self.visible_member(s, scope, member_id)
        ga = GuideAssignment
        return await keyset_page(s, select(ga).where(ga.member_id == member_id), key=ga.id.desc(), tokens=self.pages,
                                 page_size=size, page_token=token, filters=[member_id])

    async def guide_members(self, s: AsyncSession, scope: Scope, guide_id: int | None, size: int,
                            token: str) -> tuple[list, str]:
        """Rows (member id, nickname, guide, store, tier, RFM segment, last order, last contact) by member id."""
        m = Member
        if scope.reach == OWN:
            if guide_id not in (None, scope.staff_id):
                raise not_your_member()
            where = [m.guide_id == scope.staff_id]
        elif scope.reach == STORE:
            where = [m.store_id == scope.store_id]
            if guide_id is not None:
                g = await s.get(Staff, guide_id)
                if g is None or g.store_id != scope.store_id:
                    raise not_your_member()
                where.append(m.guide_id == guide_id)
        else:
            where = [m.guide_id == guide_id] if guide_id is not None else [m.guide_id.is_not(None)]
        last_contact = (select(func.max(Touch.create_time))
                        .where(Touch.member_id == m.id, Touch.state == pb.TOUCH_STATE_SENT)
                        .scalar_subquery())
        q = (select(m.id, m.nickname, m.guide_id, m.store_id, m.tier_id, MemberRfm.segment,
                    MemberPurchaseStats.last_order_time, last_contact.label("last_contact_time"))
             .outerjoin(MemberRfm, MemberRfm.member_id == m.id)
             .outerjoin(MemberPurchaseStats, MemberPurchaseStats.member_id == m.id)
             .where(*where))
        return await keyset_page(s, q, key=m.id, tokens=self.pages, page_size=size, page_token=token,
                                 filters=[guide_id or 0, scope.staff_id or 0], key_of=lambda r: [r[0]])

    # --- tasks --------------------------------------------------------------------------

    async def create_task(self, s: AsyncSession, scope: Scope, fields: dict, segment_key: str,
                          version: int | None) -> GuideTask:
        if version is None:
            snap = await self.segments.materialize(s, segment_key)
        else:
            snap = await self.segments.snapshot(s, segment_key, str(version))
        now = utcnow()
        task = GuideTask(snapshot_id=snap.id, segment_key=segment_key, snapshot_version=snap.version, round_count=1,
                         item_count=0, creator=scope.subject, create_time=now, **fields)
        task.start_time = task.start_time or now
        task.next_round_time = next_round(task, 1)
        s.add(task)
        await s.flush()
        await self.create_round(s, task, 0, now)
        return task

    async def create_round(self, s: AsyncSession, task: GuideTask, r: int, now: datetime) -> int:
        """Round ``r``'s items, one per member of the snapshot, in one INSERT ... SELECT; returns the rows made."""
        due = round_due(task, r)
        remind = due - timedelta(seconds=task.reminder_lead_seconds) if task.reminder_template_id else None
        sm, m, it = SegmentSnapshotMember, Member, GuideTaskItem.__table__
        rows = (select(literal(task.id), literal(r), m.id, m.guide_id, m.store_id, literal(OPEN), literal(""),
                       literal(due, it.c.due_time.type), literal(remind, it.c.remind_time.type),
                       literal(TO_REMIND if remind else REMIND_EXPIRED), literal(""), literal(now, it.c.create_time.type))
                .select_from(sm).join(m, m.id == sm.member_id).where(sm.snapshot_id == task.snapshot_id))
        made = await s.execute(_ignore(insert(it), s.get_bind().dialect.name).from_select(
            ["task_id", "round", "member_id", "guide_id", "store_id", "state", "note", "due_time", "remind_time",
             "remind_state", "completed_by", "create_time"], rows))
        n = made.rowcount  # type: ignore[attr-defined]
        await s.execute(update(GuideTask).where(GuideTask.id == task.id).values(item_count=GuideTask.item_count + n))
        return n

    async def task(self, s: AsyncSession, task_id: int) -> GuideTask:
        t = await s.get(GuideTask, task_id, populate_existing=True)
        if t is None:
            raise task_not_found(task_id)
        return t

    async def run_rounds(self, sessions: async_sessionmaker[AsyncSession], now: datetime | None = None) -> int:
        """Create every round that is due (job ``guide_task_rounds``); returns the rounds created."""
        now = now or utcnow()
        async with sessions() as s:
            due = list((await s.execute(select(GuideTask.id).where(GuideTask.next_round_time <= now)
                                        .order_by(GuideTask.id).limit(500))).scalars())
        made = 0
        for task_id in due:
            while await run_transaction(sessions, lambda s, t=task_id: self._claim_round(s, t, now)):
                made += 1
        return made

    async def _claim_round(self, s: AsyncSession, task_id: int, now: datetime) -> bool:
        task = await self.task(s, task_id)
        if task.next_round_time is None or task.next_round_time > now:
            return False
        r = task.round_count
        claimed = await s.execute(update(GuideTask).where(GuideTask.id == task_id, GuideTask.round_count == r)
                                  .values(round_count=r + 1, next_round_time=next_round(task, r + 1)))
        if claimed.rowcount != 1:  # type: ignore[attr-defined]  # another replica took it
            return False
        await self.create_round(s, task, r, now)
        return True

    async def items(self, s: AsyncSession, scope: Scope, task_id: int | None, state: int, size: int,
                    token: str) -> tuple[list[GuideTaskItem], str]:
        it = GuideTaskItem
        where = [it.state == (state or OPEN)]
        if task_id is not None:
            await self.task(s, task_id)
            where.append(it.task_id == task_id)
        if scope.reach == STORE:
            where.append(it.store_id == scope.store_id)
        elif scope.reach == OWN:
            where.append(it.guide_id == scope.staff_id)
        return await keyset_page(s, select(it).where(*where), key=it.id, tokens=self.pages, page_size=size,
                                 page_token=token, filters=[task_id or 0, state, scope.staff_id or 0])

    async def complete(self, s: AsyncSession, scope: Scope, task_id: int, item_id: int, outcome: int,
                       note: str) -> GuideTaskItem:
        item = await s.get(GuideTaskItem, item_id, with_for_update=True)
        if item is None or item.task_id != task_id or not scope.sees(item.guide_id, item.store_id):
            if scope.reach != ALL:
                raise PermissionDenied("not an item of yours", reason=reasons.NOT_YOUR_MEMBER, zh="无权处理该任务")
            raise NotFound("guide task item not found", reason=reasons.GUIDE_TASK_ITEM_NOT_FOUND,
                           resource=("guideTaskItem", f"guideTasks/{task_id}/items/{item_id}"), zh="任务项不存在")
        now = utcnow()
        done = await s.execute(update(GuideTaskItem).where(GuideTaskItem.id == item_id, GuideTaskItem.state == OPEN)
                               .values(state=outcome, note=note, completed_by=scope.subject, complete_time=now))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise FailedPrecondition("item already completed", reason=reasons.GUIDE_TASK_ITEM_COMPLETED,
                                     metadata={"state": pb.GuideTaskItemState.Name(item.state)}, zh="该任务项已完成")
        await s.refresh(item)
        return item

    # --- reminders ----------------------------------------------------------------------

    async def run_reminders(self, sessions: async_sessionmaker[AsyncSession], now: datetime | None = None) -> int:
        """Remind the member of each open item whose reminder time came (job ``guide_task_reminders``);
        returns the reminders attempted (touches recorded, sent or skipped)."""
        now = now or utcnow()
        it = GuideTaskItem

        async def expire(s):  # open items already due get no reminder
            await s.execute(update(it).where(it.remind_state == TO_REMIND, it.due_time <= now)
                            .values(remind_state=REMIND_EXPIRED))

        await run_transaction(sessions, expire)
        async with sessions() as s:
            ids = list((await s.execute(select(it.id).where(it.remind_state == TO_REMIND, it.remind_time <= now)
                                        .order_by(it.id).limit(500))).scalars())
        sent = 0
        for item_id in ids:
            try:
                sent += await run_transaction(sessions, lambda s, i=item_id: self._remind(s, i, now))
            except Unavailable:  # WeChat is down: nothing was claimed (rolled back); the next run retries
                log.warning("guide task reminders: WeChat unavailable, %d reminders left for the next run",
                            len(ids) - ids.index(item_id))
                break
        return sent

    async def _remind(self, s: AsyncSession, item_id: int, now: datetime) -> int:
        it = GuideTaskItem
        claimed = await s.execute(update(it).where(it.id == item_id, it.remind_state == TO_REMIND, it.state == OPEN,
                                                   it.due_time > now)
                                  .values(remind_state=REMINDED))
        if claimed.rowcount != 1:  # type: ignore[attr-defined]  # another replica, completed or due meanwhile
            return 0
        item = await s.get(it, item_id, populate_existing=True)
        assert item is not None
        task = await self.task(s, item.task_id)
        touch = await self.reach.send_reach(s, item.member_id, task.reminder_template_id,
                                            {"thing1": task.display_name[:20], "time2": item.due_time.isoformat()},
                                            "", f"guideTasks/{task.id}")
        item.reminder_touch_id = touch.id
        await s.flush()
        return 1

    # --- reports ------------------------------------------------------------------------

    async def report(self, s: AsyncSession, scope: Scope, task_id: int, outcome_days: int) -> Report:
        task = await self.task(s, task_id)
        it = GuideTaskItem
        where = [it.task_id == task_id]
        if scope.reach == STORE:
            where.append(it.store_id == scope.store_id)
        elif scope.reach == OWN:
            raise not_your_member()
        counts = [func.count(), func.sum(case((it.state != OPEN, 1), else_=0))] + [
            func.sum(case((it.state == o, 1), else_=0)) for o in OUTCOMES]

        def completion(key: str, row) -> Completion:
            return Completion(key, *(int(v or 0) for v in row))

        total = (await s.execute(select(*counts).where(*where))).one()
        guides = await s.execute(select(it.guide_id, *counts).where(*where).group_by(it.guide_id).order_by(it.guide_id))
        stores = await s.execute(select(it.store_id, *counts).where(*where).group_by(it.store_id).order_by(it.store_id))
        # Outcome: the snapshot's members (a manager: those with an item of their store), reached = an item done.
        sm = SegmentSnapshotMember
        population = select(sm.member_id.label("member_id")).where(sm.snapshot_id == task.snapshot_id)
        if scope.reach == STORE:
            population = population.where(exists().where(it.task_id == task_id, it.member_id == sm.member_id,
                                                         it.store_id == scope.store_id))
        pop = population.subquery("pop")
        reached = exists().where(it.task_id == task_id, it.member_id == pop.c.member_id,
                                 it.state == pb.GUIDE_TASK_ITEM_STATE_DONE)
        mp = MemberPurchase
        bought = exists().where(mp.member_id == pop.c.member_id, mp.pay_time >= task.start_time,
                                mp.pay_time < task.start_time + timedelta(days=outcome_days))
        r_flag = case((reached, 1), else_=0).label("r")
        b_flag = case((bought, 1), else_=0).label("b")
        flags = select(r_flag, b_flag).select_from(pop).subquery("flags")
        split = {(int(r), int(b)): int(n) for r, b, n in await s.execute(
            select(flags.c.r, flags.c.b, func.count()).group_by(flags.c.r, flags.c.b))}
        return Report(
            completion("", total),
            [completion(f"staff/{row[0]}" if row[0] else "", row[1:]) for row in guides],
            [completion(f"stores/{row[0]}" if row[0] else "", row[1:]) for row in stores],
            split.get((1, 0), 0) + split.get((1, 1), 0), split.get((1, 1), 0),
            split.get((0, 0), 0) + split.get((0, 1), 0), split.get((0, 1), 0))

