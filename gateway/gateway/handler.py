"""The API endpoint: one HTTP request -> one upstream RPC.

In order, each step answering early with a JSON error:

1. per-IP rate limit (429);
2. route lookup (404, 405), after ``X-HTTP-Method-Override: PATCH`` on POST;
3. bearer token (401) and the RPC's access policy (401/403);
4. per-caller rate limit (429);
5. body read within ``max_body_bytes`` (413) and binding (400);
6. the RPC, with ``authorization``, ``x-request-id`` and ``x-forwarded-for``
   forwarded (trace context is added by the OpenTelemetry interceptor).

An RPC answering ``google.api.HttpBody`` (a CSV export) is answered with its ``data`` as the
body and its ``content_type``, not as JSON.

The services check tokens and policies again themselves: the gateway answers
early, it is not the only door. On a public route (login) a token that does
not verify is ignored and not forwarded, so an expired session never blocks
signing in again.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import grpc
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
#: Scope state key of the request id (set by the edge middleware).
REQUEST_ID = "request_id"


def client_ip(scope: Scope) -> str:
    """The client address (uvicorn's proxy-headers support sets it from trusted proxies)."""
    client = scope.get("client")
    return client[0] if client else "unknown"


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
        request = Request(scope, receive)
        try:
            response = await self.handle(request)
        except MallError as err:
            response = error_response(err)
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        scope = request.scope
        ip = client_ip(scope)
        wait = self.ip_limits.take(ip)
        if wait:
            raise RateLimitedError(f"ip:{ip}", "requests per client IP", wait)

        http_method = self._effective_method(request)
        route, path_values = self._match(http_method, scope)
        scope[ROUTE_KEY] = route.template.text

        principal, authorization = self._authenticate(request, route)
        authorize(route.policy, principal)
        if principal is not None:
            wait = self.caller_limits.take(principal.subject)
            if wait:
                raise RateLimitedError(principal.subject, "requests per signed-in caller", wait)

        body = await self._read_body(request) if route.body else b""
        if route.raw is not None:
            message = binding.bind_raw(route, request.headers, body)
        else:
            message = binding.bind_request(
                route,
                http_method,
                path_values,
                request.query_params.multi_items(),
                body,
                request.headers.get("idempotency-key", "").strip() or None,
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
    def _effective_method(request: Request) -> str:
        method = request.method
        override = request.headers.get("x-http-method-override", "").strip().upper()
        if method == "POST" and override and override != "POST":
            if override != "PATCH":
                raise InvalidFieldError.one("X-HTTP-Method-Override", "only PATCH may override POST")
            return "PATCH"
        return method

    def _match(self, http_method: str, scope: Scope) -> tuple[Route, dict]:
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else quote(scope["path"], safe="/:@!$&'()*+,;=~")
        try:
            return self.table.match(http_method, path)
        except WrongMethodError as exc:
            raise MethodNotAllowedError(http_method, exc.allowed) from None
        except NoRouteError:
            if scope["path"] in self.fixed_paths:
                raise MethodNotAllowedError(http_method, self.fixed_paths[scope["path"]]) from None
            raise RouteNotFoundError(f"no route for {http_method} {scope['path']}") from None

    def _authenticate(self, request: Request, route: Route) -> tuple[Principal | None, str | None]:
        """The verified caller and the header to forward (None, None without a token)."""
        header = request.headers.get("authorization")
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

    async def _read_body(self, request: Request) -> bytes:
        limit = self.max_body_bytes
        declared = request.headers.get("content-length")
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
