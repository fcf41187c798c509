"""Events between services on NATS JetStream: transactional outbox, relay, durable consumers.

Producer side
    :class:`Outbox` writes one ``outbox_events`` row per event in the transaction
    of the business change (with the W3C trace context of that moment).
    :class:`Relay` publishes due rows in batches, with bounded concurrency, to the
    producer's stream (``MALL_<SERVICE>``, subjects ``mall.<service>.<event type>``)
    with ``Nats-Msg-Id`` = the event id, so the server drops a republished
    duplicate (a crash between the server's ack and marking the row). A row is
    marked published only after the server acknowledged it. Replicas lease the rows
    they publish.

Consumer side
    :class:`Consumer` is one durable pull consumer per consuming service and
    purpose (``<service>-<purpose>``) on each stream it reads. It applies an event
    and records its id in ``inbox_events`` in one transaction, then acks: a
    redelivery after a crash between commit and ack is a no-op. A failing event is
    redelivered with backoff; on its ``max_deliveries``-th delivery it goes to the
    dead-letter stream (``MALL_DEADLETTER``; ``MALL`` is the namespace) with the reason and is terminated.
    Operators list and replay dead letters (:func:`list_dead_letters`,
    ``python -m <svc> dlq``). The trace context travels in the message headers, so
    the consumer's work joins the trace of the request that caused the event.

A handler that refuses an event for a business reason must not raise (that would
retry a refusal forever, then dead-letter it): it records the refusal (:func:`refused`:
a WARNING line and the ``mall_events_refused_total`` metric; the inbox row marks the
event applied) and writes the compensating event to its own outbox in the same
transaction, when something was taken that must be given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError, Message
from nats.js import api
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
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mall.events.v1 import events_pb2
from mallkit.db import UTCDateTime, insert_ignore, is_duplicate_key, run_transaction, utcnow
from mallkit.telemetry import EVENTS_REFUSED

log = logging.getLogger("mallkit.events")
tracer = trace.get_tracer("mallkit.events")

#: Handler of one event type: ``(session, event, payload)`` inside the inbox transaction.
Handler = Callable[[AsyncSession, events_pb2.Event, Message], Awaitable[None]]



def _trace_parent(carrier: dict[str, str]) -> trace.Span | None:
    """None when a span of this event would be recorded (then create it); otherwise the span to run
    under instead, costing nothing: ``INVALID_SPAN`` when no tracer provider is installed, or the
    producer's non-recording span when its trace was not sampled (so that, with a parent-based
    sampler, the SQL below stays unsampled too). A span per event cost a third of the consumer's CPU
    with tracing off."""
    if isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return trace.INVALID_SPAN
    if not carrier:
        return None
    parent = trace.get_current_span(propagate.extract(carrier))
    ctx = parent.get_span_context()
    if ctx.is_valid and not ctx.trace_flags.sampled:
        return parent
    return None


def refused(service: str, event: events_pb2.Event, reason: str, detail: str = "") -> None:
    """Record that a handler refuses ``event`` for a business reason (``reason``: an error reason such as
    ``MEMBER_NOT_FOUND``): one WARNING line with the event id and ``mall_events_refused_total``. The
    handler then returns normally, so the event counts as applied and is never redelivered."""
    EVENTS_REFUSED.labels(service, event.type, reason).inc()
    log.warning("%s refused %s: %s%s", service, event.type, reason, f" ({detail})" if detail else "",
                extra={"event_id": event.id, "reason": reason})


_DEFERRED = "mall_deferred_rows"


def defer_insert(session: AsyncSession, table: Table, row: dict) -> None:
    """From an event handler: a row to append, written with the rows the other handlers of the
    same transaction deferred in one multi-row ``INSERT IGNORE`` per table (a unique key dedupes)
    after the last handler ran, instead of one statement per event. The consumer flushes
    (:func:`flush_deferred`), so only handlers run by a :class:`Consumer` (or :func:`apply_event`) may
    call it."""
    session.info.setdefault(_DEFERRED, {}).setdefault(table, []).append(row)


async def flush_deferred(session: AsyncSession) -> None:
    """Write the rows handlers deferred in this session (:func:`defer_insert`)."""
    for table, rows in (session.info.pop(_DEFERRED, None) or {}).items():
        await insert_ignore(session, table, rows)


# --- names -------------------------------------------------------------------------------------


def stream_name(source: str, namespace: str = "mall") -> str:
    """``orders`` -> ``MALL_ORDERS``: the stream of one producing service."""
    return f"{namespace.upper()}_{source.upper()}"


def subject_of(source: str, event_type: str, namespace: str = "mall") -> str:
    """``("orders", "order.paid")`` -> ``mall.orders.order.paid``;
    ``("points", "points.coupon_redeemed")`` -> ``mall.points.coupon_redeemed``."""
    if event_type.startswith(source + "."):
        event_type = event_type[len(source) + 1:]
    return f"{namespace}.{source}.{event_type}"


def source_of(payload_type: type[Message]) -> str:
    """The producing service of a payload message: its proto package ``mall.<service>.v1``."""
    parts = payload_type.DESCRIPTOR.full_name.split(".")
    if len(parts) < 3 or parts[0] != "mall":
        raise ValueError(f"{payload_type.DESCRIPTOR.full_name} is not a mall.<service>.v1 message")
    return parts[1]


# --- tables ------------------------------------------------------------------------------------


def define_tables(metadata: MetaData) -> tuple[Table, Table]:
    """The ``outbox_events`` (one row per event) and ``inbox_events`` tables of a service."""
    outbox = Table(
        "outbox_events",
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("event_type", String(64), nullable=False),
        Column("payload", LargeBinary(length=16 * 1024 * 1024), nullable=False),
        Column("create_time", UTCDateTime(), nullable=False),
        Column("attempts", Integer, nullable=False, default=0),
        Column("next_attempt_time", UTCDateTime(), nullable=False),
        Column("lease_until", UTCDateTime(), nullable=True),
        Column("lease_owner", String(36), nullable=True),
        Column("published_time", UTCDateTime(), nullable=True),
        Column("last_error", String(255), nullable=True),
        Index("ix_outbox_events_due", "published_time", "next_attempt_time"),
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


# --- producer ----------------------------------------------------------------------------------


class Outbox:
    """Writes the events of one producing service in the caller's transaction."""

    def __init__(self, table: Table, source: str):
        self.table = table
        self.source = source

    def envelope(self, event_type: str, data: Message, subject: str = "") -> events_pb2.Event:
        event = events_pb2.Event(id=str(uuid.uuid4()), type=event_type, source=self.source, subject=subject)
        event.time.GetCurrentTime()
        event.data.Pack(data)
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        event.trace_context.update(carrier)
        return event

    async def add(self, session: AsyncSession, event_type: str, data: Message, subject: str = "") -> str:
        """Record an event in the caller's transaction; returns its id."""
        return (await self.add_many(session, [(event_type, data, subject)]))[0]

    async def add_many(self, session: AsyncSession, items: list[tuple[str, Message, str]]) -> list[str]:
        """Record several events ``(type, payload, subject)`` in one statement; returns their ids."""
        now = utcnow()
        rows = []
        for event_type, data, subject in items:
            event = self.envelope(event_type, data, subject)
            rows.append({"event_id": event.id, "event_type": event_type, "payload": event.SerializeToString(),
                         "create_time": now, "attempts": 0, "next_attempt_time": now})
        if rows:
            await session.execute(insert(self.table), rows)
        return [r["event_id"] for r in rows]


