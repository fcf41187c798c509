"""The batch writer: batches, backpressure instead of drops, a bad row failing alone, retries of
transient failures, and everything queued written on close."""

from __future__ import annotations

import asyncio

import pytest

from mallkit.batching import BatchWriter, WriterClosed


class Deadlock(Exception):
    """Shaped like a driver error MySQL raises for a deadlock (``orig.args[0] == 1213``)."""

    def __init__(self):
        super().__init__("deadlock")
        self.orig = Exception(1213, "Deadlock found")


class Store:
    def __init__(self):
        self.rows: list = []
        self.batches: list[list] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next: list[Exception] = []

    async def write(self, rows: list) -> None:
        await self.gate.wait()
        if self.fail_next:
            raise self.fail_next.pop(0)
        if any(r == "bad" for r in rows):
            raise ValueError("cannot store 'bad'")
        self.batches.append(list(rows))
        self.rows.extend(rows)


async def test_rows_arriving_together_share_a_batch_and_each_is_written_once():
    store = Store()
    writer = BatchWriter("t", store.write, max_rows=50, max_delay=0.01)
    await asyncio.gather(*(writer.write(i) for i in range(120)))
    assert sorted(store.rows) == list(range(120))
    assert len(store.batches) < 120 and max(len(b) for b in store.batches) <= 50
    await writer.close()


async def test_a_full_queue_makes_callers_wait_and_drops_nothing():
    store = Store()
    store.gate.clear()  # the database is slow: nothing commits for now
    writer = BatchWriter("t", store.write, max_rows=2, max_delay=0, max_queue=4)
    submitters = [asyncio.create_task(writer.submit(i)) for i in range(10)]
    for _ in range(100):
        await asyncio.sleep(0)
    waiting = sum(not t.done() for t in submitters)
    assert len(writer) <= 4 and waiting >= 4  # bounded memory: the rest wait to be accepted
    store.gate.set()
    futures = await asyncio.gather(*submitters)
    await asyncio.gather(*futures)
    assert sorted(store.rows) == list(range(10))
    await writer.close()


async def test_a_row_that_cannot_be_written_fails_alone():
    store = Store()
    writer = BatchWriter("t", store.write, max_rows=10, max_delay=0.01)
    results = await asyncio.gather(*(writer.write(r) for r in ["a", "bad", "c"]), return_exceptions=True)
    assert isinstance(results[1], ValueError) and results[0] is None and results[2] is None
    assert sorted(store.rows) == ["a", "c"] and writer.failed == 1
    await writer.close()


async def test_a_transient_failure_retries_the_batch():
    store = Store()
    store.fail_next = [Deadlock(), Deadlock()]
    writer = BatchWriter("t", store.write, max_rows=10, max_delay=0.01, retry_cap=0.05)
    await asyncio.gather(*(writer.write(i) for i in range(5)))
    assert sorted(store.rows) == list(range(5)) and not store.fail_next
    await writer.close()


async def test_close_writes_what_is_queued_and_refuses_more():
    store = Store()
    writer = BatchWriter("t", store.write, max_rows=1000, max_delay=60)  # would wait a minute to fill
    futures = [await writer.submit(i) for i in range(7)]
    assert store.rows == []
    await writer.close(within=5)
    assert sorted(store.rows) == list(range(7)) and all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(WriterClosed):
        await writer.submit(8)
