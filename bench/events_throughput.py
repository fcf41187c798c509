"""Events end to end: a burst of N events from commit to consumer effect, vs raw JetStream.

Both run in this process against a fresh ``nats-server -js`` on a free port:

* baseline: N messages published to a stream (64 awaiting their acks at once)
  and consumed by a durable pull consumer that acks each one;
* the platform, three times (the consumer applying one transaction per event; a
  fetched batch per transaction; a fetched batch whose handlers defer their effect rows
  into one multi-row INSERT, ``mallkit.events.defer_insert``): N events committed into an outbox table (transactions of 500
  rows, as fast as the database takes them), published by ``mallkit.events.Relay``
  and applied by ``mallkit.events.Consumer`` (inbox row + an effect row in one
  transaction per event, then the ack). The clock runs from the first commit to
  the last effect visible in the database.

MariaDB when ``MALL_TEST_MYSQL_URL`` (default root@127.0.0.1:3306) answers, else SQLite.
``python bench/events_throughput.py [N]`` (default 10000).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from mall.orders.v1 import orders_events_pb2 as opb
from mallkit import events
from mallkit.db import create_engine, run_transaction, session_factory
from mallkit.testing import MYSQL_ADMIN_URL, NatsServer, mysql_available

METADATA = MetaData()
OUTBOX, INBOX = events.define_tables(METADATA)
EFFECTS = Table("effects", METADATA, Column("id", Integer, primary_key=True, autoincrement=True),
                Column("order_name", String(64), nullable=False))


async def raw_jetstream(url: str, n: int) -> float:
    bus = events.EventBus(url, "bench-raw")
    await bus.wait_connected()
    js = bus.js
    await js.add_stream(name="RAW", subjects=["raw.>"])
    payload = events.Outbox(OUTBOX, "orders").envelope(
        "order.paid", opb.OrderPaidEvent(order="orders/1", member="members/1")).SerializeToString()
    gate = asyncio.Semaphore(64)
    got = asyncio.Event()
    count = 0
    start = time.perf_counter()

    async def publish(i: int) -> None:
        async with gate:
            await js.publish("raw.order.paid", payload, headers={"Nats-Msg-Id": f"m{i}"})

    async def consume() -> None:
        nonlocal count
        sub = await js.pull_subscribe("raw.>", durable="raw")
        while count < n:
            try:
                msgs = await sub.fetch(100, timeout=1)
            except Exception:
                continue
            for m in msgs:
                await m.ack()
                count += 1
        got.set()

    consumer = asyncio.create_task(consume())
    await asyncio.gather(*(publish(i) for i in range(n)))
    await got.wait()
    elapsed = time.perf_counter() - start
    await consumer
    await bus.close()
    return elapsed


async def platform(url: str, db_url: str, n: int, together: bool, deferred: bool = False) -> tuple[float, float, int]:
    engine = create_engine(db_url, pool_size=10, trace=False)
    async with engine.begin() as conn:
        await conn.run_sync(METADATA.drop_all)
        await conn.run_sync(METADATA.create_all)
    sessions = session_factory(engine)
    outbox = events.Outbox(OUTBOX, "orders")
    ns = f"bench{'t' if together else 'o'}{'d' if deferred else ''}"
    streams = events.StreamSettings(namespace=ns)
    pub_bus, sub_bus = events.EventBus(url, "bench-pub", streams), events.EventBus(url, "bench-sub", streams)

    async def record(s, event, p) -> None:
        if deferred:  # one multi-row INSERT for the batch's effects (mallkit.events.defer_insert)
            events.defer_insert(s, EFFECTS, {"order_name": p.order})
        else:
            await s.execute(insert(EFFECTS).values(order_name=p.order))

    relay = events.Relay(sessions, OUTBOX, "orders", pub_bus)
    consumer = events.Consumer(sessions, INBOX, "bench", events.Subscription(
        "apply", {"order.paid": (opb.OrderPaidEvent, record)}), sub_bus, together=together)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(relay.run(stop, 0.05)), asyncio.create_task(consumer.run(stop))]
    await pub_bus.wait_connected()
    await sub_bus.wait_connected()
    start, cpu0 = time.perf_counter(), time.process_time()
    for i in range(0, n, 500):
        async def tx(s, i=i):
            await outbox.add_many(s, [("order.paid", opb.OrderPaidEvent(order=f"orders/{k}", member="members/1"), "")
                                      for k in range(i, min(n, i + 500))])
        await run_transaction(sessions, tx)
    committed = time.perf_counter() - start
    published = None
    while True:
        async with sessions() as s:
            done = (await s.execute(select(func.count()).select_from(EFFECTS))).scalar_one()
        if published is None and relay.published >= n:
            published = time.perf_counter() - start
        if done >= n:
            break
        if time.perf_counter() - start > 900:
            raise SystemExit(f"only {done} of {n} effects after 900 s")
        await asyncio.sleep(0.05)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    async with sessions() as s:
        distinct = (await s.execute(select(func.count(func.distinct(EFFECTS.c.order_name))))).scalar_one()
    stop.set()
    await asyncio.gather(*tasks)
    await pub_bus.close()
    await sub_bus.close()
    await engine.dispose()
    print(f"    (relay: all {n} published after {published or elapsed:.1f} s; CPU of this process "
          f"{cpu * 1000 / n:.3f} ms per event: producer, relay and consumer)", flush=True)
    return elapsed, committed, distinct


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-events-") as d:
        server = NatsServer(Path(d) / "nats")
        await server.start()
        name = f"bench_events_{uuid.uuid4().hex[:8]}"
        mariadb = await mysql_available()
        if mariadb:
            admin = create_async_engine(MYSQL_ADMIN_URL)
            async with admin.begin() as conn:
                await conn.execute(text(f"CREATE DATABASE `{name}`"))
            db_url = str(make_url(MYSQL_ADMIN_URL).set(database=name))
        else:
            db_url = f"sqlite+aiosqlite:///{Path(d) / (name + '.db')}"
        try:
            print(f"events: a burst of {n} events, nats-server {server.url}, database "
                  f"{'MariaDB' if mariadb else 'SQLite'} (load generator, relay and consumer in one process)")
            raw = await raw_jetstream(server.url, n)
            print(f"  raw JetStream publish+consume (baseline)        {n / raw:>8.0f} msgs/s   ({raw:.1f} s)", flush=True)
            for together, deferred, label in ((False, False, "one transaction per event"),
                                              (True, False, "a fetched batch per transaction"),
                                              (True, True, "a batch, effects in one INSERT")):
                elapsed, committed, distinct = await platform(server.url, db_url, n, together, deferred)
                print(f"  commit -> relay -> effect, {label:<33} {n / elapsed:>6.0f} events/s ({elapsed:.1f} s; "
                      f"commits {committed:.1f} s; exactly once: {distinct == n}); x{raw / elapsed:.2f} of raw",
                      flush=True)
        finally:
            await server.stop()
            if mariadb:
                async with admin.begin() as conn:
                    await conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
                await admin.dispose()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000))
