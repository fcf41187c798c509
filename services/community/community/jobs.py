"""Scheduled work of the community service, safe with several replicas running.

* :func:`publish_due_posts` publishes scheduled posts whose time has come; each
  post is claimed by a conditional UPDATE (SCHEDULED -> PUBLISHED), so exactly
  one replica publishes it.
* :func:`close_ended_groups` closes flash groups past their end time (one
  conditional UPDATE).
* :func:`run_broadcasts` starts due rounds of segment broadcasts (a conditional UPDATE
  per round) and delivers open rounds under a lease, page by page (``targeting.py``).

Each is a plain function of the app (tests pass ``now``); :func:`run_once` does one pass.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from mallkit.db import run_transaction
from mallkit.jobs import Job

if TYPE_CHECKING:
    from .app import CommunityApp


async def publish_due_posts(app: CommunityApp, now: datetime | None = None) -> list[int]:
    """One pass of the scheduled-publishing job; returns the posts this replica published."""
    now = now or app.clock()
    return await run_transaction(app.sessions, lambda s: app.content.publish_due(s, now))


async def close_ended_groups(app: CommunityApp, now: datetime | None = None) -> int:
    now = now or app.clock()
    return await run_transaction(app.sessions, lambda s: app.groups.close_ended_groups(s, now))


async def run_broadcasts(app: CommunityApp, now: datetime | None = None) -> int:
    """Start the segment broadcast rounds whose time has come, then deliver the open rounds whose
    lease is free (``targeting.py``); returns the pages this replica delivered."""
    now = now or app.clock()
    assert app.targeting is not None
    await app.targeting.start_due_rounds(now)
    return await app.targeting.run_due(now)


async def run_once(app: CommunityApp, now: datetime | None = None) -> None:
    """One pass of every job."""
    await publish_due_posts(app, now)
    await close_ended_groups(app, now)
    await run_broadcasts(app, now)


def schedule(app: CommunityApp) -> list[Job]:
    """The service's scheduled jobs, run by the platform's host."""
    return [Job("publish_due_posts", app.settings.publish_interval_seconds, lambda: publish_due_posts(app)),
            Job("close_ended_groups", app.settings.close_interval_seconds, lambda: close_ended_groups(app)),
            Job("run_broadcasts", app.settings.broadcast_interval_seconds, lambda: run_broadcasts(app))]
