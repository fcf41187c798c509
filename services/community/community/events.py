"""Events the community service consumes: type -> (payload message, handler). None yet.

A handler is ``async def handler(app, session, event, payload) -> None`` and runs in the
inbox transaction of the event (applied once per event id), reaching the domain through
the app (e.g. ``app.groups``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message

Handler = Callable[[Any, Any, Any, Any], Awaitable[None]]

HANDLERS: dict[str, tuple[type[Message], Handler]] = {}
