"""Scheduled work of the members service: the RFM recompute and the auto-tag rules.

The shape every service shares: plain ``async def <job>(app, now=None) -> int`` functions,
:func:`run_once` doing one pass of them all, :func:`schedule` their periodic loops. Both
are set-wise SQL and safe with several replicas: RFM takes the ``rfm`` lease (and skips
when the last run is younger than the interval), each auto-tag rule is leased on its row.
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


async def run_once(app: MembersApp, now: datetime | None = None) -> None:
    """One pass of every job."""
    await rfm(app, now)
    await auto_tags(app, now)


def schedule(app: MembersApp) -> list:
    """The service's scheduled jobs, run by the platform's host."""
    s = app.settings
    return [Job("rfm", s.rfm_interval_seconds, lambda: rfm(app)),
            Job("auto_tags", s.auto_tag_interval_seconds, lambda: auto_tags(app))]
