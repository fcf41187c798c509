"""The gateway's Starlette app. :func:`create_app` builds everything; importing
this module creates no channel, metric or other global.

Routes:

* every ``google.api.http`` binding of the exposed services (:mod:`gateway.handler`);
* ``GET /healthz``: gRPC health of every upstream (200 or 503);
* ``GET /metrics``: Prometheus exposition;
* ``GET /openapi.json`` and ``GET /docs``: the API, generated from the protos.

Every response carries ``x-request-id`` (the client's, or a new one) and, when
traced, the ``traceparent`` of the gateway's server span. The ASGI app is
wrapped in OpenTelemetry's middleware, so an incoming ``traceparent`` continues
into the upstream calls; ``/healthz`` and ``/metrics`` are not traced.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextlib import asynccontextmanager

from opentelemetry import trace
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route as HttpRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import SERVICES, GatewaySettings
from gateway.docs import render_docs
from gateway.errors import DOMAIN, MethodNotAllowedError, RouteNotFoundError, error_response
from gateway.handler import REQUEST_ID, ROUTE_KEY, ApiEndpoint
from gateway.metrics import UNMATCHED, GatewayMetrics
from gateway.openapi import build_openapi
from gateway.ratelimit import TokenBuckets
from gateway.routing import RouteTable, build_routes
from gateway.tracing import SampledTracing
from gateway.upstream import Upstreams
from mallkit.auth import TokenCodec
from mallkit.errors import MallError

log = logging.getLogger(__name__)
_access = logging.getLogger("gateway.access")

UNTRACED = ("/healthz", "/metrics")
_FIXED = {"/healthz", "/metrics", "/openapi.json", "/docs"}
_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # fullmatch: "$" allows a trailing newline


def _traceparent() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


class EdgeMiddleware:
    """Request id, ``traceparent`` on responses, metrics, the access log (``GATEWAY_ACCESS_LOG``)
    and a JSON 500 of last resort."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics, access_log: bool = False):
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        incoming = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID_RE.fullmatch(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})[REQUEST_ID] = request_id
        status, started = 500, False

        async def send_with_headers(message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                traceparent = _traceparent()
                if traceparent:
                    headers["traceparent"] = traceparent
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("unhandled error serving %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await error_response(MallError("internal error", domain=DOMAIN))(scope, receive, send_with_headers)
        finally:
            path = scope.get("path", "")
            route = scope.get(ROUTE_KEY) or (path if path in _FIXED else UNMATCHED)
            method = scope.get("method", "")
            method = method if method in _METHODS else "OTHER"
            elapsed = time.perf_counter() - start
            self.metrics.observe(method, route, status, elapsed)
            if self.access_log:  # the route's template, never the raw path (ids, query strings)
                _access.info("%s %s %d", method, route, status, extra={
                    "route": route, "status": status, "duration_ms": round(elapsed * 1000, 3), "request_id": request_id})


class ApiFirst:
    """Innermost middleware: a request for any path but the app's fixed ones goes straight to
    the API endpoint, without Starlette's ExceptionMiddleware (and the ``Request`` it builds),
    Router and Route: the catch-all route would take it anyway, and the endpoint answers its
    own errors (JSON 404/405 included). Fixed paths, a ``root_path`` and lifespan events go
    through the router as before."""

    def __init__(self, app: ASGIApp, api: ASGIApp, fixed: frozenset[str]):
        self.app = app
        self.api = api
        self.fixed = fixed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.fixed and not scope.get("root_path"):
            await self.api(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class _Gateway(Starlette):
    """Starlette, except that an API request (see :class:`ApiFirst`) skips the outermost
    ServerErrorMiddleware (a wrapper around every ``send``): EdgeMiddleware, inside it, already
    answers any error before the response starts with a JSON 500, and after that both only
    re-raise to the server."""

    edge: ASGIApp | None = None

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        # ServerErrorMiddleware(SampledTracing(EdgeMiddleware(...))): the tracing gate inside it
        self.edge = stack.app if isinstance(stack, ServerErrorMiddleware) else stack
        return stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        if scope["type"] == "http" and scope["path"] not in _FIXED and not scope.get("root_path"):
            scope["app"] = self
            await self.edge(scope, receive, send)
            return
        await self.middleware_stack(scope, receive, send)


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (should the catch-all route ever miss): the AIP-193 JSON error."""
    status = getattr(exc, "status_code", 500)
    if status == 405:
        allow = (getattr(exc, "headers", None) or {}).get("Allow", "GET")
        return error_response(MethodNotAllowedError(request.method, [m.strip() for m in allow.split(",")]))
    if status == 404:
        return error_response(RouteNotFoundError(f"no route for {request.method} {request.url.path}"))
    return error_response(MallError("internal error", domain=DOMAIN))


def create_app(settings: GatewaySettings | None = None) -> Starlette:
    """The gateway for ``settings`` (read from the environment when None).

    Channels to the services are opened in the app's lifespan, so the app must
    be run by a server that sends lifespan events (uvicorn does), or entered
    with ``app.router.lifespan_context(app)`` in tests.
    """
    settings = settings or GatewaySettings()
    services = {name: SERVICES[name].descriptor() for name in settings.services}
    routes = build_routes(services.items())
    table = RouteTable(routes)
    upstreams = Upstreams(settings, {name: s.full_name for name, s in services.items()})
    metrics = GatewayMetrics()
    api = ApiEndpoint(
        table,
        upstreams,
        TokenCodec(settings.platform.token_secret.get_secret_value()),
        max_body_bytes=settings.max_body_bytes,
        ip_limits=TokenBuckets(
            settings.rate_per_ip, settings.burst_per_ip, max_keys=settings.rate_limit_max_keys
        ),
        caller_limits=TokenBuckets(
            settings.rate_per_member, settings.burst_per_member, max_keys=settings.rate_limit_max_keys
        ),
        fixed_paths={path: ["GET", "HEAD"] for path in _FIXED},
    )
    openapi_doc = build_openapi(routes, services)
    docs_html = render_docs(openapi_doc)

    async def healthz(request: Request) -> Response:
        upstream = await upstreams.health()
        ok = all(v == "SERVING" for v in upstream.values())
        return JSONResponse(
            {"status": "SERVING" if ok else "NOT_SERVING", "upstreams": upstream},
            status_code=200 if ok else 503,
        )

    async def prometheus(request: Request) -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_doc)

    async def docs(request: Request) -> Response:
        return HTMLResponse(docs_html)

    def span_details(scope: Scope) -> tuple[str, dict]:
        method = scope.get("method", "HTTP")
        template = api.template_of(scope, method)
        if template is None and method == "POST":  # X-HTTP-Method-Override: PATCH
            template = api.template_of(scope, "PATCH")
        if template is None:
            return method, {}
        return f"{method} {template}", {"http.route": template}

    @asynccontextmanager
    async def lifespan(app: Starlette):
        await upstreams.start()
        try:
            yield
        finally:
            await upstreams.close(grace=1.0)
            log.info("gateway stopped: upstream channels closed")

    app = _Gateway(
        routes=[
            HttpRoute("/healthz", healthz, methods=["GET"]),
            HttpRoute("/metrics", prometheus, methods=["GET"]),
            HttpRoute("/openapi.json", openapi, methods=["GET"]),
            HttpRoute("/docs", docs, methods=["GET"]),
            HttpRoute("/{path:path}", api),  # every method: an ASGI endpoint (JSON 404/405 included)
        ],
        exception_handlers={HTTPException: _http_exception},
        middleware=[
            Middleware(SampledTracing, span_details=span_details, untraced=UNTRACED),  # gateway.tracing
            Middleware(EdgeMiddleware, metrics=metrics, access_log=settings.access_log),
            Middleware(ApiFirst, api=api, fixed=frozenset(_FIXED)),
        ],
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.routes = routes
    app.state.upstreams = upstreams
    app.state.metrics = metrics
    return app