def backoff(attempts: int, base: float = 0.5, cap: float = 300.0) -> float:
    """Seconds before retry number ``attempts`` (full jitter, capped)."""
    return random.uniform(base / 2, min(cap, base * 2 ** min(attempts, 20)))


@dataclass
class StreamSettings:
    """How the platform configures a producer's stream."""

    max_age_days: float = 30.0  # 0: keep for ever
    duplicate_window_seconds: float = 1800.0
    replicas: int = 1
    namespace: str = "mall"  # prefix of every stream and subject (one system on a shared NATS)


class EventBus:
    """One NATS connection of a process, (re)connected in the background.

    ``servers`` is a comma-separated list of ``nats://`` URLs. The connection
    reconnects by itself after a server restart; :meth:`wait_connected` blocks
    users until the first connection succeeded.
    """

    def __init__(self, servers: str, name: str, streams: StreamSettings | None = None):
        self.servers = [s.strip() for s in servers.split(",") if s.strip()]
        self.name = name
        self.streams = streams or StreamSettings()
        self.nc: nats.NATS | None = None
        self.js: Any = None
        self._connected = asyncio.Event()
        self._lock = asyncio.Lock()
        self._ensured: set[str] = set()
        self._watchers: list[tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]] = []

    def watch(self, down: Callable[[], Awaitable[None]], up: Callable[[], Awaitable[None]]) -> None:
        """Call ``down()`` when the connection drops and ``up()`` once it is back (subscriptions
        re-sent), e.g. a cache that must not serve while it can miss invalidations."""
        self._watchers.append((down, up))

    async def wait_connected(self, stop: asyncio.Event | None = None) -> bool:
        """Connect (retrying with backoff) until connected or ``stop`` is set."""
        attempt = 0
        while not self._connected.is_set():
            if stop is not None and stop.is_set():
                return False
            async with self._lock:
                if self._connected.is_set():
                    break
                try:
                    self.nc = await nats.connect(
                        self.servers, name=self.name, connect_timeout=2, reconnect_time_wait=0.5,
                        max_reconnect_attempts=-1, allow_reconnect=True, error_cb=self._error,
                        disconnected_cb=self._disconnected, reconnected_cb=self._reconnected,
                    )
                    self.js = self.nc.jetstream(timeout=5)
                    self._connected.set()
                    break
                except Exception as exc:
                    attempt += 1
                    level = logging.WARNING if attempt in (1, 10) or attempt % 60 == 0 else logging.DEBUG
                    log.log(level, "NATS not reachable (%s), attempt %d", type(exc).__name__, attempt)
            try:
                if stop is not None:
                    await asyncio.wait_for(stop.wait(), min(5.0, 0.2 * 2 ** min(attempt, 5)))
                else:
                    await asyncio.sleep(min(5.0, 0.2 * 2 ** min(attempt, 5)))
            except TimeoutError:
                pass
        return True

    async def _error(self, exc: Exception) -> None:
        log.debug("NATS error: %s", type(exc).__name__)

    async def _disconnected(self) -> None:
        if self.nc is not None and not (self.nc.is_closed or self.nc.is_draining):
            log.warning("NATS disconnected; reconnecting")
        for down, _up in self._watchers:
            await down()

    async def _reconnected(self) -> None:
        log.info("NATS reconnected")
        for _down, up in self._watchers:
            await up()

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    @property
    def namespace(self) -> str:
        return self.streams.namespace

    @property
    def deadletter_stream(self) -> str:
        return f"{self.namespace.upper()}_DEADLETTER"

    def deadletter_subject(self, *parts: str) -> str:
        return ".".join([self.namespace, "deadletter", *parts])

    async def ensure_stream(self, source: str) -> str:
        """Create (or update) the stream of a producing service; returns its name."""
        name = stream_name(source, self.namespace)
        if name in self._ensured:
            return name
        cfg = api.StreamConfig(
            name=name, subjects=[f"{self.namespace}.{source}.>"], storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS, num_replicas=self.streams.replicas,
            max_age=self.streams.max_age_days * 86400 if self.streams.max_age_days else None,
            duplicate_window=self.streams.duplicate_window_seconds,
        )
        await self._add_or_update(cfg)
        self._ensured.add(name)
        return name

    async def ensure_deadletter_stream(self) -> str:
        name = self.deadletter_stream
        if name not in self._ensured:
            await self._add_or_update(api.StreamConfig(
                name=name, subjects=[self.deadletter_subject(">")], storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS, num_replicas=self.streams.replicas,
            ))
            self._ensured.add(name)
        return name

    async def _add_or_update(self, cfg: api.StreamConfig) -> None:
        try:
            await self.js.add_stream(cfg)
        except nats.js.errors.BadRequestError:
            await self.js.update_stream(cfg)  # exists with another configuration

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        self.nc = None
        self._connected.clear()
        self._ensured.clear()


