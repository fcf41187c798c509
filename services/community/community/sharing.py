"""Views and shares: who viewed a post through whose share (a closure table of share chains),
anonymous visitors linked to members later, and the report of a post's reach."""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import String, and_, bindparam, case, cast, distinct, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from mall.community.v1 import community_events_pb2 as evpb
from mallkit.db import insert_ignore, run_transaction
from mallkit.errors import FailedPrecondition, NotFound
from mallkit.events import Outbox

from . import errors as reasons
from .common import Recent, ts, unchanging
from .models import Post, Share, ShareAncestor, View, VisitorLink

MAX_SHARE_ARRIVALS = 50

#: The statements of a batch of views (:meth:`Sharing.write_views`), built once. ``INSERT IGNORE``
#: (MySQL) / ``INSERT OR IGNORE`` (SQLite) from the generic construct with per-dialect prefixes,
#: which SQLAlchemy caches compiled (its MySQL/SQLite ``insert`` constructs are never cached).
_VISITOR_LINKS = (select(VisitorLink.__table__.c.visitor_id, VisitorLink.__table__.c.member_id)
                  .where(VisitorLink.__table__.c.visitor_id.in_(bindparam("visitors", expanding=True))))
_INSERT_VIEWS = (insert(View.__table__).prefix_with("IGNORE", dialect="mysql")
                 .prefix_with("IGNORE", dialect="mariadb").prefix_with("OR IGNORE", dialect="sqlite"))


@dataclass(frozen=True)
class PendingView:
    """A view accepted by ViewPost, written with others in one batch (:meth:`Sharing.write_views`)."""

    post_id: int
    member_id: int | None
    visitor_id: str | None
    share_id: int | None
    event_id: str
    create_time: datetime


#: One batch of views on MySQL/MariaDB is this one statement (:class:`ViewLog`): a row of an
#: anonymous visitor takes the member its visitor id is linked to, if any (two lookups by primary key).
_VIEWS_SQL = ("INSERT IGNORE INTO views (post_id, member_id, visitor_id, share_id, anonymous, create_time, event_id)"
              " VALUES ")
_KNOWN_ROW = "(%s, %s, %s, %s, 0, %s, %s)"
_VISITOR_ROW = ("(%s, (SELECT member_id FROM visitor_links WHERE visitor_id = %s), %s, %s,"
                " NOT EXISTS (SELECT 1 FROM visitor_links WHERE visitor_id = %s), %s, %s)")


