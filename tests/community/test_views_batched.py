"""Content views are written in batches: a burst is recorded exactly once per client event id,
and views still queued when the service stops are written before it exits."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from sqlalchemy import event, func, select, text

from community.app import build
from community.models import View
from community.sharing import PendingView, ViewLog
from mall.community.v1 import community_service_pb2 as pb
from mall.community.v1 import community_service_pb2_grpc as pb_grpc
from mallkit.db import create_engine, session_factory
from tests.community.helpers import join, make_group, new_member_id
from tests.community.test_content import post
from tests.community.test_shares import report, visitor
from tests.fixtures.community import community_settings

ROOT = Path(__file__).resolve().parents[2]


async def shared_article(community) -> tuple[pb.Post, pb.Share]:
    group = await make_group(community)
    article = await post(community, group, kind=pb.POST_KIND_ARTICLE, title="防晒怎么选", body="SPF 与 PA……")
    sharer = new_member_id()
    await join(community, group, sharer)
    share = await community.stub.SharePost(pb.SharePostRequest(name=article.name), metadata=community.member_md(sharer))
    return article, share


async def stored_views(engine, post_name: str) -> tuple[int, int]:
    """(rows, distinct event ids) of the post's views in the database."""
    post_id = int(post_name.rsplit("/", 1)[1])
    async with engine.connect() as conn:
        n, distinct = (await conn.execute(select(func.count(View.id), func.count(func.distinct(View.event_id)))
                                          .where(View.post_id == post_id))).one()
    return n, distinct


async def test_a_burst_of_views_is_recorded_once_per_client_event_id_in_fewer_transactions(community):
    article, share = await shared_article(community)
    writer = community.app.servicer.views
    batches_before, written_before = writer.batches, writer.written
    events = [(visitor(), "e" + uuid.uuid4().hex) for _ in range(300)]
    calls = [(v, e) for v, e in events] + [(v, e) for v, e in events[:100]]  # 100 repeated, at the same time

    async def one(v, e):
        return await community.stub.ViewPost(pb.ViewPostRequest(name=article.name, visitor_id=v,
                                                                share_token=share.token, client_event_id=e))

    answers = await asyncio.gather(*(one(v, e) for v, e in calls))
    assert {a.view for a in answers} == {f"{article.name}/views/{e}" for _, e in events}
    assert await stored_views(community.engine, article.name) == (300, 300)
    r = await report(community, article.name)
    assert r.views == 300 and r.unique_viewers == 300 and r.shared_views == 300
    # The repeats wrote nothing a second time, and the 400 calls shared transactions.
    assert writer.written - written_before == 400
    assert writer.batches - batches_before < 200


async def test_views_of_a_shared_post_cost_no_statement_each_only_one_per_batch(community, backend):
    """The profile of the hot path, asserted: the post and share of a token come from memory, and
    a batch is one multi-row INSERT that looks the visitor links up itself (MariaDB; on SQLite one
    SELECT of visitor links plus one multi-row INSERT)."""
    article, share = await shared_article(community)
    await community.stub.ViewPost(pb.ViewPostRequest(name=article.name, visitor_id=visitor(), share_token=share.token))
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        if any(t in statement for t in ("views", "visitor_links", "posts", "shares")):
            statements.append(statement.split("(", 1)[0][:60])

    writer = community.app.servicer.views
    engine = community.app.engine.sync_engine
    batches_before = writer.batches
    event.listen(engine, "before_cursor_execute", seen)
    try:
        await asyncio.gather(*(community.stub.ViewPost(pb.ViewPostRequest(
            name=article.name, visitor_id=visitor(), share_token=share.token)) for _ in range(200)))
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    batches = writer.batches - batches_before
    assert await stored_views(community.engine, article.name) == (201, 201)
    assert 1 <= batches < 100
    per_batch = 1 if backend == "mariadb" else 2
    assert len(statements) == per_batch * batches, statements
    assert sum("INSERT" in st for st in statements) == batches


async def test_a_batch_mixing_known_and_unknown_visitors_records_each_as_who_it_is(community):
    """One batch holds views of a visitor already linked to a member (recorded as that member, not
    anonymous: no member "gained"), of unknown visitors (anonymous) and of a signed-in member."""
    article, share = await shared_article(community)
    known, reader = new_member_id(), new_member_id()
    device = visitor()
    await community.stub.LinkVisitor(pb.LinkVisitorRequest(name=f"visitors/{device}"),
                                     metadata=community.member_md(known))  # before any view of it
    strangers = [visitor() for _ in range(20)]
    calls = [pb.ViewPostRequest(name=article.name, visitor_id=v, share_token=share.token) for v in strangers]
    calls += [pb.ViewPostRequest(name=article.name, visitor_id=device, share_token=share.token)] * 3
    writer = community.app.servicer.views
    batches_before = writer.batches
    await asyncio.gather(*(community.stub.ViewPost(c) for c in calls),
                         community.stub.ViewPost(pb.ViewPostRequest(name=article.name, share_token=share.token),
                                                 metadata=community.member_md(reader)))
    assert writer.batches - batches_before < 24  # they shared batches
    r = await report(community, article.name)
    assert r.views == 24 and r.shared_views == 24
    assert r.unique_viewers == 22  # 20 strangers, the known visitor's member, the reader
    assert r.members_gained == 0  # the known visitor was a member before it viewed
    activity = await community.stub.GetMemberActivity(pb.GetMemberActivityRequest(
        name=f"members/{known}/communityActivity"), metadata=community.service_md)
    assert activity.view_count == 3


