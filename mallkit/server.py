"""The grpc.aio server bootstrap shared by every service.

:class:`ServiceHost` builds the server with, in order, the OpenTelemetry
interceptor behind its sampling gate (:class:`mallkit.telemetry.SampledServerInterceptor`:
an unsampled call skips it) and :class:`PlatformInterceptor` (authentication and the access
policy of the proto, then the account behind a member/staff token must exist
and be active (``principals``, :mod:`mallkit.principals`), context variables,
typed errors -> google.rpc.Status, metrics); registers the gRPC health service, whose readiness follows the
database, and reflection; runs background tasks (outbox relay, event consumers, schedulers);
and on SIGTERM/SIGINT flips health to NOT_SERVING, stops the background tasks
and drains in-flight calls for ``grace`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from mallkit.auth import TokenCodec, access_policy, authorize, bearer_of, current_principal
from mallkit.constraints import RequestRules
from mallkit.db import is_unavailable
from mallkit.errors import MallError, Unavailable, internal_status
from mallkit.idempotency import current_method
from mallkit.principals import PrincipalCheck
from mallkit.telemetry import RPC_DURATION, RPC_ERRORS, current_trace_id, grpc_server_interceptor

log = logging.getLogger("mallkit.server")

BackgroundTask = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


class PlatformInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates, authorizes and maps errors for the RPCs of our services."""

    def __init__(self, service: str, domain: str, codec: TokenCodec, descriptors: Iterable[ServiceDescriptor],
                 principals: PrincipalCheck | None = None):
        self.service = service
        self.principals = principals  # the account behind member/staff tokens must exist (mallkit.principals)
        #: method -> a refusal answered from memory before the account check (ServiceHost.precheck)
        self.prechecks: dict[str, Callable[[Any], None]] = {}
        self.domain = domain
        self.codec = codec
        self.rules = RequestRules(descriptors)
        self.policies = {
            f"/{sd.full_name}/{m.name}": access_policy(m) for sd in descriptors for m in sd.methods
        }
        self._wrapped: dict[str, tuple[Any, Any]] = {}  # method -> (the servicer's handler, ours)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None and wrapped[0] is handler:
            return wrapped[1]  # built once per method: the server hands out the same handler every call
        if handler is None or method not in self.policies or not handler.unary_unary:
            return handler  # health, reflection: no auth
        ours = self._wrap(method, handler)
        self._wrapped[method] = (handler, ours)
        return ours

    def _wrap(self, method: str, handler):
        policy = self.policies[method]
        inner = handler.unary_unary
        precheck = self.prechecks.get(method)
        name = method.rsplit("/", 1)[-1]
        durations: dict[Any, Any] = {}  # status code -> the labelled histogram (labels() takes a lock)
        errors: dict[Any, Any] = {}

        async def behaviour(request, context: grpc.aio.ServicerContext):
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            t1 = current_principal.set(None)
            t2 = current_method.set(method)
            try:
                token = bearer_of(context.invocation_metadata())
                principal = self.codec.verify(token) if token else None
                current_principal.set(principal)
                authorize(policy, principal)
                if precheck is not None:
                    precheck(request)  # a refusal from memory: no effect, no I/O, so before the account check
                if principal is not None and self.principals is not None and not policy.public:
                    await self.principals.require(principal)
                self.rules.check(method, request)  # the field rules declared in the proto (mallkit.constraints)
                return await inner(request, context)
            except MallError as err:
                # A refusal is an answer, not an exception: set the status and return, so no
                # exception crosses the tracing interceptor (it formats the traceback of every
                # one it sees, twice: most of the CPU of a refusal such as a sold-out flash sale).
                code = err.code
                status = rpc_status.to_status(err.to_status(self.domain))
                context.set_trailing_metadata(status.trailing_metadata)
                context.set_code(status.code)
                context.set_details(status.details)
                return None
            except (asyncio.CancelledError, grpc.aio.AbortError):
                code = context.code() or grpc.StatusCode.CANCELLED  # type: ignore[assignment]
                raise
            except Exception as exc:
                if is_unavailable(exc):
                    code = grpc.StatusCode.UNAVAILABLE
                    log.warning("database unavailable in %s: %s", method, type(exc).__name__, extra={"method": method})
                    status = Unavailable("database busy or unreachable, retry", reason="DATABASE_UNAVAILABLE")
                    await context.abort_with_status(rpc_status.to_status(status.to_status(self.domain)))
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error in %s trace_id=%s", method, current_trace_id(), extra={"method": method})
                await context.abort_with_status(rpc_status.to_status(internal_status(self.domain)))
            finally:
                current_principal.reset(t1)
                current_method.reset(t2)
                duration = durations.get(code)
                if duration is None:
                    duration = durations[code] = RPC_DURATION.labels(self.service, name, code.name)
                duration.observe(time.perf_counter() - start)
                if code != grpc.StatusCode.OK:
                    failed = errors.get(code)
                    if failed is None:
                        failed = errors[code] = RPC_ERRORS.labels(self.service, name, code.name)
                    failed.inc()

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class ServiceHost:
    """One service's gRPC server, health, reflection and background tasks."""

    def __init__(
        self,
        *,
        service: str,
        domain: str,
        codec: TokenCodec,
        descriptors: list[ServiceDescriptor],
        host: str = "127.0.0.1",
        port: int = 0,
        readiness: Callable[[], Awaitable[bool]] | None = None,
        background: Iterable[BackgroundTask] = (),
        readiness_interval: float = 5.0,
        drain_seconds: float = 0.0,
        principals: PrincipalCheck | None = None,
        max_connection_age: float = 0.0,
        reuse_port: bool = False,
    ):
        self.service = service
        self.descriptors = descriptors
        self.readiness = readiness
        self.readiness_interval = readiness_interval
        self.drain_seconds = drain_seconds
        self.background = list(background)
        self.platform_interceptor = PlatformInterceptor(service, domain, codec, descriptors, principals)
        self.server = grpc.aio.server(
            interceptors=[grpc_server_interceptor(), self.platform_interceptor],
            options=[("grpc.so_reuseport", 1 if reuse_port else 0),  # several worker processes share the port
                     ("grpc.max_receive_message_length", 4 * 1024 * 1024),
                     # Callers balance round-robin over the addresses they resolved; closing each
                     # connection after this age (GOAWAY, calls in flight finish) makes them resolve
                     # again, so pods added by a scale-up get their share.
                     *([("grpc.max_connection_age_ms", int(max_connection_age * 1000)),
                        ("grpc.max_connection_age_grace_ms", 30_000)] if max_connection_age > 0 else [])],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [sd.full_name for sd in descriptors]
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        self.bind = f"{host}:{port}"
        self.port = 0
        self._stop = asyncio.Event()
        self._stopped = False
        self._tasks: list[asyncio.Task] = []

    def add(self, register: Callable[[object, grpc.aio.Server], None], servicer: object) -> None:
        """Mount a servicer: ``host.add(add_XServicer_to_server, servicer)``."""
        register(servicer, self.server)

    def precheck(self, method: str, check: Callable[[Any], None]) -> None:
        """Let ``method`` (``/package.Service/Method``) refuse a request from memory before the
        account behind its token is checked (:mod:`mallkit.principals`: a call to members on a
        replica's first request of that member). ``check(request)`` raises a :class:`MallError`
        to refuse, returns to go on; it runs after the token is verified and the method's
        access policy applied, before the field rules, so it must accept any request (leave a
        malformed one to the handler) and must not do I/O or have any effect. Register before
        the server starts."""
        if method not in self.platform_interceptor.policies:
            raise ValueError(f"{method} is not a method of this host")
        self.platform_interceptor.prechecks[method] = check

    async def _set_all(self, status) -> None:
        for sd in self.descriptors:
            await self.health.set(sd.full_name, status)

    async def _watch_readiness(self) -> None:
        while not self._stop.is_set():
            ok = True if self.readiness is None else await self.readiness()
            await self._set_all(
                health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            try:
                await asyncio.wait_for(self._stop.wait(), self.readiness_interval)
            except TimeoutError:
                pass

    async def start(self) -> int:
        """Bind, start serving, start background tasks; returns the bound port."""
        self.port = self.server.add_insecure_port(self.bind)
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.server.start()
        self._tasks = [asyncio.create_task(self._watch_readiness())]
        self._tasks += [asyncio.create_task(task(self._stop)) for task in self.background]
        return self.port

    async def stop(self, grace: float = 5.0, drain: float | None = None) -> None:
        """Drain: NOT_SERVING first and keep serving ``drain`` seconds (so probes and
        load balancers stop sending), stop background work, then stop the server,
        letting calls in flight finish within ``grace`` seconds."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        drain = self.drain_seconds if drain is None else drain
        if drain > 0:
            await asyncio.sleep(drain)
        self._stop.set()
        for t in self._tasks:
            try:
                await asyncio.wait_for(t, timeout=grace)
            except (TimeoutError, asyncio.CancelledError):
                t.cancel()
            except Exception:
                log.exception("background task failed while stopping")
        await self.server.stop(grace)

    async def run_until_signalled(self, grace: float, on_signal: Callable[[int], None] | None = None) -> None:
        """Serve until SIGTERM or SIGINT (passed on to ``on_signal`` too), then drain."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def signalled(sig: int) -> None:
            stop.set()
            if on_signal is not None:
                on_signal(sig)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, signalled, sig)
        await stop.wait()
        log.info("%s draining (grace %.0fs)", self.service, grace)
        await self.stop(grace)
        log.info("%s stopped", self.service)
