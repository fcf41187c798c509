"""The async database engine, one per service, for MySQL/MariaDB or SQLite.

* ``mysql+aiomysql://user:pass@host/db`` in production (READ COMMITTED,
  utf8mb4, recycle; see :func:`create_engine` for how a dead connection is
  caught without a ``PING`` per checkout, and how a read ends in one round trip);
* ``sqlite+aiosqlite:///var/members.db`` for the zero-setup default (WAL,
  ``BEGIN IMMEDIATE`` so that writers queue instead of failing, foreign keys).

Timestamps are stored as naive UTC (``DATETIME(6)`` on MySQL) and come back as
aware UTC datetimes through :class:`UTCDateTime`.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from sqlalchemy import DateTime, MetaData, event, text
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import greenlet_spawn

from mallkit.telemetry import instrument_engine

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


#: Execution option marking a write transaction (SQLite: BEGIN IMMEDIATE).
WRITE = "mall_write"


def new_metadata() -> MetaData:
    """A service's own MetaData with the shared constraint naming convention."""
    return MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in, aware UTC datetimes out; naive UTC in the database."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to UTCDateTime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):  # SQLite may hand back text
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC)


def is_sqlite(engine_or_url) -> bool:
    url = engine_or_url.url if hasattr(engine_or_url, "url") else make_url(str(engine_or_url))
    return url.get_backend_name() == "sqlite"


def create_engine(url: str, *, pool_size: int = 10, trace: bool = True) -> AsyncEngine:
    """The engine of one service's database, traced."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        # hide_parameters: statement parameters (tokens in stored responses, password hashes, phones)
        # never reach a log line or an error message, even with DEBUG logging on.
        engine = create_async_engine(u, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn):
            # Reads: a plain BEGIN, so WAL readers run side by side. Writes (run_transaction
            # marks them): BEGIN IMMEDIATE takes the single writer lock up front, queued by
            # busy_timeout, instead of SQLITE_BUSY when a transaction that read first tries to write.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")

    else:
        if u.get_backend_name() in ("mysql", "mariadb") and "charset" not in u.query:
            u = u.update_query_dict({"charset": "utf8mb4"})
        engine = create_async_engine(
            u,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_recycle=1800,
            pool_timeout=10,
            pool_reset_on_return=None,  # _reset_if_dirty below: one ROLLBACK, not two
            isolation_level="READ COMMITTED",
            hide_parameters=True,
        )
        _track_transactions(engine)
    if trace:
        instrument_engine(engine)
    return engine


_DIRTY = "mall_dirty"


def _track_transactions(engine: AsyncEngine) -> None:
    """No ``PING`` per checkout, and one round trip to end a read.

    * ``pool_pre_ping`` cost a ``PING`` round trip on every checkout. Instead a checkout
      looks, without a round trip, at the socket of the driver's connection: a server that
      closed it (``wait_timeout``, a restart, ``KILL``) has sent a FIN or an error packet
      that sits unread in the stream, and such a connection is replaced before use
      (``DisconnectionError``: the pool reconnects). ``pool_recycle`` replaces connections
      older than 30 minutes, under any server ``wait_timeout``. A connection that dies without
      a word (a network partition) fails its first statement; SQLAlchemy then invalidates it
      and every connection older, and :func:`read` retries a read once.
    * A session ending a read rolls its transaction back, then returns the connection to the
      pool, whose reset-on-return rolled back a second time (two ``ROLLBACK`` round trips per
      read). The pool's reset is off; a connection is marked dirty when a transaction begins
      on it and clean when one commits or rolls back, and the pool rolls back on return only
      a connection still dirty (a transaction abandoned without an end), so a connection never
      goes back to the pool inside a transaction.
    """
    sync = engine.sync_engine

    @event.listens_for(sync, "begin")
    def _dirty(conn) -> None:
        conn.connection.info[_DIRTY] = True

    @event.listens_for(sync, "commit")
    @event.listens_for(sync, "rollback")
    def _clean(conn) -> None:
        if not conn.invalidated:
            conn.connection.info[_DIRTY] = False

    @event.listens_for(sync.pool, "reset")
    def _reset_if_dirty(dbapi_connection, record, state) -> None:
        if state.terminate_only or not state.asyncio_safe:
            return  # the pool terminates this connection; nothing to roll back
        if record.info.get(_DIRTY, True) and not state.transaction_was_reset:
            dbapi_connection.rollback()
        record.info[_DIRTY] = False

    @event.listens_for(sync.pool, "checkout")
    def _alive(dbapi_connection, record, proxy) -> None:
        from sqlalchemy.exc import DisconnectionError

        if not _socket_alive(dbapi_connection):
            raise DisconnectionError("the server closed this connection")


def _socket_alive(dbapi_connection) -> bool:
    """False when the driver's connection is closed or the server has written to it while idle
    (EOF, or an unsolicited error packet such as "connection killed"). No round trip."""
    raw = getattr(dbapi_connection, "_connection", None)  # aiomysql's Connection under SQLAlchemy's adapter
    if raw is None:
        return True
    if getattr(raw, "_writer", True) is None:  # aiomysql: closed
        return False
    reader = getattr(raw, "_reader", None)
    try:
        return not (reader is not None and (reader._eof or len(reader._buffer)))  # type: ignore[attr-defined]
    except AttributeError:
        return True


def is_disconnect(exc: BaseException) -> bool:
    """The statement failed because the connection died (SQLAlchemy invalidated it)."""
    from sqlalchemy.exc import DBAPIError

    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


async def read(sessions, fn):
    """Run the read ``fn(session)`` in a session of its own; once more on a fresh connection
    if the first one turns out dead (a read has no effect to repeat)."""
    try:
        async with sessions() as s:
            return await fn(s)
    except Exception as exc:
        if not is_disconnect(exc):
            raise
    async with sessions() as s:
        return await fn(s)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def ping(engine: AsyncEngine) -> bool:
    """True when the database answers ``SELECT 1``."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def is_duplicate_key(exc: Exception) -> bool:
    """True when an IntegrityError is a unique-key violation (MySQL or SQLite)."""
    orig = getattr(exc, "orig", None)
    args = getattr(orig, "args", ())
    if args and args[0] == 1062:  # MySQL ER_DUP_ENTRY
        return True
    return "UNIQUE constraint failed" in str(orig)


