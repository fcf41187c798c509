"""Typed domain errors and their google.rpc.Status form (AIP-193).

Domain code raises a subclass of :class:`MallError`; the server interceptor
(:mod:`mallkit.server`) turns it into a ``google.rpc.Status`` carrying an
``ErrorInfo`` (reason, domain, metadata), ``BadRequest`` field violations for
bad input, ``ResourceInfo`` for missing resources and a zh-CN
``LocalizedMessage`` the mini-program can show. The message is English and
never carries exception text or SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

#: gRPC status code -> HTTP status, as grpc-gateway maps them.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path in the request (``member.nickname``) and why."""

    field: str
    description: str


class MallError(Exception):
    """Base of every domain error. Subclasses fix the canonical code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"
    default_zh = "系统繁忙,请稍后再试"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        zh: str | None = None,
        metadata: Mapping[str, object] | None = None,
        field_violations: Iterable[FieldViolation] = (),
        resource: tuple[str, str] | None = None,
        domain: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.zh = zh or self.default_zh
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}
        self.field_violations = list(field_violations)
        self.resource = resource  # (resource type, resource name)
        self.domain = domain

    def to_status(self, default_domain: str) -> status_pb2.Status:
        details = [
            error_details_pb2.ErrorInfo(
                reason=self.reason, domain=self.domain or default_domain, metadata=self.metadata
            ),
            error_details_pb2.LocalizedMessage(locale="zh-CN", message=self.zh),
        ]
        if self.field_violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in self.field_violations
                    ]
                )
            )
        if self.resource:
            details.append(
                error_details_pb2.ResourceInfo(
                    resource_type=self.resource[0], resource_name=self.resource[1]
                )
            )
        packed = []
        for d in details:
            a = any_pb2.Any()
            a.Pack(d)
            packed.append(a)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)


class InvalidArgument(MallError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"
    default_zh = "请求参数有误"

    @classmethod
    def field(cls, field: str, description: str, zh: str | None = None) -> InvalidArgument:
        """The common case: one bad field."""
        return cls(
            f"invalid {field}: {description}",
            field_violations=[FieldViolation(field, description)],
            metadata={"field": field},
            zh=zh,
        )


class NotFound(MallError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"
    default_zh = "内容不存在"


class AlreadyExists(MallError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"
    default_zh = "已存在"


class FailedPrecondition(MallError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"
    default_zh = "当前状态不允许此操作"


class Aborted(MallError):
    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"
    default_zh = "操作冲突,请重试"


class PermissionDenied(MallError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"
    default_zh = "没有权限"


class Unauthenticated(MallError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"
    default_zh = "请先登录"


class ResourceExhausted(MallError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"
    default_zh = "操作过于频繁,请稍后再试"


class Unavailable(MallError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"
    default_zh = "服务暂不可用,请稍后再试"


def internal_status(domain: str) -> status_pb2.Status:
    """The status of an unexpected exception: no detail of what went wrong."""
    return MallError("internal error", domain=domain).to_status(domain)


def status_from_code(code: grpc.StatusCode, message: str) -> status_pb2.Status:
    """A bare status, for errors raised by gRPC itself (no details)."""
    return status_pb2.Status(code=code.value[0], message=message)


def code_name(code: int) -> str:
    """``5`` -> ``"NOT_FOUND"``."""
    return code_pb2.Code.Name(code) if code in code_pb2.Code.values() else "UNKNOWN"


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo of a status, if it has one."""
    for d in status.details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            return info
    return None


async def status_of(err: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The rich status a server sent (grpc-status-details-bin), or a bare one."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            try:
                st = status_pb2.Status.FromString(value)
            except Exception:
                break
            if st.code == err.code().value[0]:
                return st
    code = err.code()
    return status_from_code(code, err.details() or code.name)
