"""Transactional outbox (producer side) and idempotent inbox (consumer side).

Producer: :func:`add_event` writes one ``outbox_events`` row per subscriber in
the transaction of the business change, with the current W3C trace context.
:class:`OutboxRelay` runs in the service process, claims due rows with a
conditional UPDATE (a lease, so several replicas never deliver the same row at
once), pushes each to the subscriber's ``EventSinkService.DeliverEvent`` and
marks it delivered, or schedules a retry with exponential backoff and jitter.

Consumer: :class:`EventSink` applies an event and records its id in
``inbox_events`` in one transaction; a redelivered id is acknowledged without
effect. Delivery is at least once, the effect exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta

import grpc
from google.protobuf.message import Message
from opentelemetry import propagate, trace
from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    and_,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mall.events.v1 import events_pb2, events_pb2_grpc
from mallkit.db import UTCDateTime, is_duplicate_key, run_transaction, utcnow

log = logging.getLogger("mallkit.outbox")
tracer = trace.get_tracer("mallkit.outbox")

#: Handler of one event type: (session, event, payload) inside the inbox transaction.
Handler = Callable[[AsyncSession, events_pb2.Event, Message], Awaitable[None]]


def define_tables(metadata: MetaData) -> tuple[Table, Table]:
    """The ``outbox_events`` and ``inbox_events`` tables, in a service's metadata."""
    outbox = Table(
        "outbox_events",
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False),
        Column("event_type", String(64), nullable=False),
        Column("destination", String(32), nullable=False),
        Column("payload", LargeBinary(length=16 * 1024 * 1024), nullable=False),
        Column("create_time", UTCDateTime(), nullable=False),
        Column("attempts", Integer, nullable=False, default=0),
        Column("next_attempt_time", UTCDateTime(), nullable=False),
        Column("lease_until", UTCDateTime(), nullable=True),
        Column("delivered_time", UTCDateTime(), nullable=True),
        Column("last_error", String(255), nullable=True),
        UniqueConstraint("event_id", "destination"),
        Index("ix_outbox_events_due", "delivered_time", "next_attempt_time"),
    )
    inbox = Table(
        "inbox_events",
        metadata,
        Column("event_id", String(36), primary_key=True),
        Column("event_type", String(64), nullable=False),
        Column("source", String(32), nullable=False),
        Column("receive_time", UTCDateTime(), nullable=False),
    )
    return outbox, inbox


class Outbox:
    """Writes events of one producing service."""

    def __init__(self, table: Table, source: str, routes: Mapping[str, Sequence[str]]):
        self.table = table
        self.source = source
        self.routes = routes

    async def add(self, session: AsyncSession, event_type: str, data: Message, subject: str = "") -> str:
        """Record an event in the caller's transaction; returns its id."""
        event = events_pb2.Event(
            id=str(uuid.uuid4()), type=event_type, source=self.source, subject=subject
        )
        event.time.GetCurrentTime()
        event.data.Pack(data)
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        event.trace_context.update(carrier)
        payload = event.SerializeToString()
        now = utcnow()
        for destination in self.routes.get(event_type, ()):
            await session.execute(
                insert(self.table).values(
                    event_id=event.id,
                    event_type=event_type,
                    destination=destination,
                    payload=payload,
                    create_time=now,
                    attempts=0,
                    next_attempt_time=now,
                )
            )
        return event.id


def backoff(attempts: int, base: float = 0.5, cap: float = 300.0) -> float:
    """Seconds before retry number ``attempts`` (full jitter, capped)."""
    return random.uniform(0, min(cap, base * 2 ** min(attempts, 20)))


