"""mallkit.queries: keyset pages walk every row once in key order; get_or_not_found raises the given error."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import ForeignKey, String, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mallkit.db import create_engine, new_metadata, session_factory
from mallkit.errors import InvalidArgument, NotFound
from mallkit.pagination import PageTokens
from mallkit.queries import get_or_not_found, keyset_page
from mallkit.testing import MYSQL_ADMIN_URL


class Base(DeclarativeBase):
    metadata = new_metadata()


class Shelf(Base):
    __tablename__ = "shelves"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(16))


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    shelf_id: Mapped[int] = mapped_column(ForeignKey("shelves.id"))
    score: Mapped[int]


@pytest.fixture
async def sessions(backend, tmp_path):
    name = f"mall_test_queries_{uuid.uuid4().hex[:8]}"
    admin = None
    if backend == "mariadb":
        admin = create_async_engine(MYSQL_ADMIN_URL)
        async with admin.begin() as conn:
            await conn.execute(text(f"CREATE DATABASE `{name}`"))
        url = str(make_url(MYSQL_ADMIN_URL).set(database=name))
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"
    engine = create_engine(url, trace=False)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    make = session_factory(engine)
    async with make() as s, s.begin():
        s.add_all([Shelf(id=1, label="a"), Shelf(id=2, label="b")])
        await s.flush()
        # scores repeat, so the (score desc, id desc) order needs its tie-breaker
        s.add_all([Book(id=i, shelf_id=1 + i % 2, score=i % 4) for i in range(1, 24)])
    yield make
    await engine.dispose()
    if admin is not None:
        async with admin.begin() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        await admin.dispose()


TOKENS = PageTokens("a-test-secret-that-is-long-enough")


async def _walk(sessions, stmt, key, size, filters=(), **kw):
    pages, token = [], ""
    while True:
        async with sessions() as s:
            rows, token = await keyset_page(s, stmt, key=key, tokens=TOKENS, page_size=size, page_token=token,
                                            filters=filters, **kw)
        pages.append(rows)
        if not token:
            return pages


async def test_pages_ascending_cover_every_row_once(sessions):
    pages = await _walk(sessions, select(Book), Book.id, 5)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [b.id for p in pages for b in p] == list(range(1, 24))


async def test_pages_descending_with_filter_and_exact_multiple(sessions):
    stmt = select(Book).where(Book.shelf_id == 2)  # ids 1, 3, ..., 23: 12 books
    pages = await _walk(sessions, stmt, Book.id.desc(), 4, filters=[2])
    assert [len(p) for p in pages] == [4, 4, 4]
    assert [b.id for p in pages for b in p] == list(range(23, 0, -2))


async def test_compound_key_with_ties(sessions):
    pages = await _walk(sessions, select(Book), (Book.score.desc(), Book.id.desc()), 3)
    got = [(b.score, b.id) for p in pages for b in p]
    assert got == sorted(((i % 4, i) for i in range(1, 24)), reverse=True)


async def test_rows_of_several_entities_and_bare_columns(sessions):
    stmt = select(Book, Shelf.label).join(Shelf, Shelf.id == Book.shelf_id)
    pages = await _walk(sessions, stmt, Book.id, 10)
    assert [(b.id, label) for p in pages for b, label in p] == [(i, "ab"[i % 2]) for i in range(1, 24)]
    ids = await _walk(sessions, select(Book.id).where(Book.score == 0), Book.id.desc(), 2)
    assert [i for p in ids for i in p] == [20, 16, 12, 8, 4]


async def test_token_is_bound_to_filters_and_key(sessions):
    async with sessions() as s:
        _, token = await keyset_page(s, select(Book), key=Book.id, tokens=TOKENS, page_size=2, page_token="",
                                     filters=[1])
        with pytest.raises(InvalidArgument) as err:
            await keyset_page(s, select(Book), key=Book.id, tokens=TOKENS, page_size=2, page_token=token, filters=[2])
        assert err.value.field_violations[0].field == "page_token"
        with pytest.raises(InvalidArgument):
            await keyset_page(s, select(Book), key=(Book.score, Book.id), tokens=TOKENS, page_size=2,
                              page_token=token, filters=[1])


async def test_get_or_not_found(sessions):
    async with sessions() as s, s.begin():
        assert (await get_or_not_found(s, Shelf, 2, NotFound("no shelf"))).label == "b"
        with pytest.raises(NotFound, match="no shelf 9"):
            await get_or_not_found(s, Shelf, 9, lambda: NotFound("no shelf 9", reason="SHELF_NOT_FOUND"))
        assert (await get_or_not_found(s, Book, 3, NotFound("no book"), for_update=True)).score == 3
