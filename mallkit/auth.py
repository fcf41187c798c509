"""Authentication and coarse authorization, the same in every service.

Every call carries ``authorization: Bearer <token>``: a member session token
(issued at WeChat login), a staff session token (with a role) or a short-lived
service token (minted by a calling service for itself). Tokens are JWTs signed
with HS256 and ``MALL_TOKEN_SECRET``; only HS256 is accepted, so ``alg=none``
and algorithm confusion are refused.

Who may call which RPC is declared in the proto with the ``mall.auth.v1.access``
method option; :func:`authorize` enforces it. Ownership (a member may only see
their own data) is checked by each service with :func:`member_scope`.
"""

from __future__ import annotations

import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime

import jwt
from google.protobuf.descriptor import MethodDescriptor

from mallkit.errors import InvalidArgument, PermissionDenied, Unauthenticated
from mallkit.names import member_key

ALGORITHM = "HS256"
ISSUER = "mall"

MEMBER = "member"
STAFF = "staff"
SERVICE = "service"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a member, a staff account with roles, or a service."""

    kind: str  # MEMBER | STAFF | SERVICE
    subject: str  # "members/42", "staff/3", "service/orders"
    roles: frozenset[str] = field(default_factory=frozenset)

    @property
    def id(self) -> str:
        """The last segment of the subject: "42" for "members/42"."""
        return self.subject.rsplit("/", 1)[-1]

    @property
    def is_member(self) -> bool:
        return self.kind == MEMBER

    @property
    def is_staff(self) -> bool:
        return self.kind == STAFF

    @property
    def is_service(self) -> bool:
        return self.kind == SERVICE


#: The principal of the call being served (set by the server interceptor).
current_principal: ContextVar[Principal | None] = ContextVar("current_principal", default=None)


def principal() -> Principal:
    """The caller; raises UNAUTHENTICATED outside an authenticated call."""
    p = current_principal.get()
    if p is None:
        raise Unauthenticated("authentication required")
    return p


#: Verified tokens a codec remembers (about 300 bytes each).
VERIFIED_CACHE_SIZE = 10_000


class TokenCodec:
    """Issues and verifies signed, expiring tokens."""

    def __init__(self, secret: str, *, member_ttl: int = 7 * 86400, staff_ttl: int = 12 * 3600):
        if len(secret) < 32:
            raise ValueError("token secret must be at least 32 characters")
        self._secret = secret
        self.member_ttl = member_ttl
        self.staff_ttl = staff_ttl
        self._service_cache: dict[str, tuple[str, float]] = {}
        self._verified: dict[str, tuple[Principal, float]] = {}  # token -> (principal, exp)

    def issue(self, p: Principal, ttl: int | None = None) -> tuple[str, datetime]:
        """A token for ``p`` and its expiry time."""
        if ttl is None:
            ttl = self.member_ttl if p.is_member else self.staff_ttl if p.is_staff else 300
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": p.subject,
            "typ": p.kind,
            "roles": sorted(p.roles),
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        return token, datetime.fromtimestamp(now + ttl, UTC)

    def service_token(self, service: str) -> str:
        """A cached short-lived token for a service calling another one."""
        cached = self._service_cache.get(service)
        if cached and cached[1] - time.time() > 60:
            return cached[0]
        token, exp = self.issue(Principal(SERVICE, f"service/{service}"), ttl=300)
        self._service_cache[service] = (token, exp.timestamp())
        return token

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; UNAUTHENTICATED otherwise.

        A token that verified is remembered until its expiry (a bounded number of them):
        the same bytes give the same answer until then, so a session's next requests skip
        the HMAC and claim checks (the gateway and the service each verify every call)."""
        hit = self._verified.get(token)
        if hit is not None and time.time() < hit[1]:
            return hit[0]
        p, exp = self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (p, exp)
        return p

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired", reason="TOKEN_EXPIRED", zh="登录已过期,请重新登录")
        except jwt.PyJWTError:
            raise Unauthenticated("invalid token", reason="TOKEN_INVALID", zh="登录状态无效,请重新登录")
        kind = str(claims.get("typ", ""))
        sub = str(claims.get("sub", ""))
        expected_prefix = {MEMBER: "members/", STAFF: "staff/", SERVICE: "service/"}.get(kind)
        if expected_prefix is None or not sub.startswith(expected_prefix):
            raise Unauthenticated("invalid token", reason="TOKEN_INVALID", zh="登录状态无效,请重新登录")
        roles = claims.get("roles") or []
        return Principal(kind, sub, frozenset(str(r) for r in roles)), float(claims["exp"])


def bearer(metadata: dict[str, str] | None) -> str | None:
    """The token of an ``authorization: Bearer ...`` value, if any."""
    if not metadata:
        return None
    return _bearer_token(metadata.get("authorization", ""))


def bearer_of(metadata) -> str | None:
    """:func:`bearer` of a call's metadata as gRPC hands it over (key/value pairs; the last
    ``authorization`` counts, as in a dict of them), without building the dict."""
    value = ""
    for key, v in metadata or ():
        if key == "authorization":
            value = v
    return _bearer_token(value) if value else None


def _bearer_token(value) -> str | None:
    if not isinstance(value, str):
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def access_policy(method: MethodDescriptor):  # -> mall.auth.v1.access_pb2.AccessPolicy | None
    """The ``mall.auth.v1.access`` option of an RPC, or None."""
    from mall.auth.v1 import access_pb2

    opts = method.GetOptions()
    if not opts.HasExtension(access_pb2.access):
        return None
    return opts.Extensions[access_pb2.access]


def authorize(policy, p: Principal | None) -> None:
    """Raise unless the policy admits the principal (None: no token)."""
    if policy is None:
        raise PermissionDenied("method is not callable", reason="METHOD_NOT_EXPOSED")
    if policy.public:
        return
    if p is None:
        raise Unauthenticated("authentication required", reason="TOKEN_MISSING")
    if p.is_member and policy.member:
        return
    if p.is_service and policy.service:
        return
    if p.is_staff and p.roles & set(policy.staff_roles):
        return
    raise PermissionDenied(
        "caller may not call this method",
        reason="ROLE_NOT_ALLOWED",
        metadata={"principal": p.kind},
    )


def member_scope(name: str, field: str = "name", collection: str = "members") -> int:
    """Resolve ``members/{id}`` or ``members/me`` for the current caller.

    Members may only name themselves (PERMISSION_DENIED otherwise, before any
    lookup, so existence is never revealed); staff and services may name any
    member but not ``me``. Returns the numeric member id.
    """
    p = principal()
    key = member_key(name, field, collection)
    if key == "me":
        if not p.is_member:
            raise InvalidArgument.field(field, "'me' is only valid for members")
        return int(p.id)
    if p.is_member and key != p.id:
        raise PermissionDenied(
            "members may only access their own data", reason="NOT_OWNER", zh="无权访问他人的信息"
        )
    return int(key)
