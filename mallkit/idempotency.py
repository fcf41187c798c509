"""Idempotent mutations keyed by ``request_id`` (AIP-155).

The key row ``(scope, request_id)`` is inserted in the same transaction as the
effect, after it, with the response: one statement on the happy path. The
unique key is the only arbiter: of N concurrent calls with one key, the first
insert wins; the others' inserts wait on its row lock (MySQL) or for the single
writer (SQLite), fail on the key, roll their own effect back, and replay the
stored response. A key reused with a
different request is INVALID_ARGUMENT ``REQUEST_ID_REUSED``. Errors are not
stored: a failed call may be retried with the same key.

The scope is the RPC plus the caller, so two callers can never collide.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, UniqueConstraint, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mallkit.auth import current_principal
from mallkit.db import DriverStatement, UTCDateTime, is_duplicate_key, run_transaction, transaction_connection, utcnow
from mallkit.errors import FieldViolation, InvalidArgument, MallError

M = TypeVar("M", bound=Message)

#: Full name of the RPC being served (set by the server interceptor).
current_method: ContextVar[str] = ContextVar("current_method", default="")

REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")  # fullmatch: "$" would allow a trailing newline


def define_table(metadata: MetaData) -> Table:
    """The ``idempotency_keys`` table, in a service's own metadata."""
    return Table(
        "idempotency_keys",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("scope", String(190), nullable=False),
        Column("request_id", String(64), nullable=False),
        Column("request_hash", String(64), nullable=False),
        Column("response", LargeBinary(length=16 * 1024 * 1024), nullable=True),
        Column("create_time", UTCDateTime(), nullable=False),
        UniqueConstraint("scope", "request_id"),
    )


def request_hash(request: Message) -> str:
    """Hash of a request without its request_id (deterministic serialization)."""
    copy = type(request)()
    copy.CopyFrom(request)
    if "request_id" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("request_id")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


class Idempotency:
    """Runs a use case in one transaction, at most once per request_id."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], table: Table):
        self.sessions = sessions
        self.table = table
        # built once, run on the driver's connection (MySQL) with its SQL compiled once
        self._insert = DriverStatement(insert(table), ("scope", "request_id", "request_hash", "create_time", "response"))

    def scope(self) -> str:
        p = current_principal.get()
        return f"{current_method.get()}|{p.subject if p else 'anonymous'}"[:190]

    async def run(
        self,
        request: Message,
        response_type: type[M],
        use_case: Callable[[AsyncSession], Awaitable[M]],
        *,
        request_id: str | None = None,
        required: bool = False,
        key_first: bool = False,
        last: Callable[[AsyncSession], Awaitable[None]] | None = None,
    ) -> M:
        """Run ``use_case(session)`` in a transaction; replay on a repeated key.

        ``key_first``: for a use case with an effect outside the database (a message sent
        to WeChat), the key goes in before the effect, so a concurrent repeat waits on it
        and never reaches the effect (two statements instead of one).

        ``last``: a statement to run after the key, as the last of the transaction (a
        hot-row conditional UPDATE, whose row lock is then held only until the commit);
        it may raise to refuse, rolling everything back."""
        rid = request_id if request_id is not None else getattr(request, "request_id", "")

        async def without_key(s: AsyncSession):
            response = await use_case(s)
            if last is not None:
                await last(s)
            return response

        if not rid:
            if required:
                raise InvalidArgument.field("request_id", "is required for this method")
            return await run_transaction(self.sessions, without_key if last is not None else use_case)
        if not REQUEST_ID.fullmatch(rid):
            raise InvalidArgument.field("request_id", "must be 8 to 64 letters, digits, '-' or '_' (a UUID)")
        scope, digest = self.scope(), request_hash(request)
        t = self.table

        async def key_then_effect(s: AsyncSession):
            await s.execute(insert(t).values(scope=scope, request_id=rid, request_hash=digest, create_time=utcnow()))
            response = await use_case(s)
            await s.execute(update(t).where(t.c.scope == scope, t.c.request_id == rid)
                            .values(response=response.SerializeToString(deterministic=True)))
            if last is not None:
                await last(s)
            return response

        async def first_time(s: AsyncSession):
            # Happy path in one statement: the effect, then the key with its response. A
            # concurrent or repeated call with the same key fails on the unique key at this
            # insert (MySQL: after waiting for the first one's commit), rolls its effect back
            # and replays the stored response below.
            response = await use_case(s)
            await self._insert.run(await transaction_connection(s), {
                "scope": scope, "request_id": rid, "request_hash": digest, "create_time": utcnow(),
                "response": response.SerializeToString(deterministic=True)})
            if last is not None:
                await last(s)
            return response

        try:
            outcome = await run_transaction(self.sessions, key_then_effect if key_first else first_time)
        except (IntegrityError, MallError) as exc:
            # A repeat: its effect (rolled back) hit the key, or a rule the first call's effect
            # now trips (a limit, a state). Only this path reads the stored response.
            if isinstance(exc, IntegrityError) and not is_duplicate_key(exc):
                raise
            async with self.sessions() as s, s.begin():
                outcome = await self._stored(s, scope, rid)
            if outcome is None:  # a genuine failure of the first call (errors are not stored)
                raise
        if isinstance(outcome, Message):
            return outcome  # type: ignore[return-value]
        return self._replay(outcome, digest, response_type)

    async def _stored(self, s: AsyncSession, scope: str, rid: str):
        t = self.table
        row = await s.execute(
            select(t.c.request_hash, t.c.response).where(t.c.scope == scope, t.c.request_id == rid)
        )
        return row.first()

    @staticmethod
    def _replay(found, digest: str, response_type: type[M]) -> M:
        if found.request_hash != digest:
            raise InvalidArgument(
                "request_id was already used with a different request",
                reason="REQUEST_ID_REUSED",
                field_violations=[FieldViolation("request_id", "already used with a different request")],
                metadata={"field": "request_id"},
                zh="请求编号已被其他请求使用",
            )
        return response_type.FromString(found.response or b"")
