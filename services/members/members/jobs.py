"""Scheduled work of the members service: none yet.

The shape every service shares: plain ``async def <job>(app, now=None) -> int`` functions,
:func:`run_once` doing one pass of them all, :func:`background` their periodic loops.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import MembersApp


async def run_once(app: MembersApp, now: datetime | None = None) -> None:
    """One pass of every job (there is none)."""


def schedule(app: MembersApp) -> list:
    """The service's scheduled jobs, run by the platform's host (none yet)."""
    return []
