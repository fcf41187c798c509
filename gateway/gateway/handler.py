"""The API endpoint: one HTTP request -> one upstream RPC.

In order, each step answering early with a JSON error:

1. per-IP rate limit (429);
2. route lookup (404, 405), after ``X-HTTP-Method-Override: PATCH`` on POST;
3. bearer token (401) and the RPC's access policy (401/403);
4. per-caller rate limit (429);
5. body read within ``max_body_bytes`` (413) and binding (400);
6. the RPC, with ``authorization``, ``x-request-id`` and ``x-forwarded-for``
   forwarded, and the trace context (:class:`gateway.upstream.Upstreams`: the OpenTelemetry
   interceptor for a sampled request, ``traceparent`` added directly for the others).

An RPC answering ``google.api.HttpBody`` (a CSV export) is answered with its ``data`` as the
body and its ``content_type``, not as JSON.

The services check tokens and policies again themselves: the gateway answers
early, it is not the only door. On a public route (login) a token that does
not verify is ignored and not forwarded, so an expired session never blocks
signing in again.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, quote

import grpc
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from gateway import binding
from gateway.errors import (
    BodyTooLargeError,
    InvalidFieldError,
    MethodNotAllowedError,
    RateLimitedError,
    RouteNotFoundError,
    error_response,
    status_response,
    upstream_status,
)
from gateway.ratelimit import TokenBuckets
from gateway.routing import NoRouteError, Route, RouteTable, WrongMethodError
from gateway.upstream import Upstreams
from mallkit.auth import Principal, TokenCodec, authorize, bearer
from mallkit.errors import MallError, Unauthenticated, status_of

log = logging.getLogger(__name__)

#: Scope key where the matched route template is left for metrics.
ROUTE_KEY = "gateway.route"
#: Scope key of the route lookups of the request, by HTTP method (one match per request).
MATCHES_KEY = "gateway.matches"
#: Scope state key of the request id (set by the edge middleware).
REQUEST_ID = "request_id"


def client_ip(scope: Scope) -> str:
    """The client address (uvicorn's proxy-headers support sets it from trusted proxies)."""
    client = scope.get("client")
    return client[0] if client else "unknown"


def first_headers(scope: Scope) -> dict[str, str]:
    """The request's headers by (lowercase, as ASGI servers send them) name, the first value of a
    repeated one: what ``starlette.datastructures.Headers.get`` answers, in one pass."""
    out: dict[str, str] = {}
    for key, value in scope["headers"]:
        name = key.decode("latin-1")
        if name not in out:
            out[name] = value.decode("latin-1")
    return out


class ApiEndpoint:
    """ASGI endpoint of every route derived from the protos."""

    def __init__(
        self,
        table: RouteTable,
        upstreams: Upstreams,
        codec: TokenCodec,
        *,
        max_body_bytes: int,
        ip_limits: TokenBuckets,
        caller_limits: TokenBuckets,
        fixed_paths: dict[str, list[str]] | None = None,
    ):
        #: Paths the app serves itself (``/healthz``...) and their methods: another method is 405 there.
        self.fixed_paths = fixed_paths or {}
        self.table = table
        self.upstreams = upstreams
        self.codec = codec
        self.max_body_bytes = max_body_bytes
        self.ip_limits = ip_limits
        self.caller_limits = caller_limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await self.handle(scope, receive)
        except MallError as err:
            response = error_response(err)
        await response(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive) -> Response:
        ip = client_ip(scope)
        wait = self.ip_limits.take(ip)
        if wait:
            raise RateLimitedError(f"ip:{ip}", "requests per client IP", wait)

        headers = first_headers(scope)
        http_method = self._effective_method(scope["method"], headers)
        route, path_values = self._match(http_method, scope)
        scope[ROUTE_KEY] = route.template.text

        principal, authorization = self._authenticate(headers.get("authorization"), route)
        authorize(route.policy, principal)
        if principal is not None:
            wait = self.caller_limits.take(principal.subject)
            if wait:
                raise RateLimitedError(principal.subject, "requests per signed-in caller", wait)

        body = await self._read_body(Request(scope, receive), headers) if route.body else b""
        if route.raw is not None:
            message = binding.bind_raw(route, Headers(scope=scope), body)
        else:
            query = scope.get("query_string", b"")
            message = binding.bind_request(
                route,
                http_method,
                path_values,
                parse_qsl(query.decode("latin-1"), keep_blank_values=True) if query else (),
                body,
                headers.get("idempotency-key", "").strip() or None,
            )

        metadata = [("x-forwarded-for", ip)]
        request_id = scope.get("state", {}).get(REQUEST_ID)
        if request_id:
            metadata.append(("x-request-id", request_id))
        if authorization:
            metadata.append(("authorization", authorization))
        try:
            reply = await self.upstreams.call(route, message, metadata)
        except grpc.aio.AioRpcError as err:
            status = upstream_status(await status_of(err), route.service)
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                log.warning("upstream %s failed: %s", route.rpc_path, err.code().name)
            return status_response(status)
        if reply.DESCRIPTOR.full_name == binding.HTTP_BODY:
            return Response(reply.data, media_type=reply.content_type or "application/octet-stream")
        return JSONResponse(binding.response_json(route, reply))

    @staticmethod
    def _effective_method(method: str, headers: dict[str, str]) -> str:
        override = headers.get("x-http-method-override", "").strip().upper()
        if method == "POST" and override and override != "POST":
            if override != "PATCH":
                raise InvalidFieldError.one("X-HTTP-Method-Override", "only PATCH may override POST")
            return "PATCH"
        return method

    @staticmethod
    def _lookup(table: RouteTable, http_method: str, scope: Scope) -> tuple[Route, dict] | Exception:
        """The route of the request for ``http_method``, matched once per request: the span
        name (the tracing middleware, first) and the handler share the answer in the scope."""
        memo = scope.setdefault(MATCHES_KEY, {})
        found = memo.get(http_method)
        if found is None:
            raw = scope.get("raw_path")
            path = raw.decode("latin-1") if raw else quote(scope["path"], safe="/:@!$&'()*+,;=~")
            try:
                found = table.match(http_method, path)
            except (WrongMethodError, NoRouteError) as exc:
                found = exc
            memo[http_method] = found
        return found

    def template_of(self, scope: Scope, http_method: str) -> str | None:
        """The template the request is routed to for ``http_method`` (span names), or None."""
        found = self._lookup(self.table, http_method, scope)
        return None if isinstance(found, Exception) else found[0].template.text

    def _match(self, http_method: str, scope: Scope) -> tuple[Route, dict]:
        found = self._lookup(self.table, http_method, scope)
        if isinstance(found, WrongMethodError):
            raise MethodNotAllowedError(http_method, found.allowed)
        if isinstance(found, NoRouteError):
            if scope["path"] in self.fixed_paths:
                raise MethodNotAllowedError(http_method, self.fixed_paths[scope["path"]])
            raise RouteNotFoundError(f"no route for {http_method} {scope['path']}")
        return found

    def _authenticate(self, header: str | None, route: Route) -> tuple[Principal | None, str | None]:
        """The verified caller and the header to forward (None, None without a token).

        ``header``: the request's ``Authorization`` (its first one), or None."""
        if header is None:
            return None, None
        try:
            token = bearer({"authorization": header})
            if token is None:
                raise Unauthenticated(
                    "authorization must be 'Bearer <token>'", reason="TOKEN_INVALID", zh="登录状态无效,请重新登录"
                )
            return self.codec.verify(token), header
        except Unauthenticated:
            if route.is_public:
                return None, None
            raise

    async def _read_body(self, request: Request, headers: dict[str, str]) -> bytes:
        limit = self.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                raise InvalidFieldError.one("Content-Length", "must be an integer")
            if int(declared) > limit:
                raise BodyTooLargeError(limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLargeError(limit)
            chunks.append(chunk)
        return b"".join(chunks)
