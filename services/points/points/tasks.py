"""Tasks: what earns points (profile, invites, groups, shares, quizzes...), rewarded within a
frequency and a cap per period, once per (period, source_ref)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mall.points.v1 import points_service_pb2 as pb
from mallkit.errors import AlreadyExists, NotFound
from mallkit.pagination import PageTokens
from mallkit.queries import get_or_not_found, keyset_page

from . import errors as reasons
from .ledger import Ledger
from .models import Task, TaskCompletion, TaskCounter

TASK_SOURCES = {pb.TASK_KIND_INVITE_FRIEND: pb.ENTRY_SOURCE_INVITE}


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
        """Reward a completion within the task's frequency and cap, once per (period, source_ref)."""
        now = self.ledger.clock()
        t = (await s.execute(select(Task).where(Task.kind == kind))).scalar_one_or_none()
        if t is None or not t.active:
            return TaskResult(0, "NO_ACTIVE_TASK", t.id if t else None)
        period = self.period_of(t.frequency, now)
        await self.ledger.lock(s, member_id, now)
        done = await s.execute(select(TaskCompletion.id).where(
            TaskCompletion.task_id == t.id, TaskCompletion.member_id == member_id, TaskCompletion.period == period,
            TaskCompletion.source_ref == source_ref))
        if done.first():
            return TaskResult(0, "ALREADY_REWARDED", t.id)
        counted = await s.execute(update(TaskCounter).where(
            TaskCounter.task_id == t.id, TaskCounter.member_id == member_id, TaskCounter.period == period,
            TaskCounter.count < t.limit_per_period).values(count=TaskCounter.count + 1))
        if counted.rowcount != 1:
            if await s.get(TaskCounter, (t.id, member_id, period)) is not None:
                return TaskResult(0, "LIMIT_REACHED", t.id)
            s.add(TaskCounter(task_id=t.id, member_id=member_id, period=period, count=1))
        points = reward_override or t.reward_points
        c = TaskCompletion(task_id=t.id, member_id=member_id, period=period, source_ref=source_ref, points=points,
                           create_time=now)
        s.add(c)
        await s.flush()
        e = await self.ledger.entry(s, member_id, f"task:{c.id}", pb.ENTRY_KIND_EARN,
                                    TASK_SOURCES.get(kind, pb.ENTRY_SOURCE_TASK), source_ref or f"tasks/{t.id}",
                                    points, 0, now, t.display_name, fresh=True)
        await self.ledger.credit(s, e, points, now)
        return TaskResult(points, "", t.id)
