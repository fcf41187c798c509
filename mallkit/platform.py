"""One service host: what the platform builds for every service from its declaration.

A service declares its settings, its servicer, the events it consumes
(``events.py``: ``HANDLERS``) and its scheduled jobs (``jobs.py``: ``schedule``).
Its composition root (``app.py``) then reads like this::

    platform = Platform.create("orders", settings, tables=Tables(OutboxEvents, InboxEvents, IdempotencyKeys))
    app = OrdersApp(platform, catalog=Catalog(...), ...)          # the sub-domain objects
    platform.serve(app, domain=DOMAIN,
                   servicers=[Servicer(pb.DESCRIPTOR.services_by_name["OrdersService"],
                                       pb_grpc.add_OrdersServiceServicer_to_server, OrdersServicer(app))],
                   handlers=events.HANDLERS, jobs=jobs.schedule(app))
    return app

The platform builds the engine and sessions, the token codec, the peer channels,
the members client (one per process, one cache), the page tokens, idempotency,
the outbox and its relay to NATS JetStream, the durable consumers of the events
the service handles, health (readiness follows the database), drain and metrics.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from sqlalchemy import Column, Table
from sqlalchemy.ext.asyncio import AsyncEngine

from mallkit.auth import TokenCodec
from mallkit.batching import BatchWriter
from mallkit.clients import Peers
from mallkit.db import create_engine, ping, session_factory
from mallkit.events import Consumer, EventBus, Outbox, Relay, StreamSettings, Subscription
from mallkit.idempotency import Idempotency
from mallkit.jobs import Job, periodic
from mallkit.members import MembersClient
from mallkit.output import filter_outputs
from mallkit.pagination import PageTokens
from mallkit.principals import Lookup, PrincipalCheck
from mallkit.readcache import CacheBroadcast, ReadCache, track_writes
from mallkit.server import ServiceHost


@dataclass(frozen=True)
class Tables:
    """The platform's tables in a service's database (defined in its models.py)."""

    outbox: Any
    inbox: Any
    idempotency: Any

    @staticmethod
    def table(model) -> Table:
        return model if isinstance(model, Table) else model.__table__


@dataclass(frozen=True)
class Servicer:
    """A gRPC service to mount: its descriptor, the generated ``add_..._to_server`` and the servicer."""

    descriptor: ServiceDescriptor
    register: Callable[[Any, Any], None]
    servicer: Any


@dataclass
class Platform:
    service: str
    settings: Any
    engine: AsyncEngine
    tables: Tables
    owns_engine: bool = True
    sessions: Any = field(init=False)
    codec: TokenCodec = field(init=False)
    peers: Peers = field(init=False)
    members: MembersClient = field(init=False)
    tokens: PageTokens = field(init=False)
    idempotency: Idempotency = field(init=False)
    outbox: Outbox = field(init=False)
    bus: EventBus = field(init=False)
    relay: Relay = field(init=False)
    consumers: list[Consumer] = field(init=False, default_factory=list)
    subscriptions: list[Subscription] = field(init=False, default_factory=list)
    host: ServiceHost | None = field(init=False, default=None)
    writers: list[BatchWriter] = field(init=False, default_factory=list)
    broadcasts: list[CacheBroadcast] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        s, p = self.settings, self.settings.platform
        secret = p.token_secret.get_secret_value()
        self.sessions = session_factory(self.engine)
        self.codec = TokenCodec(secret)
        self.peers = Peers(p.addr_of, codec=self.codec, caller=self.service, timeout=p.call_timeout_seconds)
        self.members = MembersClient(lambda: self.peers.channel("members"), p.members_cache_seconds)
        self.tokens = PageTokens(secret)
        self.idempotency = Idempotency(self.sessions, self.tables.idempotency)
        outbox = Tables.table(self.tables.outbox)
        self.outbox = Outbox(outbox, self.service)
        self.bus = EventBus(p.nats_url, name=self.service, streams=StreamSettings(
            max_age_days=p.event_retention_days, duplicate_window_seconds=p.event_duplicate_window_seconds,
            replicas=p.event_stream_replicas, namespace=p.event_namespace))
        self.relay = Relay(self.sessions, outbox, self.service, self.bus, max_backoff=s.outbox_max_backoff_seconds)

    @classmethod
    def create(cls, service: str, settings, *, tables: Tables, engine: AsyncEngine | None = None) -> Platform:
        owns = engine is None
        engine = engine or create_engine(settings.database_url, pool_size=settings.db_pool_size,
                                         trace=settings.platform.trace_sql)
        return cls(service, settings, engine, tables, owns)

    def subscribe(self, app: Any, handlers: Mapping[str, tuple[type[Message], Callable]], purpose: str = "apply",
                  deliver_all: bool = True, inbox: Any = None) -> Subscription:
        """A durable consumer ``<service>-<purpose>`` of ``handlers`` (``async (app, s, event, payload)``).

        ``inbox`` (a table shaped like ``inbox_events``, default the service's own): a second
        purpose consuming event types the first one also consumes needs its own inbox, since
        the inbox is keyed on the event id alone."""
        bound = {t: (payload, functools.partial(h, app)) for t, (payload, h) in handlers.items()}
        sub = Subscription(purpose, bound, deliver_all=deliver_all)
        p = self.settings.platform
        self.subscriptions.append(sub)
        self.consumers.append(Consumer(
            self.sessions, Tables.table(inbox if inbox is not None else self.tables.inbox), self.service, sub, self.bus,
            max_deliveries=p.event_max_deliveries, ack_wait=p.event_ack_wait_seconds,
            max_backoff=self.settings.outbox_max_backoff_seconds))
        return sub

    def read_cache(self, name: str, *, keys: Iterable[Column | tuple[Column, str]], ttl: float, max_size: int = 100_000) -> ReadCache:
        """A :class:`mallkit.readcache.ReadCache` of rows of the tables of ``keys`` (their key
        columns), invalidated by this engine's committed writes on every replica of the service
        (core NATS); it serves while its broadcast runs (a background task of :meth:`serve`)."""
        cache = ReadCache(name, ttl=ttl, max_size=max_size)
        broadcast = CacheBroadcast(self.bus, self.service, cache)
        track_writes(self.engine, keys, broadcast.invalidated)
        self.broadcasts.append(broadcast)
        return cache

    def serve(self, app: Any, *, domain: str, servicers: Iterable[Servicer],
              handlers: Mapping[str, tuple[type[Message], Callable]] | None = None, jobs: Iterable[Job] = (),
              background: bool = True, principal_lookup: Lookup | None = None) -> ServiceHost:
        """Build the service's host: server, health, relay, consumers and jobs (``background=False``: none).

        Member and staff tokens are served only while their account exists and is active
        (:mod:`mallkit.principals`): ``principal_lookup`` answers that (the members service passes
        its own database's); by default the members service is asked."""
        servicers = list(servicers)
        if handlers:
            self.subscribe(app, handlers)
        tasks = []
        s = self.settings
        if background:
            poll = self.settings.outbox_poll_seconds
            if s.relay_enabled:
                tasks.append(lambda stop: self.relay.run(stop, poll))
            tasks += [c.run for c in self.consumers]
            tasks += [b.run for b in self.broadcasts]
            tasks += [periodic(j.name, j.interval, j.run) for j in jobs]
        host = ServiceHost(
            service=self.service, domain=domain, codec=self.codec, descriptors=[s.descriptor for s in servicers],
            host=self.settings.host, port=self.settings.port, readiness=lambda: ping(self.engine),
            background=tasks, drain_seconds=self.settings.drain_seconds,
            max_connection_age=self.settings.max_connection_age_seconds, reuse_port=self.settings.workers > 1,
            principals=PrincipalCheck(principal_lookup or self.members.active_principals,
                                      ttl=self.settings.platform.principal_cache_seconds),
        )
        for s in servicers:  # answers never carry an INPUT_ONLY field (mallkit.output)
            host.add(s.register, filter_outputs(s.servicer, s.descriptor))
        self.host = host
        return host

    def batch_writer(self, name: str, write: Callable[[list], Any], **options) -> BatchWriter:
        """A :class:`mallkit.batching.BatchWriter` drained on shutdown (:meth:`drain`)."""
        writer: BatchWriter = BatchWriter(name, write, **options)
        self.writers.append(writer)
        return writer

    async def drain(self, within: float = 30.0) -> None:
        """Write what the batch writers hold (after the server stopped taking calls, before the
        engine is disposed)."""
        for writer in self.writers:
            await writer.close(within)

    async def close(self) -> None:
        """Release what the platform opened (after the server stopped)."""
        await self.peers.close()
        await self.bus.close()
        if self.owns_engine:
            await self.engine.dispose()


class ServiceApp:
    """Base of each service's app (a dataclass in its ``app.py`` whose first field is ``platform``):
    start, stop and the port, plus the platform's parts by name."""

    platform: Platform

    @property
    def settings(self):
        return self.platform.settings

    @property
    def engine(self) -> AsyncEngine:
        return self.platform.engine

    @property
    def sessions(self):
        return self.platform.sessions

    @property
    def host(self) -> ServiceHost:
        assert self.platform.host is not None, "platform.serve() was not called"
        return self.platform.host

    @property
    def port(self) -> int:
        return self.host.port

    async def start(self) -> int:
        return await self.host.start()

    async def close(self) -> None:
        """Release the service's own clients (after the server stopped)."""

    async def stop(self, grace: float | None = None) -> None:
        await self.host.stop(self.settings.grace_seconds if grace is None else grace)
        await self.platform.drain()  # rows the batch writers accepted are written before exit
        await self.close()
        await self.platform.close()