def insert_ignore_statement(dialect_name: str, table):
    """``INSERT IGNORE`` (MySQL) / ``INSERT ... ON CONFLICT DO NOTHING`` (SQLite) into ``table``."""
    from sqlalchemy.dialects.mysql import insert as mysql_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    if dialect_name == "sqlite":
        return sqlite_insert(table).on_conflict_do_nothing()
    return mysql_insert(table).prefix_with("IGNORE")


async def insert_ignore(session: AsyncSession, table, rows: list[dict]) -> int:
    """INSERT rows, skipping those that hit a unique key (MySQL or SQLite); the rows inserted
    (exact for one row: 1 inserted, 0 already there)."""
    if not rows:
        return 0
    result = await session.execute(insert_ignore_statement(session.get_bind().dialect.name, table), rows)
    return result.rowcount  # type: ignore[attr-defined]


async def insert_ignore_select(session: AsyncSession, table, columns: list[str], select_) -> None:
    """INSERT ... SELECT, skipping rows that hit a unique key (MySQL ``INSERT IGNORE``, SQLite ``OR IGNORE``)."""
    from sqlalchemy import insert

    prefix = "OR IGNORE" if session.get_bind().dialect.name == "sqlite" else "IGNORE"
    await session.execute(insert(table).from_select(columns, select_).prefix_with(prefix))


def is_unavailable(exc: BaseException) -> bool:
    """The database cannot be reached or is out of connections (answer UNAVAILABLE)."""
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, PoolTimeout):
        return True
    args: tuple = getattr(getattr(exc, "orig", None), "args", ())
    return bool(args) and args[0] in (1040, 2002, 2003, 2006, 2013)


