"""Caches of rows that every page reads and that change rarely, kept coherent on every replica.

A :class:`ReadCache` keeps, per process, the answer of one read by its key (the member of
``GetMember``). It is coherent because nobody has to remember to invalidate it:

* :func:`track_writes` listens to the service's own engine. Every ``INSERT``/``UPDATE``/
  ``DELETE`` on a table the cache is built from (ORM flushes, Core statements, text SQL) is
  attributed to the keys it touches (from its ``WHERE key = ...``/``IN (...)`` or its
  parameters; a statement whose keys cannot be told invalidates every key). The keys are
  invalidated when the connection goes back to the pool after the transaction committed (and
  once already as it commits), never on a rollback.
* :class:`CacheBroadcast` sends those keys on core NATS (``<namespace>.cache.<service>.<name>``)
  to every replica of the service, each of which drops them (its own included).
* A read racing a write never stores what it read before the write committed: :meth:`ReadCache.get`
  takes a generation of the key before reading and stores only if no invalidation of that key
  (or of everything) came since.
* The cache serves only while the invalidations can arrive: it is off until the subscription
  is live, and is emptied and switched off when the NATS connection drops, emptied and switched
  on again when it comes back (what was published in between is never applied, so nothing from
  before is kept). Every entry also expires after ``ttl`` seconds (at most 60), the bound on
  staleness should a broadcast be lost on a live connection.

A write is seen at once on the replica that made it; on the others when the broadcast arrives
(a NATS hop, milliseconds).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any

from cachetools import TTLCache
from prometheus_client import Counter
from sqlalchemy import Column, Table, event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import dml, elements, operators

from mallkit.db import TRACKED_TABLES

log = logging.getLogger("mallkit.readcache")

CACHE_LOOKUPS = Counter("mall_cache_lookups", "Read cache lookups by cache and result (hit, miss, off)",
                        ["cache", "result"])
CACHE_INVALIDATIONS = Counter("mall_cache_invalidations", "Keys invalidated by cache and origin (local, peer, all)",
                              ["cache", "origin"])

#: Every key of the cache (a write whose keys cannot be told).
ALL = "*"
MAX_TTL = 60.0
_MAX_GENERATIONS = 100_000


class ReadCache:
    """Values by key for ``ttl`` seconds, dropped by :meth:`invalidate`; off until :meth:`enable`."""

    def __init__(self, name: str, *, ttl: float, max_size: int = 100_000):
        if not 0 <= ttl <= MAX_TTL:
            raise ValueError(f"cache ttl must be between 0 and {MAX_TTL:g} seconds")
        self.name = name
        self.ttl = ttl
        self.enabled = False
        self._entries: TTLCache = TTLCache(maxsize=max_size, ttl=ttl) if ttl > 0 else TTLCache(maxsize=1, ttl=1)
        self._generations: dict[Hashable, int] = {}
        self._aliases: dict[Hashable, set[Hashable]] = {}  # ("sku", 7) -> the cached keys it is part of
        self._epoch = 0
        self._hit = CACHE_LOOKUPS.labels(name, "hit")
        self._miss = CACHE_LOOKUPS.labels(name, "miss")
        self._off = CACHE_LOOKUPS.labels(name, "off")

    async def get(self, key: Hashable, load: Callable[[], Awaitable[Any]]) -> Any:
        """The cached value of ``key``, else ``await load()`` (stored unless the key was
        invalidated while it loaded). Errors of ``load`` are not cached."""
        if not self.enabled or self.ttl <= 0:
            self._off.inc()
            return await load()
        value = self._entries.get(key)
        if value is not None:
            self._hit.inc()
            return value
        self._miss.inc()
        token = (self._epoch, self._generations.get(key, 0))
        value = await load()
        if self.enabled and value is not None and token == (self._epoch, self._generations.get(key, 0)):
            self._entries[key] = value
        return value

    def alias(self, part: tuple, key: Hashable) -> None:
        """Record that the cached value of ``key`` holds ``part`` (a row of another table, as
        ``(tag, id)``: ``("sku", 7)`` of product 3), so invalidating ``part`` drops ``key``."""
        self._aliases.setdefault(part, set()).add(key)

    def invalidate(self, keys: Iterable[Hashable] | str) -> None:
        """Drop ``keys`` (or every key: :data:`ALL`); a read of them in flight stores nothing.
        A ``(tag, id)`` key drops the keys it is an alias of; one this replica knows nothing of
        may be part of a read in flight, so every read in flight stores nothing."""
        if keys == ALL:
            self.clear()
            return
        for key in keys:  # type: ignore[union-attr]
            if isinstance(key, tuple):
                owners = self._aliases.pop(key, None)
                if owners is None:
                    self._epoch += 1
                    continue
                for owner in owners:
                    self._entries.pop(owner, None)
                    self._generations[owner] = self._generations.get(owner, 0) + 1
                continue
            self._entries.pop(key, None)
            self._generations[key] = self._generations.get(key, 0) + 1
        if len(self._generations) > _MAX_GENERATIONS or len(self._aliases) > _MAX_GENERATIONS:
            self.clear()

    def clear(self) -> None:
        self._entries.clear()
        self._generations.clear()
        self._aliases.clear()
        self._epoch += 1

    def enable(self) -> None:
        self.clear()
        self.enabled = True

    def disable(self) -> None:
        self.enabled = False
        self.clear()

    def __len__(self) -> int:
        return len(self._entries)


# --- which keys a statement writes ------------------------------------------------------------

_WRITE = re.compile(r"^\s*(insert|update|delete|replace|truncate|alter|drop)\b", re.IGNORECASE)


def _is_key(col: Any, key: Column) -> bool:
    return isinstance(col, Column) and col.name == key.name and col.table is not None and col.table.name == key.table.name


def _values(bind: Any, params: list[dict]) -> set | None:
    """The values a bound parameter takes over ``params`` (None when some cannot be told)."""
    if not isinstance(bind, elements.BindParameter):
        return None
    if bind.value is not None and not bind.callable:
        return set(bind.value) if bind.expanding else {bind.value}
    found = set()
    for p in params:
        if bind.key not in p:
            return None
        v = p[bind.key]
        found.update(v) if bind.expanding else found.add(v)
    return found or None


def written_keys(statement: Any, tables: dict[str, Column], params: list[dict]) -> tuple[str, set | str] | None:
    """(table, keys written or :data:`ALL`) of ``statement``, or None when it writes no tracked table."""
    if isinstance(statement, (str, elements.TextClause)):
        sql = statement if isinstance(statement, str) else statement.text
        if _WRITE.match(sql):
            for name in tables:
                if re.search(rf"\b{re.escape(name)}\b", sql):
                    return name, ALL
        return None
    if not isinstance(statement, dml.UpdateBase) or not isinstance(getattr(statement, "table", None), Table):
        return None
    table: Any = statement.table
    key = tables.get(table.name)
    if key is None:
        return None
    if isinstance(statement, dml.Insert):
        upsert = getattr(statement, "_post_values_clause", None) is not None
        if key.primary_key and len(table.primary_key.columns) == 1 and not upsert and statement.select is None:
            return None  # new rows: no cached answer can hold them
        found: set = set()
        for p in params or [{}]:
            v = p.get(key.key)
            if v is None:
                v = statement._values.get(key.key) if statement._values else None  # type: ignore[attr-defined]
                v = getattr(v, "value", v)
            if v is None:
                return table.name, ALL
            found.add(v)
        return table.name, found
    where = getattr(statement, "whereclause", None)
    if where is None:
        return table.name, ALL
    conjuncts = list(where.clauses) if (isinstance(where, elements.BooleanClauseList)
                                        and where.operator is operators.and_) else [where]
    for c in conjuncts:
        if isinstance(c, elements.BinaryExpression) and _is_key(c.left, key) and c.operator in (
                operators.eq, operators.in_op):
            values = _values(c.right, params)
            if values is not None:
                return table.name, values
    return table.name, ALL


def track_writes(engine: AsyncEngine, tables: Iterable[Column | tuple[Column, str]],
                 invalidated: Callable[[set | str], None]) -> None:
    """Call ``invalidated(keys)`` after each committed transaction of ``engine`` that wrote rows
    of the tables of ``tables`` (their key columns: ``members.id``, ``member_attributes.member_id``;
    ``(skus.id, "sku")``: that table's keys as ``("sku", id)``, for :meth:`ReadCache.alias`)."""
    columns = [t if isinstance(t, tuple) else (t, None) for t in tables]
    by_table = {c.table.name: c for c, _tag in columns}
    tags = {c.table.name: tag for c, tag in columns if tag}
    sync = engine.sync_engine
    # mallkit.db.DriverStatement runs statements on these tables through SQLAlchemy (seen here)
    setattr(sync, TRACKED_TABLES, frozenset(getattr(sync, TRACKED_TABLES, ())) | set(by_table))
    pending, committed = "mallkit.readcache.pending", "mallkit.readcache.committed"

    def merge(info: dict, slot: str, keys: set | str) -> None:
        have = info.get(slot)
        if have == ALL or keys == ALL:
            info[slot] = ALL
        else:
            info[slot] = (have or set()) | keys  # type: ignore[operator]

    @event.listens_for(sync, "before_execute")
    def _seen(conn, statement, multiparams, params, execution_options):
        rows = list(multiparams) if multiparams else ([params] if params else [])
        if isinstance(statement, dml.Insert) and getattr(statement.table, "name", None) in tags:
            merge(conn.info, pending, ALL)  # a new row of a part (a SKU of a cached product): whose, unknown
            return
        found = written_keys(statement, by_table, [r for r in rows if isinstance(r, dict)])
        if found is not None:
            table, keys = found
            tag = tags.get(table)
            merge(conn.info, pending, {(tag, k) for k in keys} if tag and keys != ALL else keys)

    @event.listens_for(sync, "commit")
    def _commit(conn):
        keys = conn.info.pop(pending, None)
        if keys:
            invalidated(keys)  # as it commits (fresher on this replica) ...
            merge(conn.info, committed, keys)

    @event.listens_for(sync, "rollback")
    def _rollback(conn):
        if not conn.invalidated:  # an invalidated connection's record is gone, and with it the keys
            conn.info.pop(pending, None)

    @event.listens_for(sync.pool, "checkin")
    def _checkin(dbapi_connection, record):
        keys = record.info.pop(committed, None) if record is not None else None
        if keys:
            invalidated(keys)  # ... and after (a read between the two stored nothing older)


class CacheBroadcast:
    """A service's cache invalidations, applied here and sent to every replica over core NATS."""

    def __init__(self, bus: Any, service: str, cache: ReadCache, key: Callable[[str], Hashable] = int):
        self.bus = bus
        self.cache = cache
        self.key = key
        self.subject = f"{bus.namespace}.cache.{service}.{cache.name}"
        self._sub: Any = None
        self._tasks: set[asyncio.Task] = set()

    def invalidated(self, keys: set | str) -> None:
        """Drop ``keys`` here now and on every replica (called by :func:`track_writes`)."""
        self.cache.invalidate(keys)
        CACHE_INVALIDATIONS.labels(self.cache.name, "all" if keys == ALL else "local").inc(1 if keys == ALL else len(keys))
        nc = self.bus.nc
        if nc is None or not nc.is_connected:
            return  # the cache is off here then; peers that lost us are off too or hear from the TTL
        payload = (ALL if keys == ALL else ",".join(
            f"{k[0]}:{k[1]}" if isinstance(k, tuple) else str(k) for k in keys)).encode()
        try:
            task = asyncio.get_running_loop().create_task(nc.publish(self.subject, payload))
        except RuntimeError:  # no loop (a connection returned by the garbage collector)
            log.warning("cache %s: invalidation of %s not broadcast (no event loop)", self.cache.name, payload[:80])
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_message(self, msg) -> None:
        data = msg.data.decode()
        if data == ALL:
            self.cache.clear()
            CACHE_INVALIDATIONS.labels(self.cache.name, "all").inc()
            return
        try:
            keys = [(k.split(":", 1)[0], self.key(k.split(":", 1)[1])) if ":" in k else self.key(k)
                    for k in data.split(",") if k]
        except ValueError:
            log.warning("cache %s: unreadable invalidation %r; clearing", self.cache.name, data[:80])
            self.cache.clear()
            return
        self.cache.invalidate(keys)
        CACHE_INVALIDATIONS.labels(self.cache.name, "peer").inc(len(keys))

    async def _down(self) -> None:
        if self.cache.enabled:
            log.warning("cache %s off: NATS disconnected (invalidations could be missed)", self.cache.name)
        self.cache.disable()

    async def _up(self) -> None:
        if self._sub is not None:
            self.cache.enable()  # subscriptions are re-sent before this runs: empty, then serve

    async def run(self, stop: asyncio.Event) -> None:
        """Background task: subscribe, serve from the cache while connected, stop on ``stop``."""
        if not await self.bus.wait_connected(stop):
            return
        self.bus.watch(self._down, self._up)
        self._sub = await self.bus.nc.subscribe(self.subject, cb=self._on_message)
        await self.bus.nc.flush()
        self.cache.enable()
        log.info("cache %s on (ttl %gs, invalidations on %s)", self.cache.name, self.cache.ttl, self.subject)
        try:
            await stop.wait()
        finally:
            self.cache.disable()
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception:  # the connection is closing with the process
                pass