class Relay:
    """Publishes a service's outbox to its stream, in batches; safe with several replicas."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], table: Table, source: str, bus: EventBus, *,
                 batch: int = 500, concurrency: int = 64, lease_seconds: float = 60.0, max_backoff: float = 300.0,
                 publish_timeout: float = 5.0):
        self.sessions = sessions
        self.table = table
        self.source = source
        self.bus = bus
        self.batch = batch
        self.concurrency = concurrency
        self.lease = timedelta(seconds=lease_seconds)
        self.max_backoff = max_backoff
        self.publish_timeout = publish_timeout
        self.owner = str(uuid.uuid4())
        self.published = 0  # counters for metrics and tests
        self.duplicates = 0

    async def _claim(self) -> list:
        """Lease up to ``batch`` due rows for this relay; returns them."""
        t = self.table
        now = utcnow()
        async with self.sessions() as s:
            ids = (await s.execute(
                select(t.c.id).where(t.c.published_time.is_(None), t.c.next_attempt_time <= now)
                .where((t.c.lease_until.is_(None)) | (t.c.lease_until < now))
                .order_by(t.c.id).limit(self.batch)
            )).scalars().all()
            await s.rollback()
        if not ids:
            return []

        async def lease(s: AsyncSession):
            await s.execute(
                update(t).where(t.c.id.in_(ids), t.c.published_time.is_(None))
                .where((t.c.lease_until.is_(None)) | (t.c.lease_until < now))
                .values(lease_until=now + self.lease, lease_owner=self.owner)
            )
            return (await s.execute(
                select(t.c.id, t.c.event_id, t.c.event_type, t.c.payload, t.c.attempts)
                .where(t.c.id.in_(ids), t.c.lease_owner == self.owner, t.c.published_time.is_(None))
                .order_by(t.c.id)
            )).all()

        return await run_transaction(self.sessions, lease)

    async def run_once(self) -> int:
        """Publish what is due now; returns the number of events the server acknowledged."""
        n, marking = await self._pass()
        if marking is not None:
            await marking
        return n

    async def _pass(self) -> tuple[int, Coroutine[Any, Any, None] | None]:
        """Claim and publish one batch; returns the number acknowledged and the marking of the
        rows still to run (:meth:`run` overlaps it with the next pass: the rows stay leased)."""
        if not self.bus.connected:
            return 0, None
        await self.bus.ensure_stream(self.source)
        rows = await self._claim()
        if not rows:
            return 0, None
        gate = asyncio.Semaphore(self.concurrency)

        async def publish(row) -> Exception | None:
            async with gate:
                return await self._publish(row)

        results = await asyncio.gather(*(publish(r) for r in rows))
        return sum(err is None for err in results), self._mark(rows, results)

    async def _mark(self, rows, results: list[Exception | None]) -> None:
        ok = [r.id for r, err in zip(rows, results, strict=True) if err is None]
        failed = [(r, err) for r, err in zip(rows, results, strict=True) if err is not None]
        t = self.table

        async def mark(s: AsyncSession) -> None:
            now = utcnow()
            if ok:
                await s.execute(update(t).where(t.c.id.in_(ok)).values(
                    published_time=now, lease_until=None, lease_owner=None, attempts=t.c.attempts + 1, last_error=None))
            for r, err in failed:
                await s.execute(update(t).where(t.c.id == r.id).values(
                    attempts=t.c.attempts + 1, lease_until=None, lease_owner=None,
                    next_attempt_time=now + timedelta(seconds=backoff(r.attempts, cap=self.max_backoff)),
                    last_error=type(err).__name__[:255]))

        await run_transaction(self.sessions, mark)
        if failed:
            log.warning("%d of %d events not published (%s); retried with backoff", len(failed), len(rows),
                        type(failed[0][1]).__name__, extra={"event_id": failed[0][0].event_id})
        self.published += len(ok)

    async def _publish(self, row) -> Exception | None:
        event = events_pb2.Event.FromString(row.payload)
        subject = subject_of(self.source, event.type, self.bus.namespace)
        headers = {"Nats-Msg-Id": event.id, "Mall-Event-Type": event.type}
        carrier = dict(event.trace_context)
        if _trace_parent(carrier) is not None:  # not recorded: forward the producer's context as it is
            headers.update(carrier)
            return await self._send(subject, row.payload, headers)
        with tracer.start_as_current_span(f"publish {event.type}", context=propagate.extract(carrier),
                                          kind=trace.SpanKind.PRODUCER) as span:
            span.set_attribute("messaging.system", "nats")
            span.set_attribute("messaging.message.id", event.id)
            span.set_attribute("messaging.destination.name", subject)
            propagate.inject(headers)
            error = await self._send(subject, row.payload, headers)
            if error is not None:
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
            return error

    async def _send(self, subject: str, payload: bytes, headers: dict[str, str]) -> Exception | None:
        try:
            ack = await self.bus.js.publish(subject, payload, timeout=self.publish_timeout,
                                            stream=stream_name(self.source, self.bus.namespace), headers=headers)
        except Exception as exc:  # not acknowledged: the row stays due
            return exc
        if ack.duplicate:
            self.duplicates += 1
        return None

    async def pending(self) -> int:
        """Rows not yet published (for metrics and tests)."""
        from sqlalchemy import func

        t = self.table
        async with self.sessions() as s:
            return (await s.execute(select(func.count()).where(t.c.published_time.is_(None)))).scalar_one()

    async def run(self, stop: asyncio.Event, poll_seconds: float = 0.2) -> None:
        """Publish until ``stop`` is set; a full batch is followed at once by the next, whose claim
        and publishing overlap the marking of the one before (one commit less on the path of each
        batch; a marking that fails leaves its rows leased, republished after the lease and
        dropped as duplicates by the server)."""
        if not await self.bus.wait_connected(stop):
            return
        marking: asyncio.Task | None = None
        try:
            while not stop.is_set():
                try:
                    n, mark = await self._pass()
                    if marking is not None:
                        previous, marking = marking, None
                        await previous
                    if mark is not None:
                        marking = asyncio.create_task(mark)
                except Exception:
                    log.exception("outbox relay pass failed")
                    n = 0
                if n < self.batch:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), poll_seconds)
        finally:
            if marking is not None:
                try:
                    await marking
                except Exception:
                    log.exception("outbox relay marking failed")


# --- consumer ----------------------------------------------------------------------------------


@dataclass
class Subscription:
    """What one durable consumer of a service handles: event type -> (payload type, handler)."""

    purpose: str
    handlers: Mapping[str, tuple[type[Message], Handler]]
    deliver_all: bool = True  # a new consumer starts from the beginning of the streams
    by_source: dict[str, list[str]] = field(init=False)

    def __post_init__(self) -> None:
        self.by_source = {}
        for event_type, (payload_type, _) in self.handlers.items():
            self.by_source.setdefault(source_of(payload_type), []).append(event_type)


class Consumer:
    """Applies the events of one :class:`Subscription` once each, from every stream it reads."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], inbox: Table, service: str,
                 subscription: Subscription, bus: EventBus, *, max_deliveries: int = 5, ack_wait: float = 30.0,
                 batch: int = 100, concurrency: int = 8, max_backoff: float = 300.0, together: bool = True):
        self.sessions = sessions
        self.inbox = inbox
        self.together = together  # a fetched batch in one transaction (else one transaction per event)
        self.service = service
        self.sub = subscription
        self.bus = bus
        self.durable = f"{service}-{subscription.purpose}"
        self.max_deliveries = max_deliveries
        self.ack_wait = ack_wait
        self.batch = batch
        self.concurrency = concurrency
        self.max_backoff = max_backoff
        self.applied = 0  # counters for metrics and tests
        self.duplicates = 0
        self.dead_lettered = 0

    def config(self, source: str) -> api.ConsumerConfig:
        subjects = sorted(subject_of(source, t, self.bus.namespace) for t in self.sub.by_source[source])
        return api.ConsumerConfig(
            durable_name=self.durable, ack_policy=api.AckPolicy.EXPLICIT, ack_wait=self.ack_wait,
            deliver_policy=api.DeliverPolicy.ALL if self.sub.deliver_all else api.DeliverPolicy.NEW,
            max_deliver=-1,  # the consumer dead-letters itself at max_deliveries: the server never drops
            max_ack_pending=max(1000, self.batch * 4), filter_subjects=subjects,
        )

    async def run(self, stop: asyncio.Event) -> None:
        if not await self.bus.wait_connected(stop):
            return
        await asyncio.gather(*(self._run_stream(source, stop) for source in self.sub.by_source))

    async def _run_stream(self, source: str, stop: asyncio.Event) -> None:
        psub = None
        failures = 0
        while not stop.is_set():
            try:
                if psub is None:
                    stream = await self.bus.ensure_stream(source)
                    await self.bus.ensure_deadletter_stream()
                    await self.bus.js.add_consumer(stream, self.config(source))
                    psub = await self.bus.js.pull_subscribe_bind(self.durable, stream)
                try:
                    msgs = await psub.fetch(self.batch, timeout=1.0)
                except TimeoutError:  # nats.errors.TimeoutError or asyncio's: nothing to fetch
                    continue
                failures = 0
                await self.process_batch(msgs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                level = logging.WARNING if failures in (1, 10) or failures % 100 == 0 else logging.DEBUG
                log.log(level, "consumer %s on %s: %s; retrying", self.durable, source, type(exc).__name__)
                if not self.bus.connected or isinstance(exc, nats.js.errors.NotFoundError):
                    psub = None  # re-create the subscription after a restart of the server
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(5.0, 0.1 * 2 ** min(failures, 6)))
        if psub is not None:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    def _decode(self, msg):
        """(event, payload, handler) of a message; raises PoisonEvent or DecodeError."""
        event = events_pb2.Event.FromString(msg.data)
        entry = self.sub.handlers.get(event.type)
        if entry is None:
            raise PoisonEvent(f"no handler for event type {event.type!r}")
        payload_type, handler = entry
        payload = payload_type()
        if not event.data.Unpack(payload):
            raise PoisonEvent(f"payload is not {payload_type.DESCRIPTOR.full_name}")
        return event, payload, handler

    def _span(self, msg, event) -> trace.Span:
        """The consumer span of one event, child of the producer's context from the headers; only
        where it can be recorded (see :func:`_trace_parent`)."""
        parent = _trace_parent(dict(msg.headers or {}))
        if parent is not None:
            return parent
        span = tracer.start_span(f"consume {event.type}", context=propagate.extract(dict(msg.headers or {})),
                                 kind=trace.SpanKind.CONSUMER)
        span.set_attribute("messaging.system", "nats")
        span.set_attribute("messaging.message.id", event.id)
        span.set_attribute("messaging.consumer.group.name", self.durable)
        return span

    async def process(self, msg) -> None:
        """Apply one message; ack, nak with backoff, or dead-letter it."""
        await self.process_batch([msg])

    async def process_batch(self, msgs: list) -> None:
        """Apply fetched messages: together in one transaction, or one by one when that fails;
        then ack, nak with backoff or dead-letter each."""
        items = []
        for msg in msgs:
            try:
                items.append((msg, *self._decode(msg)))
            except (DecodeError, PoisonEvent) as exc:  # can never succeed: dead-letter at once
                await self._dead_letter(msg, str(exc) if isinstance(exc, PoisonEvent) else "undecodable event",
                                        msg.metadata.num_delivered)
        if not items:
            return
        outcomes = await self._apply_together(items) if self.together and len(items) > 1 else None
        if outcomes is None:
            gate = asyncio.Semaphore(self.concurrency)

            async def one(item):
                async with gate:
                    return await self._apply_one(item)

            outcomes = await asyncio.gather(*(one(item) for item in items))
        for (msg, event, _, _), outcome in zip(items, outcomes, strict=True):
            await self._settle(msg, event, outcome)

    async def _apply_one(self, item) -> bool | Exception:
        msg, event, payload, handler = item
        span = self._span(msg, event)
        try:
            with trace.use_span(span, end_on_exit=False):
                return await apply_event(self.sessions, self.inbox, event, payload, handler)
        except Exception as exc:
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
            return exc
        finally:
            span.end()

    async def _apply_together(self, items) -> list[bool | Exception] | None:
        """The batch in one transaction: events already in the inbox are skipped, the others'
        inbox rows go in with one statement and their handlers run in order. None when anything
        fails: the transaction rolls back whole and the caller applies the events one by one."""
        spans = [self._span(msg, event) for msg, event, _, _ in items]
        outcomes: list[bool | Exception] = []

        async def apply(s: AsyncSession) -> None:
            ids = [event.id for _, event, _, _ in items]
            seen = set((await s.execute(select(self.inbox.c.event_id).where(self.inbox.c.event_id.in_(ids))))
                       .scalars().all())
            fresh: dict[str, tuple] = {}
            for item in items:
                if item[1].id not in seen:
                    fresh.setdefault(item[1].id, item)  # the same event twice in one fetch: once
            if fresh:
                now = utcnow()
                await s.execute(insert(self.inbox), [
                    {"event_id": e.id, "event_type": e.type, "source": e.source, "receive_time": now}
                    for _, e, _, _ in fresh.values()])
            for (msg, event, payload, handler), span in zip(items, spans, strict=True):
                if fresh.get(event.id) is not None and fresh[event.id][0] is msg:
                    with trace.use_span(span, end_on_exit=False):
                        await handler(s, event, payload)
            await flush_deferred(s)
            outcomes[:] = [not (fresh.get(e.id) is not None and fresh[e.id][0] is m) for m, e, _, _ in items]

        try:
            await run_transaction(self.sessions, apply)
        except Exception as exc:
            log.debug("batch of %d events not applied together (%s): one by one", len(items), type(exc).__name__)
            return None
        finally:
            for span in spans:
                span.end()
        return outcomes

    async def _settle(self, msg, event, outcome: bool | Exception) -> None:
        deliveries = msg.metadata.num_delivered
        if isinstance(outcome, Exception):
            reason = failure_reason(outcome)
            if deliveries >= self.max_deliveries:
                log.error("event %s failed %d times: dead-lettered (%s)", event.type, deliveries, reason,
                          extra={"event_id": event.id})
                await self._dead_letter(msg, reason, deliveries)
            else:
                level = logging.WARNING if deliveries == 1 else logging.INFO
                log.log(level, "event %s failed (delivery %d of %d): %s; redelivered with backoff",
                        event.type, deliveries, self.max_deliveries, reason, extra={"event_id": event.id})
                await msg.nak(delay=backoff(deliveries, cap=self.max_backoff))
            return
        if outcome:
            self.duplicates += 1
        else:
            self.applied += 1
        await msg.ack()

    async def _dead_letter(self, msg, reason: str, deliveries: int) -> None:
        headers = {
            "Mall-Consumer": self.durable, "Mall-Service": self.service, "Mall-Reason": reason.replace("\n", " "),
            "Mall-Deliveries": str(deliveries), "Mall-Subject": msg.subject,
            "Mall-Stream": msg.metadata.stream, "Mall-Stream-Seq": str(msg.metadata.sequence.stream),
            "Nats-Msg-Id": f"{self.durable}:{msg.metadata.stream}:{msg.metadata.sequence.stream}",
        }
        try:
            stream = await self.bus.ensure_deadletter_stream()
            await self.bus.js.publish(self.bus.deadletter_subject(self.service, self.sub.purpose), msg.data,
                                      stream=stream, headers=headers)
        except Exception as exc:  # not dead-lettered: keep it in the stream, try again later
            log.warning("dead-lettering failed (%s); redelivered later", type(exc).__name__)
            await msg.nak(delay=backoff(deliveries, cap=self.max_backoff))
            return
        self.dead_lettered += 1
        await msg.term()


    async def deliver(self, event: events_pb2.Event) -> bool:
        """Apply one event through this consumer's inbox and handler, without the transport
        (tests, replays); True if it was a duplicate."""
        payload_type, handler = self.sub.handlers[event.type]
        payload = payload_type()
        if not event.data.Unpack(payload):
            raise PoisonEvent(f"payload is not {payload_type.DESCRIPTOR.full_name}")
        return await apply_event(self.sessions, self.inbox, event, payload, handler)