class OutboxRelay:
    """Delivers due outbox rows; safe with several replicas running."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        table: Table,
        deliver: Callable[[str, events_pb2.Event], Awaitable[None]],
        *,
        batch: int = 50,
        lease_seconds: float = 30.0,
        max_backoff: float = 300.0,
    ):
        self.sessions = sessions
        self.table = table
        self.deliver = deliver
        self.batch = batch
        self.lease = timedelta(seconds=lease_seconds)
        self.max_backoff = max_backoff

    async def run_once(self) -> int:
        """Deliver what is due now; returns the number delivered."""
        t = self.table
        now = utcnow()
        async with self.sessions() as s, s.begin():
            rows = (
                await s.execute(
                    select(t.c.id, t.c.destination)
                    .where(
                        t.c.delivered_time.is_(None),
                        t.c.next_attempt_time <= now,
                        or_(t.c.lease_until.is_(None), t.c.lease_until < now),
                    )
                    .order_by(t.c.next_attempt_time, t.c.id)  # retried rows queue behind fresh ones
                    .limit(self.batch)
                )
            ).all()
        delivered = 0
        down: set[str] = set()  # a subscriber that failed once is not tried again this pass
        for row_id, destination in rows:
            if destination in down:
                continue
            ok = await self._deliver_one(row_id)
            if ok is False:
                down.add(destination)
            delivered += bool(ok)
        return delivered

    async def _deliver_one(self, row_id: int) -> bool | None:
        """True: delivered; False: failed (retry later); None: another replica has it."""
        t = self.table
        now = utcnow()
        async with self.sessions() as s, s.begin():
            claimed = await s.execute(
                update(t)
                .where(
                    t.c.id == row_id,
                    t.c.delivered_time.is_(None),
                    or_(t.c.lease_until.is_(None), t.c.lease_until < now),
                )
                .values(lease_until=now + self.lease)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            row = (await s.execute(select(t).where(t.c.id == row_id))).one()
        event = events_pb2.Event.FromString(row.payload)
        parent = propagate.extract(dict(event.trace_context))
        with tracer.start_as_current_span(
            f"outbox deliver {event.type}", context=parent, kind=trace.SpanKind.PRODUCER
        ) as span:
            span.set_attribute("messaging.message.id", event.id)
            span.set_attribute("messaging.destination.name", row.destination)
            try:
                try:
                    await self.deliver(row.destination, event)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # the relay itself is stopping
                    raise ConnectionAbortedError("delivery call cancelled") from None  # e.g. channel closed
            except Exception as exc:  # any failure: retry later
                delay = backoff(row.attempts, cap=self.max_backoff)
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                # Warn on the first failure and every tenth; the rest are debug (a subscriber
                # that is down for an hour must not flood the logs).
                level = logging.WARNING if row.attempts % 10 == 0 else logging.DEBUG
                log.log(
                    level,
                    "outbox delivery to %s failed (attempt %d), retry in %.1fs",
                    row.destination,
                    row.attempts + 1,
                    delay,
                    extra={"event_id": event.id, "event_type": event.type, "peer": row.destination},
                )
                async with self.sessions() as s, s.begin():
                    await s.execute(
                        update(t)
                        .where(t.c.id == row_id)
                        .values(
                            attempts=t.c.attempts + 1,
                            next_attempt_time=utcnow() + timedelta(seconds=delay),
                            lease_until=None,
                            last_error=_short_error(exc),
                        )
                    )
                return False
        async with self.sessions() as s, s.begin():
            await s.execute(
                update(t)
                .where(t.c.id == row_id)
                .values(delivered_time=utcnow(), lease_until=None, attempts=t.c.attempts + 1, last_error=None)
            )
        return True

    async def pending(self) -> int:
        """Rows not yet delivered (for metrics and tests)."""
        t = self.table
        async with self.sessions() as s:
            rows = await s.execute(select(t.c.id).where(and_(t.c.delivered_time.is_(None))))
            return len(rows.all())

    async def run(self, stop: asyncio.Event, poll_seconds: float = 0.5) -> None:
        """Poll until ``stop`` is set."""
        while not stop.is_set():
            try:
                n = await self.run_once()
            except Exception:
                log.exception("outbox relay pass failed")
                n = 0
            if n == 0:
                try:
                    await asyncio.wait_for(stop.wait(), poll_seconds)
                except TimeoutError:
                    pass


def _short_error(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details() or ''}"[:255]
    return type(exc).__name__[:255]


class GrpcEventDelivery:
    """Delivers events to subscribers' EventSinkService over gRPC."""

    def __init__(self, channel_for: Callable[[str], grpc.aio.Channel], timeout: float = 5.0):
        self.channel_for = channel_for
        self.timeout = timeout

    async def __call__(self, destination: str, event: events_pb2.Event) -> None:
        stub = events_pb2_grpc.EventSinkServiceStub(self.channel_for(destination))
        await stub.DeliverEvent(events_pb2.DeliverEventRequest(event=event), timeout=self.timeout)


class EventSink(events_pb2_grpc.EventSinkServiceServicer):
    """Consumer side: applies each event id once (mounted in the service's server)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        inbox: Table,
        handlers: Mapping[str, tuple[type[Message], Handler]],
    ):
        self.sessions = sessions
        self.inbox = inbox
        self.handlers = handlers

    async def DeliverEvent(self, request, context):  # noqa: N802 (gRPC method name)
        from mallkit.errors import InvalidArgument

        event = request.event
        if not event.id or not event.type:
            raise InvalidArgument.field("event.id", "id and type are required")
        entry = self.handlers.get(event.type)
        if entry is None:
            raise InvalidArgument.field("event.type", f"unknown event type {event.type!r}")
        payload_type, handler = entry
        payload = payload_type()
        if not event.data.Unpack(payload):
            raise InvalidArgument.field("event.data", f"expected {payload_type.DESCRIPTOR.full_name}")
        async def apply(s: AsyncSession) -> None:
            await s.execute(
                insert(self.inbox).values(
                    event_id=event.id, event_type=event.type, source=event.source, receive_time=utcnow()
                )
            )
            await handler(s, event, payload)

        try:
            await run_transaction(self.sessions, apply)
        except IntegrityError as exc:
            if not is_duplicate_key(exc):
                raise
            async with self.sessions() as s:
                seen = await s.execute(select(self.inbox.c.event_id).where(self.inbox.c.event_id == event.id))
                if seen.first() is None:
                    raise
            return events_pb2.DeliverEventResponse(duplicate=True)
        return events_pb2.DeliverEventResponse(duplicate=False)

