"""Tasks: what earns points (profile, invites, groups, shares, quizzes...), rewarded within a
frequency and a cap per period, once per (period, source_ref)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mall.points.v1 import points_service_pb2 as pb
from mallkit.db import insert_ignore_statement
from mallkit.errors import AlreadyExists, NotFound
from mallkit.pagination import PageTokens
from mallkit.queries import get_or_not_found, keyset_page

from . import errors as reasons
from .ledger import Ledger
from .models import Task, TaskCompletion, TaskCounter

TASK_SOURCES = {pb.TASK_KIND_INVITE_FRIEND: pb.ENTRY_SOURCE_INVITE}

# Statements of a completion, built once (Core: no unit of work, cached compilation).
_completions, _counters = TaskCompletion.__table__, TaskCounter.__table__
TASK_OF_KIND = select(Task.id, Task.active, Task.frequency, Task.limit_per_period, Task.reward_points,
                      Task.display_name).where(Task.kind == bindparam("kind"))
COUNT_COMPLETION = (update(_counters)
                    .where(_counters.c.task_id == bindparam("task"), _counters.c.member_id == bindparam("member"),
                           _counters.c.period == bindparam("in_period"), _counters.c.count < bindparam("limit"))
                    .values(count=_counters.c.count + 1))
DROP_COMPLETION = delete(_completions).where(_completions.c.id == bindparam("completion"))


@dataclass
class TaskResult:
    points: int
    outcome: str
    task_id: int | None


class Tasks:
    def __init__(self, ledger: Ledger, pages: PageTokens):
        self.ledger = ledger
        self.pages = pages

    def period_of(self, frequency: int, when: datetime) -> str:
        day = self.ledger.brand_day(when)
        if frequency == pb.TASK_FREQUENCY_DAILY:
            return day.isoformat()
        if frequency == pb.TASK_FREQUENCY_WEEKLY:
            y, w, _ = day.isocalendar()
            return f"{y}-W{w:02d}"
        return "life"

    async def task(self, s: AsyncSession, task_id: int) -> Task:
        return await get_or_not_found(s, Task, task_id, lambda: NotFound(
            "task not found", reason=reasons.TASK_NOT_FOUND, resource=("task", f"tasks/{task_id}"), zh="任务不存在"))

    async def create_task(self, s: AsyncSession, fields: dict) -> Task:
        if (await s.execute(select(Task.id).where(Task.kind == fields["kind"]))).first():
            raise AlreadyExists("a task of this kind exists", reason=reasons.TASK_KIND_TAKEN,
                                metadata={"field": "task.kind"}, zh="该类型的任务已存在")
        now = self.ledger.clock()
        t = Task(create_time=now, update_time=now, **fields)
        s.add(t)
        await s.flush()
        return t

    async def update_task(self, s: AsyncSession, task_id: int, changes: dict) -> Task:
        t = await self.task(s, task_id)
        for k, v in changes.items():
            setattr(t, k, v)
        t.update_time = self.ledger.clock()
        await s.flush()
        return t

    async def list_tasks(self, s: AsyncSession, size: int, token: str, active_only: bool) -> tuple[list[Task], str]:
        q = select(Task)
        if active_only:
            q = q.where(Task.active.is_(True))
        return await keyset_page(s, q, key=Task.id, tokens=self.pages, page_size=size, page_token=token,
                                 filters=[active_only])

    async def complete_task(self, s: AsyncSession, member_id: int, kind: int, source_ref: str,
                            reward_override: int = 0) -> TaskResult:
        """Reward a completion within the task's frequency and cap, once per (period, source_ref).

        Seven statements on the happy path, nothing re-read: the task; the completion row,
        whose unique key answers ALREADY_REWARDED (insert-ignore); the period's counter
        (conditional UPDATE, or its first row); then the ledger append, the account last."""
        now = self.ledger.clock()
        t = (await s.execute(TASK_OF_KIND, {"kind": kind})).first()
        if t is None or not t.active:
            return TaskResult(0, "NO_ACTIVE_TASK", t.id if t else None)
        period = self.period_of(t.frequency, now)
        points = reward_override or t.reward_points
        conn = await s.connection()
        ignore = conn.dialect.name
        done = await conn.execute(insert_ignore_statement(ignore, _completions), {
            "task_id": t.id, "member_id": member_id, "period": period, "source_ref": source_ref, "points": points,
            "create_time": now})
        if done.rowcount != 1:
            return TaskResult(0, "ALREADY_REWARDED", t.id)
        completion_id = done.inserted_primary_key[0]
        key = {"task": t.id, "member": member_id, "in_period": period, "limit": t.limit_per_period}
        if (await conn.execute(COUNT_COMPLETION, key)).rowcount != 1:
            first = t.limit_per_period >= 1 and (await conn.execute(insert_ignore_statement(ignore, _counters), {
                "task_id": t.id, "member_id": member_id, "period": period, "count": 1})).rowcount == 1
            if not first:  # the period's cap is reached: the completion is not rewarded, nor kept
                await conn.execute(DROP_COMPLETION, {"completion": completion_id})
                return TaskResult(0, "LIMIT_REACHED", t.id)
        await self.ledger.append_credit(s, member_id, f"task:{completion_id}", pb.ENTRY_KIND_EARN,
                                        TASK_SOURCES.get(kind, pb.ENTRY_SOURCE_TASK), source_ref or f"tasks/{t.id}",
                                        points, now, t.display_name)
        return TaskResult(points, "", t.id)