def failure_reason(exc: BaseException) -> str:
    """What an operator reads about a failure: the type, our reason code and message; for other
    errors only the first line (a driver's message goes on with SQL and its parameters)."""
    code = getattr(exc, "reason", "") or ""
    text = str(exc).split("\n", 1)[0]
    if "[SQL:" in text:
        text = text.split("[SQL:", 1)[0]
    return f"{type(exc).__name__}{f' {code}' if code else ''}: {text}".strip()[:500]


class PoisonEvent(Exception):
    """An event that no retry can apply (undecodable, unknown type, wrong payload)."""


async def apply_event(sessions: async_sessionmaker[AsyncSession], inbox: Table, event: events_pb2.Event,
                      payload: Message, handler: Handler) -> bool:
    """Apply ``event`` once: inbox row and handler in one transaction. True if it was a duplicate."""

    async def apply(s: AsyncSession) -> None:
        await s.execute(insert(inbox).values(event_id=event.id, event_type=event.type, source=event.source,
                                             receive_time=utcnow()))
        await handler(s, event, payload)
        await flush_deferred(s)

    try:
        await run_transaction(sessions, apply)
    except IntegrityError as exc:
        if not is_duplicate_key(exc):
            raise
        async with sessions() as s:
            seen = await s.execute(select(inbox.c.event_id).where(inbox.c.event_id == event.id))
            if seen.first() is None:
                raise
        return True
    return False