@pytest.mark.mariadb
async def test_views_are_still_written_once_after_the_server_killed_the_writers_connection(community):
    article, share = await shared_article(community)
    log = community.app.view_log
    await community.stub.ViewPost(pb.ViewPostRequest(name=article.name, visitor_id=visitor(), share_token=share.token))
    first = (await log._conn.exec_driver_sql("SELECT CONNECTION_ID()")).scalar()
    async with community.engine.connect() as conn:
        await conn.execute(text(f"KILL {int(first)}"))
    answers = await asyncio.gather(*(community.stub.ViewPost(pb.ViewPostRequest(
        name=article.name, visitor_id=visitor(), share_token=share.token), timeout=30) for _ in range(50)))
    assert len({a.view for a in answers}) == 50
    assert await stored_views(community.engine, article.name) == (51, 51)
    assert (await log._conn.exec_driver_sql("SELECT CONNECTION_ID()")).scalar() != first


@pytest.mark.mariadb
async def test_the_writers_connection_goes_back_to_the_pool_out_of_autocommit(community):
    """The view log writes in autocommit mode on a connection of its own; closed, that connection
    is pooled again in the engine's transactional mode (a write there must not commit statement by
    statement)."""
    engine = create_engine(community.url, pool_size=1, trace=False)
    log = ViewLog(engine, session_factory(engine), community.app.sharing)
    try:
        article, share = await shared_article(community)
        now = datetime.now(UTC)
        await log([PendingView(int(article.name.rsplit("/", 1)[1]), None, visitor(), None, uuid.uuid4().hex, now)])
        used = (await log._conn.exec_driver_sql("SELECT CONNECTION_ID()")).scalar()
        await log.close()
        async with engine.connect() as conn:
            again, autocommit = (await conn.execute(text("SELECT CONNECTION_ID(), @@autocommit"))).one()
        assert again == used and autocommit == 0
        assert await stored_views(community.engine, article.name) == (1, 1)
    finally:
        await log.close()
        await engine.dispose()


async def test_a_repeated_client_event_id_counts_once_and_a_bad_one_is_refused(community):
    article, share = await shared_article(community)
    v, e = visitor(), "e" + uuid.uuid4().hex
    for _ in range(3):
        await community.stub.ViewPost(pb.ViewPostRequest(name=article.name, visitor_id=v, share_token=share.token,
                                                         client_event_id=e))
    assert await stored_views(community.engine, article.name) == (1, 1)
    try:
        await community.stub.ViewPost(pb.ViewPostRequest(name=article.name, visitor_id=v, share_token=share.token,
                                                         client_event_id="short"))
        raise AssertionError("a malformed client_event_id was accepted")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "client_event_id" in (exc.details() or "")
    assert await stored_views(community.engine, article.name) == (1, 1)


async def test_views_still_queued_when_the_service_stops_are_all_written(community, members):
    """A second replica on the same database answers once a view is queued (``view_ack=accept``) and
    waits up to a minute for a batch to fill: the views are still in memory when it stops."""
    article, share = await shared_article(community)
    settings = community_settings(community.url, members_addr=members.addr).model_copy(update={
        "view_ack": "accept", "view_batch_delay_seconds": 60.0, "view_batch_rows": 5000, "view_queue_size": 5000})
    replica = build(settings, jobs=False)
    await replica.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}")
    stub = pb_grpc.CommunityServiceStub(channel)
    try:
        answers = await asyncio.gather(*(stub.ViewPost(pb.ViewPostRequest(
            name=article.name, visitor_id=visitor(), share_token=share.token)) for _ in range(200)))
        assert len({a.view for a in answers}) == 200
        assert len(replica.servicer.views) == 200  # accepted, none written yet
        assert await stored_views(community.engine, article.name) == (0, 0)
    finally:
        await channel.close()
        await replica.stop(grace=1)
    assert await stored_views(community.engine, article.name) == (200, 200)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_sigterm_writes_the_views_still_queued_before_the_process_exits(community, members):
    """``python -m community`` as Kubernetes stops it: SIGTERM while 100 accepted views wait in memory
    for a batch that would fill only in a minute; the process writes them before it exits."""
    article, share = await shared_article(community)
    port = free_port()
    env = {**os.environ, "MALL_ENV": "development", "MALL_LOG_LEVEL": "WARNING", "COMMUNITY_PORT": str(port),
           "COMMUNITY_DATABASE_URL": community.url, "COMMUNITY_RELAY_ENABLED": "false",
           "MALL_NATS_URL": "nats://127.0.0.1:1", "MALL_MEMBERS_ADDR": members.addr, "COMMUNITY_DRAIN_SECONDS": "0",
           "COMMUNITY_VIEW_ACK": "accept", "COMMUNITY_VIEW_BATCH_DELAY_SECONDS": "60",
           "COMMUNITY_VIEW_BATCH_ROWS": "5000", "COMMUNITY_VIEW_QUEUE_SIZE": "5000"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "community", env=env, cwd=ROOT,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await asyncio.wait_for(channel.channel_ready(), 60)
        stub = pb_grpc.CommunityServiceStub(channel)
        answers = await asyncio.gather(*(stub.ViewPost(pb.ViewPostRequest(
            name=article.name, visitor_id=visitor(), share_token=share.token), timeout=30) for _ in range(100)))
        assert len({a.view for a in answers}) == 100
        assert await stored_views(community.engine, article.name) == (0, 0)  # accepted, still in memory
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-2000:]
    finally:
        await channel.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert await stored_views(community.engine, article.name) == (100, 100)
