"""Query shapes every service repeats: get-or-not-found and a keyset page in one call.

``keyset_page`` builds on :mod:`mallkit.pagination` (signed, filter-bound tokens):
it decodes the token, adds the keyset WHERE for the sort key, orders by the key,
fetches ``size + 1`` rows, trims and encodes the next token. The sort key is one
or more columns, each ascending or ``.desc()``, ending with a unique column
(usually the id) so the order is total. Key values travel in the token as JSON,
so key columns hold integers or strings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import and_, inspect, or_
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import UnmappedColumnError
from sqlalchemy.sql import Select, operators
from sqlalchemy.sql.elements import UnaryExpression

from mallkit.errors import InvalidArgument, MallError
from mallkit.pagination import PageTokens

T = TypeVar("T")


async def get_or_not_found(
    session: AsyncSession,
    model: type[T],
    id: Any,
    error: MallError | Callable[[], MallError],
    *,
    for_update: bool = False,
) -> T:
    """The row of ``model`` with primary key ``id``, or raise ``error`` (an error or a factory of one)."""
    row = await session.get(model, id, with_for_update=for_update or None)
    if row is None:
        raise error() if callable(error) else error
    return row


def _column(k: Any) -> tuple[Any, bool]:
    """(column, descending) of one sort key term: ``Model.id`` or ``Model.id.desc()``."""
    if isinstance(k, UnaryExpression) and k.modifier in (operators.desc_op, operators.asc_op):
        return k.element, k.modifier is operators.desc_op
    return getattr(k, "expression", k), False


def _after(columns: Sequence[tuple[Any, bool]], last: Sequence[Any]) -> Any:
    """Rows strictly after ``last`` in the key order: (a > x) OR (a = x AND b > y) OR ..."""
    terms = []
    for i, (col, desc) in enumerate(columns):
        step = col < last[i] if desc else col > last[i]
        terms.append(and_(*[c == last[j] for j, (c, _) in enumerate(columns[:i])], step))
    return or_(*terms)


def _key_getter(columns: Sequence[tuple[Any, bool]]) -> Callable[[Any], list]:
    """Read the key values off a result row: an ORM object, a Row of objects/columns, or a bare scalar."""

    def value(row: Any, col: Any) -> Any:
        for item in tuple(row) if isinstance(row, Row) else (row,):
            mapper = inspect(type(item), raiseerr=False)
            if mapper is None:
                continue
            try:
                return getattr(item, mapper.get_property_by_column(col).key)
            except UnmappedColumnError:
                continue
        if isinstance(row, Row):
            return row._mapping[col]
        if len(columns) == 1:
            return row
        raise TypeError(f"cannot read sort key {col} from a {type(row).__name__}: pass key_of")

    return lambda row: [value(row, col) for col, _ in columns]


async def keyset_page(
    session: AsyncSession,
    stmt: Select,
    *,
    key: Any | Sequence[Any],
    tokens: PageTokens,
    page_size: int,
    page_token: str,
    filters: Sequence[object] = (),
    key_of: Callable[[Any], list] | None = None,
) -> tuple[list, str]:
    """One page of ``stmt`` in ``key`` order, and the token of the next page ("" on the last one).

    ``stmt`` carries the filters but no ORDER BY or LIMIT. ``page_size`` is the
    already-normalized size (see :func:`mallkit.pagination.page_size`); ``filters``
    are the request values the token is bound to. A statement of one entity or
    column yields scalars, otherwise Rows. ``key_of`` reads the key off a row when
    the default (the key column's attribute on the row's ORM object) does not fit.
    """
    terms = list(key) if isinstance(key, (list, tuple)) else [key]
    columns = [_column(k) for k in terms]
    last = tokens.decode(page_token, filters)
    if last is not None:
        if len(last) != len(columns):
            raise InvalidArgument.field("page_token", "is not a token returned by this list")
        stmt = stmt.where(_after(columns, last))
    stmt = stmt.order_by(*[c.desc() if d else c.asc() for c, d in columns]).limit(page_size + 1)
    result = await session.execute(stmt)
    rows = list(result.scalars().all() if len(stmt.column_descriptions) == 1 else result.all())
    if len(rows) <= page_size:
        return rows, ""
    rows = rows[:page_size]
    return rows, tokens.encode((key_of or _key_getter(columns))(rows[-1]), filters)
