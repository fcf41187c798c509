"""An in-process batch writer: many small appends (content views, behaviour events) become one
transaction and one multi-row statement per batch instead of one transaction each.

``submit(row)`` puts a row on a bounded queue (a full queue makes the caller wait:
backpressure, never a drop) and returns a future that resolves once the batch holding the
row committed. A single writer task takes up to ``max_rows`` rows at a time, waiting at
most ``max_delay`` seconds for a batch to fill (rows that arrive while a batch is being
written form the next one: group commit), and hands them to ``write(rows)``, which runs
one transaction. Dedupe belongs to ``write`` (a unique key and INSERT IGNORE), so a batch
written twice after an ambiguous failure is harmless.

Failures: a transient one (deadlock, the database unreachable) retries the batch with
backoff until it commits or the writer closes; any other error splits the batch and
writes the rows one by one, so only the row that cannot be written fails its future.
``close()`` stops accepting rows and writes everything queued before it returns: the
platform calls it on shutdown after the server stopped taking calls
(:meth:`mallkit.platform.Platform.drain`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from mallkit.db import is_transient, is_unavailable

log = logging.getLogger("mallkit.batching")

T = TypeVar("T")


class WriterClosed(RuntimeError):
    """The writer is closing (the service shuts down): the row was not accepted."""


class BatchWriter(Generic[T]):
    def __init__(self, name: str, write: Callable[[list[T]], Awaitable[Any]], *, max_rows: int = 500,
                 max_delay: float = 0.005, max_queue: int = 10_000, retry_cap: float = 2.0):
        if max_rows < 1 or max_queue < max_rows:
            raise ValueError("need 1 <= max_rows <= max_queue")
        self.name = name
        self._write = write
        self.max_rows = max_rows
        self.max_delay = max_delay
        self.max_queue = max_queue
        self.retry_cap = retry_cap
        self._items: deque[tuple[T, asyncio.Future]] = deque()
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self.written = 0  # counters for metrics, tests and benchmarks
        self.batches = 0
        self.failed = 0

    def __len__(self) -> int:
        return len(self._items)

    async def submit(self, item: T) -> asyncio.Future:
        """Queue ``item`` (waiting while the queue is full); the future resolves when it committed."""
        while len(self._items) >= self.max_queue and not self._closing:
            self._space.clear()
            await self._space.wait()
        if self._closing:
            raise WriterClosed(f"{self.name} writer is closing")
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)  # a caller that does not wait must not leave it unretrieved
        self._items.append((item, fut))
        if len(self._items) == 1 or len(self._items) >= self.max_rows:
            self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"batch-writer-{self.name}")
        return fut

    async def write(self, item: T) -> None:
        """Queue ``item`` and wait until it committed."""
        await asyncio.shield(await self.submit(item))

    async def close(self, within: float | None = None) -> None:
        """Accept nothing more and write what is queued (within ``within`` seconds, else log what is left)."""
        self._closing = True
        self._wake.set()
        self._space.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), within)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            left = len(self._items)
            log.error("%s writer closed with %d rows not written", self.name, left)
            for _, fut in self._items:
                if not fut.done():
                    fut.set_exception(WriterClosed(f"{self.name} writer closed before the row was written"))
            self._items.clear()

    async def _run(self) -> None:
        while True:
            if not self._items:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._items) < self.max_rows and not self._closing and self.max_delay > 0:
                self._wake.clear()  # woken early when the batch fills or the writer closes
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.max_delay)
            batch = [self._items.popleft() for _ in range(min(self.max_rows, len(self._items)))]
            self._space.set()
            await self._flush(batch)

    async def _flush(self, batch: list[tuple[T, asyncio.Future]]) -> None:
        attempt = 0
        while True:
            try:
                await self._write([item for item, _ in batch])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_transient(exc) or is_unavailable(exc) or _aborted(exc):
                    attempt += 1
                    level = logging.WARNING if attempt in (1, 10) or attempt % 100 == 0 else logging.DEBUG
                    log.log(level, "%s batch of %d not written (%s), retrying", self.name, len(batch),
                            type(exc).__name__)
                    await asyncio.sleep(random.uniform(0.01, min(self.retry_cap, 0.05 * 2 ** min(attempt, 8))))
                    continue
                if len(batch) > 1:  # isolate the row that cannot be written
                    for one in batch:
                        await self._flush([one])
                    return
                self.failed += 1
                log.error("%s row not written: %s", self.name, type(exc).__name__)
                if not batch[0][1].done():
                    batch[0][1].set_exception(exc)
                return
            self.written += len(batch)
            self.batches += 1
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)
            return


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


def _aborted(exc: BaseException) -> bool:
    """``run_transaction`` gave up on repeated deadlocks (ABORTED): worth another try."""
    return getattr(exc, "reason", "") == "TRANSACTION_CONFLICT"
