"""Behaviour events (行为): one append-only store of what members and anonymous visitors did,
and the identity merge (行为合并) of a visitor's anonymous events into a member.

Client events come in batches from the mini-program (RecordBehaviorEvents); server events
come from the other services' streams through the ``members-behaviour`` consumer
(``events.BEHAVIOUR_HANDLERS``). Each event counts once: a unique ``dedupe_key`` per
event (visitor + client event id, or source + event id), written with INSERT IGNORE.

Every batch and every merge of a visitor first locks the visitor's row (created on first
sight), so a merge and a concurrent anonymous batch are serialized: the batch either sees
the link (its events go to the member) or commits before the merge's UPDATE runs (which
then moves them). A visitor belongs to at most one member: the first merge sets
``visitors.member_id`` under that lock, later merges into another member are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mall.members.v1 import members_service_pb2 as pb
from mallkit.db import insert_ignore, utcnow
from mallkit.errors import FailedPrecondition
from mallkit.events import defer_insert
from mallkit.pagination import PageTokens
from mallkit.queries import keyset_page

from . import errors as reasons
from .models import BehaviourEvent, Visitor

#: Kinds the mini-program may send; the others only come from the services' streams.
CLIENT_KINDS = frozenset({pb.BEHAVIOR_KIND_VIEW_PRODUCT, pb.BEHAVIOR_KIND_VIEW_CONTENT, pb.BEHAVIOR_KIND_SHARE, pb.BEHAVIOR_KIND_ADD_TO_CART, pb.BEHAVIOR_KIND_SEARCH, pb.BEHAVIOR_KIND_OPEN_MESSAGE})


def to_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True)
class ClientEvent:
    client_event_id: str
    kind: int
    target: str
    detail: str
    touchpoint: str
    occur_ms: int


@dataclass(frozen=True)
class Merge:
    merged: int  # events moved to the member by this call
    link_time: datetime


async def _append(s: AsyncSession, rows: list[dict]) -> int:
    """One multi-row INSERT IGNORE of behaviour events; returns how many were new (the unique
    ``dedupe_key`` skips repeats, and the driver's row count says how many went in)."""
    from sqlalchemy.dialects.mysql import insert as mysql_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    table = BehaviourEvent.__table__
    if s.get_bind().dialect.name == "sqlite":
        stmt = sqlite_insert(table).on_conflict_do_nothing()
    else:
        stmt = mysql_insert(table).prefix_with("IGNORE")
    return int((await s.execute(stmt, rows)).rowcount or 0)  # type: ignore[attr-defined]


class Behaviour:
    def __init__(self, pages: PageTokens):
        self.pages = pages

    async def _visitor(self, s: AsyncSession, visitor_id: str, now: datetime) -> Visitor:
        """The visitor's row, created on first sight, locked until the transaction ends."""
        await insert_ignore(s, Visitor.__table__, [{"visitor_id": visitor_id, "member_id": None, "merged_count": 0,
                                                    "create_time": now, "link_time": None}])
        v = (await s.execute(select(Visitor).where(Visitor.visitor_id == visitor_id).with_for_update()
                             .execution_options(populate_existing=True))).scalar_one()
        return v

    async def record_client(self, s: AsyncSession, visitor_id: str, member_id: int | None,
                            events: list[ClientEvent]) -> tuple[int, int]:
        """Store a client batch; returns (recorded, duplicates). With no member token the events
        belong to the member the visitor was merged into, if any."""
        now = utcnow()
        v = await self._visitor(s, visitor_id, now)
        owner = member_id if member_id is not None else v.member_id
        rows: dict[str, dict] = {}
        for e in events:
            key = f"{visitor_id}/{e.client_event_id}"
            rows.setdefault(key, {
                "dedupe_key": key, "member_id": owner, "visitor_id": visitor_id, "kind": e.kind, "source": "client",
                "target": e.target, "detail": e.detail, "touchpoint": e.touchpoint, "value_fen": 0,
                "occur_ms": e.occur_ms, "receive_time": now})
        recorded = await _append(s, list(rows.values()))
        return recorded, len(events) - recorded

    async def record_server(self, s: AsyncSession, *, source: str, event_id: str, kind: int, member_id: int,
                            when: datetime, target: str = "", value_fen: int = 0, detail: str = "") -> None:
        """Store one event of another service's stream (once per source and event id). Called by the
        ``members-behaviour`` consumer's handlers: the row is deferred, and a fetched batch of events
        is written in one multi-row INSERT IGNORE (:func:`mallkit.events.defer_insert`)."""
        defer_insert(s, BehaviourEvent.__table__, {
            "dedupe_key": f"{source}:{event_id}", "member_id": member_id, "visitor_id": None, "kind": kind,
            "source": source, "target": target[:128], "detail": detail[:256], "touchpoint": source,
            "value_fen": value_fen, "occur_ms": to_ms(when), "receive_time": utcnow()})

    async def merge(self, s: AsyncSession, visitor_id: str, member_id: int, *, strict: bool = True) -> Merge | None:
        """Join the visitor's anonymous events to the member, once.

        A visitor already merged into another member: FAILED_PRECONDITION when ``strict``
        (an explicit link), else nothing (a login carrying a stale visitor id) and None."""
        now = utcnow()
        v = await self._visitor(s, visitor_id, now)
        if v.member_id is not None and v.member_id != member_id:
            if strict:
                raise FailedPrecondition("the visitor is linked to another member",
                                         reason=reasons.VISITOR_LINKED_ELSEWHERE, metadata={"visitor_id": visitor_id},
                                         zh="该访客已关联其他会员")
            return None
        if v.member_id is None:
            v.member_id = member_id
            v.link_time = now
        moved = await s.execute(update(BehaviourEvent)
                                .where(BehaviourEvent.visitor_id == visitor_id, BehaviourEvent.member_id.is_(None))
                                .values(member_id=member_id))
        merged = moved.rowcount or 0  # type: ignore[attr-defined]
        v.merged_count = v.merged_count + merged
        await s.flush()
        assert v.link_time is not None
        return Merge(merged, v.link_time)

    async def timeline(self, s: AsyncSession, member_id: int, kinds: list[int], start_ms: int | None,
                       end_ms: int | None, size: int, token: str) -> tuple[list[BehaviourEvent], str]:
        q = select(BehaviourEvent).where(BehaviourEvent.member_id == member_id)
        if kinds:
            q = q.where(BehaviourEvent.kind.in_(kinds))
        if start_ms is not None:
            q = q.where(BehaviourEvent.occur_ms >= start_ms)
        if end_ms is not None:
            q = q.where(BehaviourEvent.occur_ms < end_ms)
        return await keyset_page(s, q, key=[BehaviourEvent.occur_ms.desc(), BehaviourEvent.id.desc()],
                                 tokens=self.pages, page_size=size, page_token=token,
                                 filters=[member_id, sorted(kinds), start_ms, end_ms])

    async def recent(self, s: AsyncSession, member_id: int, limit: int) -> list[BehaviourEvent]:
        q = (select(BehaviourEvent).where(BehaviourEvent.member_id == member_id)
             .order_by(BehaviourEvent.occur_ms.desc(), BehaviourEvent.id.desc()).limit(limit))
        return list((await s.execute(q)).scalars())
