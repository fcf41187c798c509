"""Events on NATS JetStream: outbox -> relay -> stream -> durable consumer -> inbox, exactly one effect.

These run the real server (``nats-server`` from the venv, a fresh one per test on a
free port) against the test database backend, with a small producer/consumer
schema standing in for a service.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from opentelemetry import trace
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, update

from mall.orders.v1 import orders_events_pb2 as opb
from mallkit import events
from mallkit.db import create_engine, run_transaction, session_factory
from mallkit.testing import NatsServer, empty_database
from tests.fixtures import until

METADATA = MetaData()
OUTBOX, INBOX = events.define_tables(METADATA)
EFFECTS = Table("effects", METADATA, Column("id", Integer, primary_key=True, autoincrement=True),
                Column("order_name", String(64), nullable=False))


@pytest.fixture
async def nats_server(tmp_path):
    server = NatsServer(tmp_path / "nats")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def db(backend, tmp_path):
    async with empty_database("events", backend, tmp_path) as url:
        engine = create_engine(url, pool_size=10)
        async with engine.begin() as conn:
            await conn.run_sync(METADATA.create_all)
        yield session_factory(engine)
        await engine.dispose()


async def record(s, event, p: opb.OrderPaidEvent) -> None:
    await s.execute(insert(EFFECTS).values(order_name=p.order))


class Pipeline:
    """A producer (outbox + relay) and a consumer of order.paid over one NATS server."""

    def __init__(self, sessions, url: str, handler=record, **consumer_kw):
        self.sessions = sessions
        self.outbox = events.Outbox(OUTBOX, "orders")
        self.pub_bus = events.EventBus(url, "test-producer")
        self.sub_bus = events.EventBus(url, "test-consumer")
        self.relay = events.Relay(sessions, OUTBOX, "orders", self.pub_bus, batch=100)
        self.sub = events.Subscription("apply", {"order.paid": (opb.OrderPaidEvent, handler)})
        self.consumer = events.Consumer(sessions, INBOX, "points", self.sub, self.sub_bus, **consumer_kw)
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    async def emit(self, n: int, prefix: str = "orders/") -> list[str]:
        names = [f"{prefix}{uuid.uuid4().hex[:10]}" for _ in range(n)]
        for i in range(0, n, 500):
            chunk = names[i:i + 500]

            async def tx(s, chunk=chunk):
                for name in chunk:
                    await self.outbox.add(s, "order.paid", opb.OrderPaidEvent(order=name, member="members/1"))

            await run_transaction(self.sessions, tx)
        return names

    def start(self, relay: bool = True, consumer: bool = True) -> None:
        if relay:
            self.tasks.append(asyncio.create_task(self.relay.run(self.stop, 0.05)))
        if consumer:
            self.tasks.append(asyncio.create_task(self.consumer.run(self.stop)))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)
        await self.pub_bus.close()
        await self.sub_bus.close()


async def effects(sessions) -> dict[str, int]:
    async with sessions() as s:
        rows = (await s.execute(select(EFFECTS.c.order_name, func.count()).group_by(EFFECTS.c.order_name))).all()
    return {name: n for name, n in rows}


async def test_each_event_is_applied_once_and_published_only_after_the_ack(db, nats_server):
    p = Pipeline(db, nats_server.url)
    names = await p.emit(300)
    p.start()
    try:
        # Bound scales with the work: 300 events, generously 0.2 s each on a loaded machine.
        got = await until(lambda: _all(db, names), 30 + 0.2 * len(names), "300 effects")
        assert set(got) == set(names) and set(got.values()) == {1}
        assert await p.relay.pending() == 0
        info = await p.pub_bus.js.stream_info("MALL_ORDERS")
        assert info.state.messages == 300  # one message per event, not per subscriber
    finally:
        await p.close()


async def _all(sessions, names):
    got = await effects(sessions)
    return got if len(got) >= len(names) else None


async def test_a_republished_event_is_dropped_by_the_server_and_the_inbox(db, nats_server):
    p = Pipeline(db, nats_server.url)
    names = await p.emit(20)
    p.start(consumer=False)
    await until(lambda: _none_pending(p), 60, "relay to publish")
    # A crash between the server's ack and marking the rows: they are published again.
    async with db() as s, s.begin():
        await s.execute(update(OUTBOX).values(published_time=None))
    await until(lambda: _none_pending(p), 60, "relay to republish")
    assert p.relay.duplicates == 20
    info = await p.pub_bus.js.stream_info("MALL_ORDERS")
    assert info.state.messages == 20
    p.start(relay=False)
    try:
        got = await until(lambda: _all(db, names), 60, "20 effects")
        assert set(got.values()) == {1}
    finally:
        await p.close()


async def _none_pending(p):
    return await p.relay.pending() == 0


async def test_a_consumer_killed_between_commit_and_ack_applies_once(db, nats_server):
    p = Pipeline(db, nats_server.url, ack_wait=1.0)
    names = await p.emit(30)
    unacked = {"n": 0}
    real_process = p.consumer.process_batch

    async def process_without_ack(msgs):
        # Apply (commit) but "die" before the ack: the server redelivers after ack_wait.
        async def no_ack():
            unacked["n"] += 1
        for msg in msgs:
            msg.ack = no_ack
        await real_process(msgs)

    p.consumer.process_batch = process_without_ack
    p.start()
    try:
        await until(lambda: _all(db, names), 60 + len(names), "30 effects")
        await until(_true_when(lambda: unacked["n"] >= 30), 60, "first pass")
        p.consumer.process_batch = real_process  # the process restarts
        await until(_true_when(lambda: p.consumer.duplicates >= 30), 120, "redeliveries")
        got = await effects(db)
        assert set(got) == set(names) and set(got.values()) == {1}
    finally:
        await p.close()


def _true_when(fn):
    async def check():
        return fn()
    return check


async def test_a_poison_event_is_dead_lettered_with_its_reason_and_can_be_replayed(db, nats_server):
    broken = {"on": True}

    async def handler(s, event, payload):
        if broken["on"] and payload.order.endswith("poison"):
            raise ValueError("cannot apply this one")
        await record(s, event, payload)

    p = Pipeline(db, nats_server.url, handler=handler, max_deliveries=3, max_backoff=0.2)
    good = await p.emit(5)

    async def tx(s):
        await p.outbox.add(s, "order.paid", opb.OrderPaidEvent(order="orders/poison", member="members/1"))

    await run_transaction(db, tx)
    p.start()
    try:
        await until(lambda: _all(db, good), 60, "the good effects")
        dead = await until(lambda: events.list_dead_letters(p.sub_bus, "points"), 60, "a dead letter")
        assert len(dead) == 1
        assert dead[0].consumer == "points-apply" and dead[0].deliveries == 3
        assert "cannot apply this one" in dead[0].reason
        assert dead[0].event is not None and dead[0].event.type == "order.paid"
        assert "orders/poison" not in await effects(db)
        # The operator fixes the cause and replays it: applied once, and gone from the list.
        broken["on"] = False
        await events.replay_dead_letter(p.sub_bus, dead[0].seq, db, INBOX, [p.sub])
        assert (await effects(db))["orders/poison"] == 1
        assert await events.list_dead_letters(p.sub_bus, "points") == []
    finally:
        await p.close()


async def test_nats_restart_in_the_middle_of_a_burst_loses_nothing_and_doubles_nothing(db, nats_server):
    p = Pipeline(db, nats_server.url)
    p.start()
    try:
        names = await p.emit(500)
        await until(_true_when(lambda: p.consumer.applied > 50), 120, "the burst to start")
        await nats_server.restart()
        names += await p.emit(500)
        got = await until(lambda: _all(db, names), 120 + 0.2 * len(names), "1000 effects")
        assert set(got) == set(names) and set(got.values()) == {1}
    finally:
        await p.close()


async def test_the_consumer_work_joins_the_producer_trace(db, nats_server, spans):
    p = Pipeline(db, nats_server.url)
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as root:
        names = await p.emit(1)
    p.start()
    try:
        await until(lambda: _all(db, names), 60, "the effect")
        await until(_true_when(lambda: any(s.name == "consume order.paid" for s in spans.get_finished_spans())),
                    30, "the consumer span")
        trace_id = root.get_span_context().trace_id
        by_name = {s.name: s for s in spans.get_finished_spans() if s.context.trace_id == trace_id}
        assert "publish order.paid" in by_name and "consume order.paid" in by_name
        assert by_name["consume order.paid"].parent.span_id == by_name["publish order.paid"].context.span_id
    finally:
        await p.close()


async def test_an_unsampled_trace_gets_no_event_spans_and_its_effect_still_happens(db, nats_server, spans,
                                                                                   monkeypatch):
    """A producer whose trace was not sampled: the relay and the consumer create no span for its event
    (nothing would record it: a span per event was a third of the consumer's CPU) and the SQL of the
    handler stays out of the trace too."""
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    started: list[str] = []

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def start_span(self, name, *a, **kw):
            started.append(name)
            return self.inner.start_span(name, *a, **kw)

        def start_as_current_span(self, name, *a, **kw):
            started.append(name)
            return self.inner.start_as_current_span(name, *a, **kw)

    monkeypatch.setattr(events, "tracer", Counting(events.tracer))

    unsampled = SpanContext(trace_id=0x1234ABCD << 64 | 0x77, span_id=0x42, is_remote=False,
                            trace_flags=TraceFlags(TraceFlags.DEFAULT))
    p = Pipeline(db, nats_server.url)
    with trace.use_span(NonRecordingSpan(unsampled)):
        names = await p.emit(1)
    with trace.get_tracer("test").start_as_current_span("sampled request") as root:
        sampled = await p.emit(1)
    p.start()
    try:
        await until(lambda: _all(db, names + sampled), 60, "both effects")
        await until(_true_when(lambda: any(s.name == "consume order.paid" for s in spans.get_finished_spans())),
                    30, "the sampled event's consumer span")
        by_trace = {s.context.trace_id for s in spans.get_finished_spans()}
        assert root.get_span_context().trace_id in by_trace
        assert unsampled.trace_id not in by_trace
        assert sorted(started) == ["consume order.paid", "publish order.paid"]  # the sampled event's only
    finally:
        await p.close()


async def test_deferred_effects_go_in_one_insert_per_batch_and_a_failed_batch_leaves_none_behind(db, nats_server):
    """Handlers that defer their rows (``events.defer_insert``): a fetched batch writes its effects in
    one multi-row INSERT; when one event of a batch fails, the batch rolls back with its deferred rows
    and the events are applied one by one; every effect exists exactly once in the end."""
    from sqlalchemy import event as sa_event

    failed_once: set[str] = set()
    doomed: list[str] = []

    async def deferred(s, event, p: opb.OrderPaidEvent) -> None:
        events.defer_insert(s, EFFECTS, {"order_name": p.order})
        if p.order in doomed and p.order not in failed_once:
            failed_once.add(p.order)
            raise RuntimeError("transient failure of one event")

    inserts: list[int] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT") and "effects" in statement:
            inserts.append(len(parameters) if executemany else 1)

    engine = db.kw["bind"].sync_engine
    sa_event.listen(engine, "before_cursor_execute", seen)
    p = Pipeline(db, nats_server.url, handler=deferred, max_backoff=0.5)
    names = await p.emit(400)
    doomed.append(names[150])
    p.start()
    try:
        got = await until(lambda: _all(db, names), 30 + 0.2 * len(names), "400 effects")
        assert set(got) == set(names) and set(got.values()) == {1}
        assert failed_once == {names[150]}
        assert len(inserts) < len(names) / 2  # batches, not one statement per event
    finally:
        sa_event.remove(engine, "before_cursor_execute", seen)
        await p.close()
