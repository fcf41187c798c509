"""mallkit.db on MariaDB: a read ends in one ROLLBACK (no PING), a connection the server
killed is replaced without the caller seeing an error, a write left unfinished is rolled back."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from mallkit.db import _socket_alive, create_engine, read, session_factory
from mallkit.testing import MYSQL_ADMIN_URL


@pytest.fixture
async def db(backend):
    if backend != "mariadb":
        pytest.skip("connection handling of the MySQL driver")
    name = f"mall_test_db_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(MYSQL_ADMIN_URL, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f"CREATE DATABASE `{name}`"))
    engine = create_engine(str(make_url(MYSQL_ADMIN_URL).set(database=name)), pool_size=1, trace=False)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE notes (id INT PRIMARY KEY, body VARCHAR(20))"))
        await conn.execute(text("INSERT INTO notes VALUES (1, 'one')"))
    yield engine, admin
    await engine.dispose()
    async with admin.connect() as conn:
        await conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    await admin.dispose()


async def _session_status(sessions) -> dict[str, int]:
    async with sessions() as s:
        rows = (await s.execute(text("SHOW SESSION STATUS WHERE Variable_name IN "
                                     "('Com_rollback', 'Com_select', 'Questions')"))).all()
        return {k: int(v) for k, v in rows}


async def test_a_read_ends_in_one_rollback_and_no_ping(db):
    engine, _ = db
    sessions = session_factory(engine)
    before = await _session_status(sessions)  # the pool's one connection, counted by the server itself
    for _ in range(5):
        async with sessions() as s:
            assert (await s.execute(text("SELECT body FROM notes WHERE id = 1"))).scalar() == "one"
    after = await _session_status(sessions)
    # Questions counts every statement (a PING is not one: it would show as a missing second ROLLBACK).
    # Between the two SHOW STATUS: the SHOW's own ROLLBACK, then per read one SELECT and one ROLLBACK.
    assert after["Com_rollback"] - before["Com_rollback"] == 1 + 5
    assert after["Questions"] - before["Questions"] == 1 + 5 * 2 + 1


async def test_an_unfinished_write_is_rolled_back_before_the_connection_is_reused(db):
    engine, _ = db
    async with engine.connect() as conn:
        await conn.execute(text("UPDATE notes SET body = 'changed' WHERE id = 1"))
        raw = await conn.get_raw_connection()
        raw.close()  # back to the pool inside the transaction, behind SQLAlchemy's back
    async with session_factory(engine)() as s:
        assert (await s.execute(text("SELECT body FROM notes WHERE id = 1"))).scalar() == "one"
        assert (await s.execute(text("SELECT @@in_transaction"))).scalar() == 1  # this read's own


async def _kill(admin, connection_id: int) -> None:
    async with admin.connect() as conn:
        await conn.execute(text(f"KILL {int(connection_id)}"))


async def test_a_connection_the_server_killed_is_replaced_at_checkout(db):
    engine, admin = db
    sessions = session_factory(engine)
    async with sessions() as s:
        first = (await s.execute(text("SELECT CONNECTION_ID()"))).scalar()
        pooled = (await (await s.connection()).get_raw_connection()).dbapi_connection  # goes back to the pool idle
    await _kill(admin, first)
    deadline = time.monotonic() + 30
    while _socket_alive(pooled):  # the server's FIN reaches the socket
        assert time.monotonic() < deadline, "the killed connection never looked dead"
        await asyncio.sleep(0.01)
    async with sessions() as s:  # no error: replaced before use
        second = (await s.execute(text("SELECT CONNECTION_ID()"))).scalar()
    assert second != first


async def test_a_read_is_retried_once_on_a_connection_that_dies_under_it(db):
    engine, admin = db
    sessions = session_factory(engine)
    attempts: list[int] = []

    async def body(s):
        cid = (await s.execute(text("SELECT CONNECTION_ID()"))).scalar()
        attempts.append(cid)
        if len(attempts) == 1:
            await _kill(admin, cid)  # dies between two statements of the read
        return (await s.execute(text("SELECT body FROM notes WHERE id = 1"))).scalar()

    assert await read(sessions, body) == "one"
    assert len(attempts) == 2 and attempts[0] != attempts[1]


async def test_a_read_that_fails_otherwise_is_not_retried(db):
    engine, _ = db
    calls = 0

    async def body(s):
        nonlocal calls
        calls += 1
        await s.execute(text("SELECT nope FROM notes"))

    with pytest.raises(Exception, match="nope"):
        await read(session_factory(engine), body)
    assert calls == 1