class ViewLog:
    """Writes a batch of views for the batch writer (``write`` of :class:`mallkit.batching.BatchWriter`).

    MySQL/MariaDB: the batch is one multi-row ``INSERT IGNORE`` (:data:`_VIEWS_SQL`; visitor links
    looked up inside it) on a connection the log keeps for itself in autocommit mode: one round
    trip per batch, no pool checkout, no ``COMMIT``, no ORM session (a batch cost ~4 ms of CPU as a
    session's SELECT + INSERT + COMMIT, ~0.5 ms so). The statement is atomic on its own: the batch is
    written whole or not at all, and written again after an ambiguous failure the unique key
    ``(post_id, event_id)`` keeps every view once. A failed statement discards the connection (the
    next batch, or the batch writer's retry, opens another); so does an idle one, before it could
    reach a server timeout. Elsewhere (SQLite): :meth:`Sharing.write_views` in a write transaction.

    The connection is held out of the pool while the service runs; :meth:`close` (at shutdown, after
    the batch writer drained) gives it back."""

    IDLE_SECONDS = 60.0

    def __init__(self, engine: AsyncEngine, sessions, sharing: Sharing):
        self.engine = engine
        self.sessions = sessions
        self.sharing = sharing
        self.single_statement = engine.dialect.name in ("mysql", "mariadb")
        self._conn: AsyncConnection | None = None
        self._used = 0.0

    async def __call__(self, views: list[PendingView]) -> None:
        if not self.single_statement:
            await run_transaction(self.sessions, lambda s: self.sharing.write_views(s, views))
            return
        sql, params = _views_statement(views)
        conn = await self._connection()
        try:
            await conn.exec_driver_sql(sql, params)
        except BaseException:
            await self._discard()
            raise
        self._used = time.monotonic()

    async def _connection(self) -> AsyncConnection:
        if self._conn is not None and time.monotonic() - self._used > self.IDLE_SECONDS:
            await self._discard()
        if self._conn is None:
            conn = await self.engine.connect()
            try:
                self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            except BaseException:
                await conn.invalidate()
                raise
        return self._conn

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()  # its state is unknown: closed, never back in the pool
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        """Give the connection back to the pool (its autocommit mode is reset there)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


def _views_statement(views: list[PendingView]) -> tuple[str, tuple]:
    rows: list[str] = []
    params: list = []
    for v in views:
        at = v.create_time.astimezone(UTC).replace(tzinfo=None)  # naive UTC, as UTCDateTime stores it
        if v.member_id is None and v.visitor_id:
            rows.append(_VISITOR_ROW)
            params += (v.post_id, v.visitor_id, v.visitor_id, v.share_id, v.visitor_id, at, v.event_id)
        else:
            rows.append(_KNOWN_ROW)
            params += (v.post_id, v.member_id, v.visitor_id, v.share_id, at, v.event_id)
    return _VIEWS_SQL + ", ".join(rows), tuple(params)


class Sharing:
    def __init__(self, outbox: Outbox, cache_seconds: float = 0.0):
        self.outbox = outbox
        # (group, post, share token) -> (post, share): a share never changes, nor does a published
        # post (see Content.unchanging).
        self._by_token = Recent(cache_seconds)

    async def share_by_token(self, s: AsyncSession, post_id: int, token: str, field: str) -> Share:
        sh = (await s.execute(select(Share).where(Share.token == token))).scalar_one_or_none()
        if sh is None or sh.post_id != post_id:
            raise NotFound("share not found", reason=reasons.SHARE_NOT_FOUND, metadata={"field": field},
                           zh="分享链接无效")
        return sh

    async def post_by_share(self, s: AsyncSession, group_id: int, post_id: int, token: str) -> tuple[Post, Share]:
        """The post and the share a token belongs to, in one query (the view hot path)."""
        row = (await s.execute(select(Post, Share).join(Share, Share.post_id == Post.id)
                               .where(Share.token == token, Post.id == post_id))).first()
        if row is None:
            raise NotFound("share not found", reason=reasons.SHARE_NOT_FOUND, metadata={"field": "share_token"},
                           zh="分享链接无效")
        p, sh = row
        if p.group_id != group_id:
            raise NotFound("post not found", reason=reasons.POST_NOT_FOUND,
                           resource=("post", f"groups/{group_id}/posts/{post_id}"), zh="内容不存在")
        return p, sh

    async def post_by_share_cached(self, sessions, group_id: int, post_id: int, token: str) -> tuple[Post, Share]:
        """:meth:`post_by_share` answered from memory for ``cache_seconds`` (the view hot path: no
        database round trip for a shared article read again and again)."""
        key = (group_id, post_id, token)
        hit = self._by_token.get(key)
        if hit is not None:
            return hit
        async with sessions() as s:
            p, sh = await self.post_by_share(s, group_id, post_id, token)
        if unchanging(p):
            self._by_token.put(key, (p, sh))
        return p, sh

    async def write_views(self, s: AsyncSession, views: list[PendingView]) -> None:
        """Write a batch of views in ``s``'s transaction (:class:`ViewLog` off MySQL): one SELECT of
        the links of the batch's anonymous visitors (a visitor already joined to a member is
        recorded as that member) and one multi-row INSERT OR IGNORE (a repeated client event id of
        a post is skipped by the unique key). Both statements are built once and run on the
        session's connection (compiled once per process, no ORM work per statement)."""
        conn = await s.connection()
        anonymous = sorted({v.visitor_id for v in views if v.member_id is None and v.visitor_id})
        linked: dict[str, int] = {}
        if anonymous:
            linked = {vid: int(m) for vid, m in (await conn.execute(_VISITOR_LINKS, {"visitors": anonymous})).tuples()}
        rows = []
        for v in views:
            member_id, anon = v.member_id, False
            if member_id is None and v.visitor_id:
                member_id = linked.get(v.visitor_id)
                anon = member_id is None
            rows.append({"post_id": v.post_id, "member_id": member_id, "visitor_id": v.visitor_id,
                         "share_id": v.share_id, "anonymous": anon, "create_time": v.create_time,
                         "event_id": v.event_id})
        await conn.execute(_INSERT_VIEWS, rows)

    async def share_post(self, s: AsyncSession, p: Post, member_id: int, parent_token: str, now: datetime) -> Share:
        """The member's share of a post (one per member and post), placed under its parent share."""
        existing = (await s.execute(select(Share).where(Share.post_id == p.id, Share.sharer_id == member_id))
                    ).scalar_one_or_none()
        if existing is not None:
            return existing
        parent = await self.share_by_token(s, p.id, parent_token, "parent_share_token") if parent_token else None
        if parent is not None and parent.sharer_id == member_id:
            parent = None
        sh = Share(post_id=p.id, sharer_id=member_id, token=secrets.token_urlsafe(12)[:16],
                   parent_share_id=parent.id if parent else None, depth=(parent.depth + 1) if parent else 1,
                   create_time=now)
        s.add(sh)
        await s.flush()  # a concurrent share by the same member fails here (unique key); caller retries
        rows = [{"share_id": sh.id, "ancestor_id": sh.id, "distance": 0}]
        if parent is not None:
            ancestors = (await s.execute(select(ShareAncestor.ancestor_id, ShareAncestor.distance)
                                         .where(ShareAncestor.share_id == parent.id))).tuples().all()
            rows += [{"share_id": sh.id, "ancestor_id": a, "distance": d + 1} for a, d in ancestors]
        await insert_ignore(s, ShareAncestor.__table__, rows)
        await self.outbox.add(s, "community.content_shared",
                              evpb.ContentSharedEvent(post=f"groups/{p.group_id}/posts/{p.id}",
                                                      sharer=f"members/{member_id}", share_time=ts(now)),
                              subject=f"members/{member_id}")
        return sh

    async def link_visitor(self, s: AsyncSession, visitor_id: str, member_id: int, now: datetime) -> int:
        await insert_ignore(s, VisitorLink.__table__,
                            [{"visitor_id": visitor_id, "member_id": member_id, "create_time": now}])
        owner = (await s.execute(select(VisitorLink.member_id).where(VisitorLink.visitor_id == visitor_id))).scalar_one()
        if int(owner) != member_id:
            raise FailedPrecondition("this visitor id belongs to another member", reason=reasons.VISITOR_LINKED_ELSEWHERE,
                                     metadata={"field": "name"}, zh="该访客身份已关联其他会员")
        linked = await s.execute(update(View).where(View.visitor_id == visitor_id, View.member_id.is_(None))
                                 .values(member_id=member_id))
        n = linked.rowcount  # type: ignore[attr-defined]
        if n:
            await self._publish_share_arrivals(s, visitor_id, member_id, now)
        return n

    async def _publish_share_arrivals(self, s: AsyncSession, visitor_id: str, member_id: int, now: datetime) -> None:
        """The shares a visitor arrived through before being known (its first view through each),
        as ``community.visitor_linked``: the members service records them as content share
        touchpoints (share attribution). Published by the link that joined the views, so once."""
        first = func.min(View.create_time)
        rows = (await s.execute(
            select(Share.id, Share.post_id, Share.sharer_id, Post.group_id, first)
            .join(View, View.share_id == Share.id).join(Post, Post.id == Share.post_id)
            .where(View.visitor_id == visitor_id, View.anonymous.is_(True), Share.sharer_id != member_id)
            .group_by(Share.id, Share.post_id, Share.sharer_id, Post.group_id)
            .order_by(first, Share.id).limit(MAX_SHARE_ARRIVALS))).tuples().all()
        if not rows:
            return
        event = evpb.VisitorLinkedEvent(member=f"members/{member_id}", visitor_id=visitor_id, link_time=ts(now))
        for share_id, post_id, sharer_id, group_id, view_time in rows:
            event.arrivals.append(evpb.ShareArrival(
                post=f"groups/{group_id}/posts/{post_id}", share=f"groups/{group_id}/posts/{post_id}/shares/{share_id}",
                sharer=f"members/{sharer_id}", view_time=ts(view_time)))
        await self.outbox.add(s, "community.visitor_linked", event, subject=f"members/{member_id}")

    async def post_report(self, s: AsyncSession, p: Post) -> dict:
        """Views, unique viewers, shares, depth and members gained, overall and per sharer.

        A view through share X counts for X and for every share above X in its
        chain (the closure table ``share_ancestors``)."""
        viewer = case((View.member_id.is_not(None), literal("m") + cast(View.member_id, String)),
                      else_=literal("v") + View.visitor_id)
        gained = case((and_(View.anonymous.is_(True), View.member_id.is_not(None)), View.member_id), else_=None)
        views, unique, shared_views, members_gained = (await s.execute(
            select(func.count(View.id), func.count(distinct(viewer)),
                   func.count(View.share_id), func.count(distinct(case((View.share_id.is_not(None), gained), else_=None))))
            .where(View.post_id == p.id))).one()
        shares = list((await s.execute(select(Share).where(Share.post_id == p.id).order_by(Share.id).limit(200)))
                      .scalars().all())
        n_shares, max_depth = (await s.execute(select(func.count(Share.id), func.max(Share.depth))
                                               .where(Share.post_id == p.id))).one()
        direct = dict((await s.execute(select(View.share_id, func.count(View.id))
                                       .where(View.post_id == p.id, View.share_id.is_not(None))
                                       .group_by(View.share_id))).tuples().all())
        chain = {
            a: (n, u, g)
            for a, n, u, g in (await s.execute(
                select(ShareAncestor.ancestor_id, func.count(View.id), func.count(distinct(viewer)),
                       func.count(distinct(gained)))
                .join(View, View.share_id == ShareAncestor.share_id)
                .where(View.post_id == p.id)
                .group_by(ShareAncestor.ancestor_id))).tuples().all()
        }
        depth_below = dict((await s.execute(
            select(ShareAncestor.ancestor_id, func.max(ShareAncestor.distance))
            .join(Share, Share.id == ShareAncestor.ancestor_id)
            .where(Share.post_id == p.id).group_by(ShareAncestor.ancestor_id))).tuples().all())
        sharers = []
        for sh in shares:
            n, u, g = chain.get(sh.id, (0, 0, 0))
            sharers.append({"share": sh, "direct_views": direct.get(sh.id, 0), "chain_views": n, "unique_viewers": u,
                            "members_gained": g, "chain_depth": depth_below.get(sh.id, 0)})
        return {"views": views, "unique_viewers": unique, "shares": n_shares, "max_share_depth": max_depth or 0,
                "members_gained": members_gained, "shared_views": shared_views, "sharers": sharers}
