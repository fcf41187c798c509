"""HTTP error responses: every error is ``{"error": {code, status, message, details}}``.

Errors of the services arrive as ``google.rpc.Status`` and keep their details;
the HTTP status comes from :data:`mallkit.errors.HTTP_STATUS`. Errors the
gateway raises itself are :class:`mallkit.errors.MallError` subclasses with the
domain ``gateway.mall``, so both look the same to the mini-program.

Two gateway errors use an HTTP status other than the one of their code:

* a body over the size limit is ``413`` with status ``INVALID_ARGUMENT``
  (the request is wrong, not a quota), reason ``BODY_TOO_LARGE``, field ``body``;
* a known path with another HTTP method is ``405`` (with ``Allow``) and status
  ``UNIMPLEMENTED``, reason ``METHOD_NOT_ALLOWED``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import grpc
from google.protobuf import any_pb2, duration_pb2, json_format
from google.rpc import error_details_pb2, status_pb2
from starlette.responses import JSONResponse

from mallkit.errors import (
    HTTP_STATUS,
    FieldViolation,
    InvalidArgument,
    MallError,
    NotFound,
    ResourceExhausted,
    code_name,
)

DOMAIN = "gateway.mall"

_CODES = {c.value[0]: c for c in grpc.StatusCode}
_BEARER_CHALLENGE = 'Bearer realm="mall"'


class GatewayError(MallError):
    """A MallError that may carry its own HTTP status and headers."""

    http_status: int | None = None

    def headers(self) -> dict[str, str]:
        return {}


class RouteNotFoundError(GatewayError, NotFound):
    default_reason = "ROUTE_NOT_FOUND"
    default_zh = "请求的接口不存在"


class MethodNotAllowedError(GatewayError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "METHOD_NOT_ALLOWED"
    default_zh = "不支持该请求方式"
    http_status = 405

    def __init__(self, method: str, allowed: list[str]):
        super().__init__(
            f"method {method} is not allowed on this path; allowed: {', '.join(allowed)}",
            metadata={"method": method, "allowed": ",".join(allowed)},
        )
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class InvalidJsonError(GatewayError, InvalidArgument):
    default_reason = "INVALID_JSON"
    default_zh = "请求格式有误"

    def __init__(self, description: str):
        super().__init__(
            f"invalid body: {description}",
            field_violations=[FieldViolation("body", description)],
            metadata={"field": "body"},
        )


class InvalidFieldError(GatewayError, InvalidArgument):
    default_reason = "INVALID_FIELD"
    default_zh = "请求参数有误"

    def __init__(self, violations: Iterable[FieldViolation]):
        violations = list(violations)
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        super().__init__(
            f"invalid {first.field}: {first.description}{more}",
            field_violations=violations,
            metadata={"field": first.field},
        )

    @classmethod
    def one(cls, field: str, description: str) -> InvalidFieldError:
        return cls([FieldViolation(field, description)])


class BodyTooLargeError(GatewayError, InvalidArgument):
    default_reason = "BODY_TOO_LARGE"
    default_zh = "请求内容过大"
    http_status = 413

    def __init__(self, limit: int):
        description = f"must be at most {limit} bytes"
        super().__init__(
            f"request body too large: {description}",
            field_violations=[FieldViolation("body", description)],
            metadata={"field": "body", "max_bytes": limit},
        )


class RateLimitedError(GatewayError, ResourceExhausted):
    """429 with ``Retry-After``, ``RetryInfo`` and ``QuotaFailure``."""

    default_reason = "RATE_LIMITED"
    default_zh = "操作过于频繁,请稍后再试"

    def __init__(self, subject: str, description: str, retry_after: float):
        super().__init__(f"too many requests: {description}", metadata={"subject": subject})
        self.subject = subject
        self.description = description
        self.retry_after = retry_after

    def to_status(self, default_domain: str) -> status_pb2.Status:
        st = super().to_status(default_domain)
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(self.retry_after * 1e9))
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=self.subject, description=self.description
                )
            ]
        )
        for detail in (error_details_pb2.RetryInfo(retry_delay=delay), quota):
            packed = any_pb2.Any()
            packed.Pack(detail)
            st.details.append(packed)
        return st

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class UpstreamError(GatewayError):
    """A status produced by gRPC itself (no details): keep the code, hide the text."""

    _REASONS = {
        grpc.StatusCode.UNAVAILABLE: ("UPSTREAM_UNAVAILABLE", "服务暂不可用,请稍后再试"),
        grpc.StatusCode.DEADLINE_EXCEEDED: ("UPSTREAM_TIMEOUT", "服务响应超时,请稍后再试"),
    }

    def __init__(self, code: grpc.StatusCode, service: str, message: str):
        reason, zh = self._REASONS.get(code, (f"UPSTREAM_{code.name}", MallError.default_zh))
        super().__init__(message, reason=reason, zh=zh, metadata={"service": service})
        self.code = code


#: Codes whose bare message may be produced by gRPC internals (exception text,
#: addresses), never shown to clients.
_OPAQUE_CODES = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.CANCELLED,
}


def upstream_status(status: status_pb2.Status, service: str) -> status_pb2.Status:
    """The status to show for an upstream error.

    A rich status (sent by a service's error interceptor) is passed through. A
    bare one comes from gRPC itself or from a handler that bypassed the error
    mapping: it gets a gateway ErrorInfo and, for the codes above, a generic
    message instead of whatever text it carried.
    """
    if status.details:
        return status
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    message = status.message
    if code in _OPAQUE_CODES:
        message = f"upstream {service}: {code.name.lower().replace('_', ' ')}"
    return UpstreamError(code, service, message).to_status(DOMAIN)


def http_status_of(code: int) -> int:
    return HTTP_STATUS.get(_CODES.get(code, grpc.StatusCode.UNKNOWN), 500)


def _detail_json(detail: any_pb2.Any) -> dict:
    try:
        return json_format.MessageToDict(detail, always_print_fields_with_no_presence=True)
    except (TypeError, KeyError, json_format.Error):  # a type this process does not know
        return {"@type": detail.type_url}


def status_response(
    status: status_pb2.Status, http_status: int | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON error response of a google.rpc.Status."""
    code = http_status or http_status_of(status.code)
    body = {
        "error": {
            "code": code,
            "status": code_name(status.code),
            "message": status.message,
            "details": [_detail_json(d) for d in status.details],
        }
    }
    headers = dict(headers or {})
    if code == 401:
        headers.setdefault("WWW-Authenticate", _BEARER_CHALLENGE)
    return JSONResponse(body, status_code=code, headers=headers)


def error_response(err: MallError) -> JSONResponse:
    """The JSON error response of an error raised in the gateway."""
    headers = err.headers() if isinstance(err, GatewayError) else {}
    if err.code == grpc.StatusCode.UNAUTHENTICATED and err.reason != "TOKEN_MISSING":
        headers["WWW-Authenticate"] = _BEARER_CHALLENGE + ', error="invalid_token"'
    http_status = err.http_status if isinstance(err, GatewayError) else None
    return status_response(err.to_status(DOMAIN), http_status, headers)
