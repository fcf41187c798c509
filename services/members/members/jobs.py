"""Scheduled work of the members service: the RFM recompute, the auto-tag rules and guide tasks.

The shape every service shares: plain ``async def <job>(app, now=None) -> int`` functions,
:func:`run_once` doing one pass of them all, :func:`schedule` their periodic loops. Both
are set-wise SQL and safe with several replicas: RFM takes the ``rfm`` lease (and skips
when the last run is younger than the interval), each auto-tag rule is leased on its row, a
guide-task round is claimed by a conditional UPDATE of the task and a reminder of its item.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from mallkit.jobs import Job

if TYPE_CHECKING:
    from .app import MembersApp


async def rfm(app: MembersApp, now: datetime | None = None) -> int:
    """Recompute the RFM model if due; returns the members scored (0 when skipped)."""
    interval = timedelta(seconds=app.settings.rfm_interval_seconds * 0.9)
    return await app.rfm.run_job(app.sessions, now, min_interval=interval) or 0


async def auto_tags(app: MembersApp, now: datetime | None = None) -> int:
    """Apply every enabled auto-tag rule; returns the rules applied."""
    return await app.autotags.run_job(app.sessions, now)


async def guide_task_rounds(app: MembersApp, now: datetime | None = None) -> int:
    """Create the due rounds of recurring guide tasks; returns the rounds created."""
    return await app.guides.run_rounds(app.sessions, now)


async def guide_task_reminders(app: MembersApp, now: datetime | None = None) -> int:
    """Remind the members of open guide-task items before they are due; returns the reminders attempted."""
    return await app.guides.run_reminders(app.sessions, now)


async def run_once(app: MembersApp, now: datetime | None = None) -> None:
    """One pass of every job."""
    await rfm(app, now)
    await auto_tags(app, now)
    await guide_task_rounds(app, now)
    await guide_task_reminders(app, now)


def schedule(app: MembersApp) -> list:
    """The service's scheduled jobs, run by the platform's host."""
    s = app.settings
    return [Job("rfm", s.rfm_interval_seconds, lambda: rfm(app)),
            Job("auto_tags", s.auto_tag_interval_seconds, lambda: auto_tags(app)),
            Job("guide_task_rounds", s.guide_task_interval_seconds, lambda: guide_task_rounds(app)),
            Job("guide_task_reminders", s.guide_task_interval_seconds, lambda: guide_task_reminders(app))]
