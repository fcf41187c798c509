"""mallkit.readcache: which keys a write touches, the race between a read and a write, and two
replicas of a service kept coherent over a real NATS server and a real database."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mallkit.events import EventBus
from mallkit.readcache import ALL, CacheBroadcast, ReadCache, track_writes, written_keys
from mallkit.testing import NatsServer, empty_database
from tests.fixtures import until


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "cached_rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(40), default="")


class Extra(Base):
    __tablename__ = "cached_extras"
    row_id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(40), default="")


KEYS = {"cached_rows": Row.__table__.c.id, "cached_extras": Extra.__table__.c.row_id}
r, x = Row.__table__, Extra.__table__


@pytest.mark.parametrize("statement,params,expected", [
    (sa.update(Row).where(Row.id == 7).values(name="a"), [], ("cached_rows", {7})),
    (sa.update(r).where(r.c.id.in_([1, 2])).values(name="a"), [], ("cached_rows", {1, 2})),
    (sa.update(r).where(r.c.id == sa.bindparam("rid")).values(name="a"), [{"rid": 3}, {"rid": 4}], ("cached_rows", {3, 4})),
    (sa.update(r).where(r.c.name == "x", r.c.id == 5).values(name="a"), [], ("cached_rows", {5})),
    (sa.update(r).where(sa.or_(r.c.id == 5, r.c.name == "x")).values(name="a"), [], ("cached_rows", ALL)),
    (sa.update(r).values(name="a"), [], ("cached_rows", ALL)),
    (sa.delete(x).where(x.c.row_id == 9), [], ("cached_extras", {9})),
    (sa.delete(x).where(x.c.key == "k"), [], ("cached_extras", ALL)),
    (sa.insert(r).values(id=1, name="new"), [], None),  # a new row: nothing cached to drop
    (sa.insert(x), [{"row_id": 4, "key": "k", "value": "v"}, {"row_id": 6, "key": "k", "value": "v"}], ("cached_extras", {4, 6})),
    (sa.insert(x).values(row_id=8, key="k", value="v"), [], ("cached_extras", {8})),
    (sa.text("UPDATE cached_rows SET name = 'a'"), [], ("cached_rows", ALL)),
    (sa.text("SELECT * FROM cached_rows"), [], None),
    (sa.update(sa.table("other", sa.column("id"))).values(id=1), [], None),
    (sa.select(r), [], None),
])
def test_written_keys(statement, params, expected):
    assert written_keys(statement, KEYS, params) == expected


async def test_a_read_racing_a_write_stores_nothing():
    cache = ReadCache("race", ttl=30)
    cache.enable()
    loading = asyncio.Event()
    release = asyncio.Event()

    async def slow_load():
        loading.set()
        await release.wait()
        return "old"

    read = asyncio.ensure_future(cache.get(1, slow_load))
    await loading.wait()
    cache.invalidate({1})  # the write committed while the read was in flight
    release.set()
    assert await read == "old"  # the reader gets what it read...
    assert await cache.get(1, _value("new")) == "new"  # ... but the cache did not keep it
    assert await cache.get(1, _value("never")) == "new"  # and now it serves the stored value
    cache.invalidate(ALL)
    assert await cache.get(1, _value("newer")) == "newer"


async def test_off_until_enabled_and_after_disable():
    cache = ReadCache("off", ttl=30)
    assert await cache.get(1, _value("a")) == "a"
    assert await cache.get(1, _value("b")) == "b"  # off: every call loads
    cache.enable()
    assert await cache.get(1, _value("c")) == "c"
    assert await cache.get(1, _value("d")) == "c"
    cache.disable()
    assert await cache.get(1, _value("e")) == "e"
    with pytest.raises(ValueError):
        ReadCache("long", ttl=61)


def _value(v):
    async def load():
        return v

    return load


async def _replica(url: str, nats_url: str, name: str):
    """One replica: its own engine (pool), cache, tracker and broadcast on the shared NATS."""
    engine = create_async_engine(url)
    bus = EventBus(nats_url, name=name)
    cache = ReadCache("row", ttl=60)
    broadcast = CacheBroadcast(bus, "cachetest", cache)
    track_writes(engine, KEYS.values(), broadcast.invalidated)
    stop = asyncio.Event()
    task = asyncio.ensure_future(broadcast.run(stop))
    await until(lambda: _true(cache.enabled), 30, f"cache of {name} on")

    async def get(row_id: int):
        async def load():
            async with engine.connect() as conn:
                row = (await conn.execute(sa.select(r.c.name).where(r.c.id == row_id))).one()
                extras = (await conn.execute(sa.select(x.c.key, x.c.value).where(x.c.row_id == row_id))).all()
            return (row.name, dict(extras))

        return await cache.get(row_id, load)

    async def close():
        stop.set()
        await task
        await bus.close()
        await engine.dispose()

    return engine, cache, get, close


async def _true(v):
    return v


@pytest.fixture
async def cache_db(backend, tmp_root):
    """A database of its own with the two tables (MariaDB, else a SQLite file)."""
    async with empty_database("readcache", backend, tmp_root) as url:
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
            await conn.execute(sa.insert(r), [{"id": i, "name": f"n{i}"} for i in (1, 2, 3)])
        await engine.dispose()
        yield url


async def test_two_replicas_stay_coherent(cache_db, nats):
    a_engine, a_cache, a_get, a_close = await _replica(cache_db, nats.url, "replica-a")
    b_engine, b_cache, b_get, b_close = await _replica(cache_db, nats.url, "replica-b")
    try:
        assert await a_get(1) == ("n1", {}) and await b_get(1) == ("n1", {})
        assert await b_get(2) == ("n2", {})
        assert len(a_cache) == 1 and len(b_cache) == 2

        # A write through replica A's engine (Core UPDATE) ...
        async with a_engine.begin() as conn:
            await conn.execute(sa.update(r).where(r.c.id == 1).values(name="changed"))
        assert await a_get(1) == ("changed", {})  # ... is seen at once on A
        await until(lambda: _eq(b_get(1), ("changed", {})), 30, "replica B to drop row 1")
        assert 2 in b_cache._entries  # the other row stayed cached on B

        # An ORM flush of the second table, through B: A sees it.
        from sqlalchemy.ext.asyncio import AsyncSession

        async with AsyncSession(b_engine) as s:
            s.add(Extra(row_id=2, key="k", value="v"))
            await s.commit()
        await until(lambda: _eq(a_get(2), ("n2", {"k": "v"})), 30, "replica A to see row 2's extra")
        assert await b_get(2) == ("n2", {"k": "v"})

        # A rolled-back write drops nothing; a bulk write drops everything.
        await a_get(3)
        async with a_engine.connect() as conn:
            await conn.execute(sa.update(r).where(r.c.id == 3).values(name="never"))
            await conn.rollback()
        assert 3 in a_cache._entries and await a_get(3) == ("n3", {})
        async with b_engine.begin() as conn:
            await conn.execute(sa.text("UPDATE cached_rows SET name = CONCAT('bulk-', id)")
                               if b_engine.dialect.name == "mysql" else
                               sa.text("UPDATE cached_rows SET name = 'bulk-' || id"))
        await until(lambda: _eq(a_get(3), ("bulk-3", {})), 30, "replica A to drop everything")
        assert await b_get(1) == ("bulk-1", {})
    finally:
        await a_close()
        await b_close()


async def test_off_while_nats_is_down(cache_db, tmp_root):
    nats = NatsServer(tmp_root / f"nats-{uuid.uuid4().hex[:6]}")  # its own server: stopped here
    await nats.start()
    engine, cache, get, close = await _replica(cache_db, nats.url, "replica-down")
    try:
        await get(1)
        assert len(cache) == 1
        await nats.stop()
        await until(lambda: _true(not cache.enabled), 60, "the cache to switch off with NATS down")
        assert len(cache) == 0
        # A write that replica could never hear of (another engine, not tracked) is read at once.
        other = create_async_engine(cache_db)
        async with other.begin() as conn:
            await conn.execute(sa.update(r).where(r.c.id == 1).values(name="while-down"))
        await other.dispose()
        assert (await get(1))[0] == "while-down"
        await nats.start()
        await until(lambda: _true(cache.enabled), 60, "the cache to come back with NATS")
    finally:
        await close()
        await nats.stop()


async def _eq(awaitable, expected):
    return (await awaitable) == expected


async def test_a_part_drops_the_values_holding_it_and_travels_between_replicas():
    cache = ReadCache("parts", ttl=30)
    cache.enable()
    assert await cache.get(3, _value("product 3")) == "product 3"
    cache.alias(("sku", 7), 3)
    cache.invalidate([("sku", 8)])  # a part nobody here holds: stored values stay
    assert await cache.get(3, _value("never")) == "product 3"
    cache.invalidate([("sku", 7)])
    assert await cache.get(3, _value("product 3 again")) == "product 3 again"

    # a part unknown here may belong to a read in flight: that read stores nothing
    release = asyncio.Event()

    async def slow():
        await release.wait()
        return "stale"

    read = asyncio.ensure_future(cache.get(4, slow))
    await asyncio.sleep(0)
    cache.invalidate([("sku", 9)])
    release.set()
    assert await read == "stale"
    assert await cache.get(4, _value("fresh")) == "fresh"

    # the broadcast carries parts as tag:id
    class Bus:
        namespace, nc = "mall", None

    peer = CacheBroadcast(Bus(), "orders", cache)
    cache.alias(("sku", 11), 4)

    class Msg:
        data = b"sku:11"

    await peer._on_message(Msg())
    assert await cache.get(4, _value("after the peer's write")) == "after the peer's write"