def is_transient(exc: BaseException) -> bool:
    """A deadlock or lock timeout (MySQL 1213/1205) or a busy SQLite: retry the transaction."""
    orig = getattr(exc, "orig", None)
    args = getattr(orig, "args", ())
    if args and args[0] in (1213, 1205):
        return True
    return "database is locked" in str(orig)


_CONNECTION = "mall_connection"


async def transaction_connection(s: AsyncSession) -> AsyncConnection:
    """The connection of the transaction :func:`run_transaction` runs ``s`` in (kept by it: no
    greenlet round per ``s.connection()`` call), or ``s.connection()``."""
    conn = s.info.get(_CONNECTION)
    if conn is not None and conn.in_transaction():
        return conn
    return await s.connection()


_inside_transaction: ContextVar[bool] = ContextVar("mall_inside_transaction", default=False)


def _admission(sessions) -> asyncio.Semaphore:
    """One semaphore per engine, as wide as its connection pool (one on SQLite).

    Write transactions queue here, in order and without a timeout of their own
    (the RPC's deadline bounds the wait), instead of timing out in the pool's
    checkout under a burst of hundreds of concurrent calls.

    SQLite has a single writer: there the queue is one wide. Wider, every waiting
    writer held a pooled connection inside ``BEGIN IMMEDIATE`` and polled SQLite's
    busy handler (sleep and retry, in no order), so on a loaded machine a writer
    could lose that lottery past ``busy_timeout`` ("database is locked", then
    ABORTED after the retries) while reads found the pool empty.
    """
    engine = sessions.kw["bind"].sync_engine
    sem = getattr(engine, "_mall_admission", None)
    if sem is None:
        pool = engine.pool
        width = pool.size() + max(getattr(pool, "_max_overflow", 0), 0) if hasattr(pool, "size") else 10
        if engine.dialect.name == "sqlite":
            width = 1
        sem = asyncio.Semaphore(max(1, width))
        engine._mall_admission = sem
    return sem


def admitted(sessions) -> asyncio.Semaphore:
    """The engine's admission control, for a read that must queue with the writes
    (``async with admitted(sessions), sessions() as s: ...``); writes are admitted by
    :func:`run_transaction` already."""
    return _admission(sessions)


async def run_transaction(sessions, fn, *, attempts: int = 5):
    """Run ``fn(session)`` in one write transaction, retried whole on deadlocks.

    Every transaction that writes should come through here (or through
    ``Idempotency.run``, which does): reads may use a plain session.

    Raises ABORTED when the database keeps refusing (the caller may retry).
    """
    if _inside_transaction.get():  # nested: already admitted
        return await _attempts(sessions, fn, attempts)
    async with _admission(sessions):
        token = _inside_transaction.set(True)
        try:
            return await _attempts(sessions, fn, attempts)
        finally:
            _inside_transaction.reset(token)


async def _attempts(sessions, fn, attempts: int):
    import random

    from sqlalchemy.exc import DBAPIError

    from mallkit.errors import Aborted

    for attempt in range(attempts):
        try:
            async with sessions() as s, s.begin():
                s.info[_CONNECTION] = await s.connection(execution_options={WRITE: True})
                return await fn(s)
        except DBAPIError as exc:
            if not is_transient(exc):
                raise
            if attempt == attempts - 1:
                raise Aborted("transaction conflicted repeatedly, retry", reason="TRANSACTION_CONFLICT")
            await asyncio.sleep(random.uniform(0.005, 0.05 * (attempt + 1)))
    raise AssertionError("unreachable")


