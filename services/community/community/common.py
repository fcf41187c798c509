"""Helpers the community sub-domains share: codes, timestamps, chunks and insert-once."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mall.community.v1 import community_service_pb2 as pb
from mallkit.db import insert_ignore, is_duplicate_key

_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CHUNK = 500


class Recent:
    """A small in-process map whose entries expire ``seconds`` after they were put (0: keeps
    nothing); past ``size`` entries it starts over. For what never changes once written."""

    def __init__(self, seconds: float, size: int = 10_000):
        self.seconds = seconds
        self.size = size
        self._entries: dict = {}

    def get(self, key):
        hit = self._entries.get(key)
        if hit is None or hit[0] <= time.monotonic():
            return None
        return hit[1]

    def put(self, key, value) -> None:
        if self.seconds <= 0:
            return
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self.seconds, value)


def unchanging(p) -> bool:
    """A post that no longer changes (may be served from memory): published (there is no way
    back) and not a coupon drop (its claimed count moves)."""
    return p.state == pb.POST_STATE_PUBLISHED and p.kind != pb.POST_KIND_COUPON_DROP


def new_code(length: int) -> str:
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(length))


def next_daily(first: datetime, after: datetime, tz: ZoneInfo, end: datetime | None = None) -> datetime | None:
    """The next occurrence strictly after ``after`` of ``first``'s time of day in ``tz`` (e.g. 15:00
    Asia/Shanghai every day), never before ``first``; None past ``end``."""
    local_first, local_after = first.astimezone(tz), after.astimezone(tz)
    day = local_after.date()
    while True:
        candidate = datetime.combine(day, local_first.time(), tzinfo=tz)
        if candidate > local_after and candidate >= local_first:
            break
        day += timedelta(days=1)
    out = candidate.astimezone(after.tzinfo)
    return None if end is not None and out > end else out


def ts(dt: datetime | None) -> Timestamp:
    t = Timestamp()
    if dt is not None:
        t.FromDatetime(dt)
    return t


def chunks(ids: list[int], n: int = CHUNK) -> Iterable[list[int]]:
    for i in range(0, len(ids), n):
        yield ids[i:i + n]


async def flush_once(s: AsyncSession) -> bool:
    """Flush pending rows in a savepoint; False when a unique key says they already exist.
    Only for callers that give up (raise) on False: the transaction is not reused after it."""
    try:
        async with s.begin_nested():
            await s.flush()
        return True
    except IntegrityError as exc:
        if is_duplicate_key(exc):
            return False
        raise


async def insert_once(s: AsyncSession, table, row: dict, key: dict) -> bool:
    """Insert a row unless its unique key exists; True when this call's row is the one stored.

    INSERT IGNORE / ON CONFLICT DO NOTHING with a fresh token, then read the
    token back: racing callers wait on the first one's row lock and then see
    its committed row, so exactly one of them wins."""
    token = str(uuid.uuid4())
    await insert_ignore(s, table, [{**row, **key, "token": token}])
    stored = (await s.execute(select(table.c.token).where(*[table.c[k] == v for k, v in key.items()]))).scalar_one()
    return stored == token