# --- dead letters (operators) ------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    consumer: str
    service: str
    reason: str
    deliveries: int
    subject: str
    time: datetime | None
    event: events_pb2.Event | None


async def list_dead_letters(bus: EventBus, service: str | None = None, limit: int = 100) -> list[DeadLetter]:
    """Dead letters in the stream, oldest first (optionally of one consuming service)."""
    stream = await bus.ensure_deadletter_stream()
    info = await bus.js.stream_info(stream)
    out: list[DeadLetter] = []
    seq = info.state.first_seq
    subject = bus.deadletter_subject(service, ">") if service else bus.deadletter_subject(">")
    while len(out) < limit and seq <= info.state.last_seq:
        try:
            raw = await bus.js.get_msg(stream, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            break
        out.append(_dead_letter(raw))
        seq = raw.seq + 1
    return out


async def get_dead_letter(bus: EventBus, seq: int) -> DeadLetter:
    stream = await bus.ensure_deadletter_stream()
    return _dead_letter(await bus.js.get_msg(stream, seq=seq))


async def delete_dead_letter(bus: EventBus, seq: int) -> None:
    await bus.js.delete_msg(await bus.ensure_deadletter_stream(), seq)


def _dead_letter(raw) -> DeadLetter:
    h = raw.headers or {}
    try:
        event = events_pb2.Event.FromString(raw.data or b"")
    except DecodeError:
        event = None
    return DeadLetter(seq=raw.seq, consumer=h.get("Mall-Consumer", ""), service=h.get("Mall-Service", ""),
                      reason=h.get("Mall-Reason", ""), deliveries=int(h.get("Mall-Deliveries", "0") or 0),
                      subject=h.get("Mall-Subject", raw.subject or ""), time=getattr(raw, "time", None), event=event)


async def replay_dead_letter(bus: EventBus, seq: int, sessions, inbox: Table,
                             subscriptions: list[Subscription]) -> DeadLetter:
    """Apply a dead letter through the consumer's own path (inbox + handler), then delete it.

    Raises what the handler raises (the dead letter then stays)."""
    dl = await get_dead_letter(bus, seq)
    if dl.event is None:
        raise PoisonEvent("the dead letter is not an event: delete it instead")
    purpose = dl.consumer.split("-", 1)[1] if "-" in dl.consumer else ""
    for sub in subscriptions:
        if sub.purpose == purpose and dl.event.type in sub.handlers:
            payload_type, handler = sub.handlers[dl.event.type]
            payload = payload_type()
            if not dl.event.data.Unpack(payload):
                raise PoisonEvent(f"payload is not {payload_type.DESCRIPTOR.full_name}")
            await apply_event(sessions, inbox, dl.event, payload, handler)
            await delete_dead_letter(bus, seq)
            return dl
    raise PoisonEvent(f"no handler of {dl.consumer} for {dl.event.type}")