class DriverStatement:
    """A Core ``INSERT``/``UPDATE``/``DELETE`` built once, run on the driver's connection.

    ``await stmt.run(conn, params)`` (``conn``: the transaction's ``AsyncConnection``) returns
    ``(rowcount, lastrowid)``. On MySQL/MariaDB (aiomysql), outside a recording span, the
    statement's SQL is compiled once per dialect, its parameters go through the columns' bind
    processors and the driver's own escaping (exactly what the driver's cursor would send), and it
    goes out as one ``COM_QUERY`` on the driver connection: no execution context, cursor, result
    object or greenlet per statement (SQLAlchemy's per-statement machinery was most of a
    short transaction's CPU). ``before_cursor_execute`` listeners of the engine still see every
    statement (with ``cursor`` and ``context`` None, the parameters as the escaped literals sent); a driver error goes through SQLAlchemy's
    own handling (wrapped as ``IntegrityError``/``OperationalError``..., a lost connection
    invalidated), so callers see the same exceptions as with ``conn.execute``.

    Everywhere else (SQLite, a sampled request whose statements get spans of their own, or a table
    a read cache tracks: :func:`mallkit.readcache.track_writes` must see its writes) it is
    ``conn.execute(statement, params)``. ``statement`` may be a function of the dialect name
    (``insert_ignore_statement``); ``keys``: the parameters every call passes (an INSERT's
    columns), compiled in; columns left out take their scalar Python default.
    """

    def __init__(self, statement, keys: list[str] | tuple[str, ...] | None = None):
        self._build = statement if callable(statement) else (lambda _dialect_name: statement)
        self.keys = list(keys) if keys is not None else None
        self._by_dialect: dict = {}

    def _compiled(self, dialect):
        found = self._by_dialect.get(dialect)
        if found is None:
            statement = self._build(dialect.name)
            table = getattr(getattr(statement, "table", None), "name", None)
            fast = dialect.name in ("mysql", "mariadb") and dialect.driver == "aiomysql"
            sql, order, defaults = "", [], {}
            if fast:
                compiled = statement.compile(dialect=dialect, column_keys=self.keys)
                if compiled.literal_execute_params or compiled.post_compile_params or compiled.returning:
                    raise TypeError("DriverStatement: expanding parameters and RETURNING are not supported")
                for col in compiled.insert_prefetch:
                    if col.default is None or not col.default.is_scalar:
                        raise TypeError(f"DriverStatement: pass {col.key!r} (its default is not a constant)")
                    defaults[col.key] = col.default.arg
                procs = compiled._bind_processors
                sql = compiled.string
                order = [(name, procs.get(name)) for name in compiled.positiontup or ()]
            found = self._by_dialect[dialect] = (statement, fast, table, sql, order, defaults)
        return found

    async def run(self, conn: AsyncConnection, params: dict) -> tuple[int, int]:
        sync = conn.sync_connection
        assert sync is not None
        statement, fast, table, sql, order, defaults = self._compiled(sync.dialect)
        if not fast or table in getattr(sync.engine, TRACKED_TABLES, ()) or _recording():
            result = await conn.execute(statement, params)
            return result.rowcount, result.lastrowid  # type: ignore[attr-defined]
        if defaults:
            params = {**defaults, **params}
        driver: Any = sync.connection.driver_connection  # the transaction's connection: no I/O
        escape = driver.escape
        args = tuple(escape(params[name] if proc is None else proc(params[name])) for name, proc in order)
        if sync._has_events or sync.engine._has_events:
            for listener in sync.dispatch.before_cursor_execute:
                listener(sync, None, sql, args, None, False)
        try:
            rowcount = await driver.query(sql % args)
        except BaseException as e:
            # SQLAlchemy's own path: wrap a driver error, invalidate a lost connection (or one left
            # mid-statement by a cancellation), run the handle_error listeners; it raises.
            await greenlet_spawn(sync._handle_dbapi_exception, e, sql, args, None, None)
            raise
        return rowcount, driver.insert_id()


#: Attribute of a sync engine: names of the tables whose writes a read cache tracks.
TRACKED_TABLES = "_mall_tracked_tables"


def _recording() -> bool:
    return trace.get_current_span().is_recording()
