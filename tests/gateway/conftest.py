"""Gateway fixtures: a real grpc.aio members server with a small servicer, and the gateway in front.

The upstream runs on ``mallkit.server.ServiceHost`` (the same bootstrap as the
real services: OpenTelemetry, token and policy checks, typed errors -> rich
status, health), so what the gateway forwards is checked again on the other
side. The servicer records every call it receives, with its metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import grpc
import httpx
import jwt
import pytest
from google.protobuf import timestamp_pb2

from gateway import GatewaySettings, create_app
from mall.members.v1 import members_service_pb2 as pb
from mall.members.v1 import members_service_pb2_grpc as pb_grpc
from mallkit.auth import MEMBER, SERVICE, STAFF, Principal, TokenCodec
from mallkit.errors import FailedPrecondition, FieldViolation, NotFound
from mallkit.server import ServiceHost
from mallkit.settings import PlatformSettings

SECRET = "gateway-tests-token-secret-0123456789abcdef"
CODEC = TokenCodec(SECRET)
MEMBERS_SERVICE = pb.DESCRIPTOR.services_by_name["MembersService"]


@dataclass
class Call:
    method: str
    request: object
    metadata: dict[str, str]


class FakeMembers(pb_grpc.MembersServiceServicer):
    """Answers a few RPCs and records what reached it."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def _record(self, method: str, request, context) -> None:
        md = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        self.calls.append(Call(method, request, md))

    def methods(self) -> list[str]:
        return [c.method for c in self.calls]

    def last(self, method: str) -> Call:
        return [c for c in self.calls if c.method == method][-1]

    async def LoginWithWechat(self, request, context):
        self._record("LoginWithWechat", request, context)
        return pb.LoginWithWechatResponse(access_token="t0k", member=pb.Member(name="members/42"), created=True)

    async def GetMember(self, request, context):
        self._record("GetMember", request, context)
        if request.name == "members/404":
            raise NotFound(
                "member not found", reason="MEMBER_NOT_FOUND", zh="会员不存在", resource=("member", request.name)
            )
        if request.name == "members/500":
            raise RuntimeError("password=hunter2 in a stack trace")
        if request.name == "members/501":
            await context.abort(grpc.StatusCode.INTERNAL, "Traceback: secret internals")
        if request.name == "members/504":
            await asyncio.sleep(3)
        return pb.Member(
            name=request.name,
            nickname="小明",
            gender=pb.GENDER_FEMALE,
            growth_value=1234,
            create_time=timestamp_pb2.Timestamp(seconds=1_700_000_000),
        )

    async def ListMembers(self, request, context):
        self._record("ListMembers", request, context)
        return pb.ListMembersResponse(members=[pb.Member(name="members/1")], next_page_token="next")

    async def UpdateMember(self, request, context):
        self._record("UpdateMember", request, context)
        return request.member

    async def ApplyTags(self, request, context):
        self._record("ApplyTags", request, context)
        if "tagGroups/single/tags/a" in request.tags and "tagGroups/single/tags/b" in request.tags:
            status = FailedPrecondition(
                "two tags of a single-select group",
                reason="SINGLE_SELECT_CONFLICT",
                zh="同一单选标签组只能选一个标签",
                field_violations=[FieldViolation("tags", "two tags of group tagGroups/single")],
            ).to_status("members.mall")
            from grpc_status import rpc_status

            await context.abort_with_status(rpc_status.to_status(status))
        return pb.ApplyTagsResponse(applied_count=len(request.members) * len(request.tags))

    async def CreateTier(self, request, context):
        self._record("CreateTier", request, context)
        return request.tier

    async def ListTags(self, request, context):
        self._record("ListTags", request, context)
        return pb.ListTagsResponse()

    async def DeleteTag(self, request, context):
        self._record("DeleteTag", request, context)
        from google.protobuf import empty_pb2

        return empty_pb2.Empty()

    async def RecordSubscriptions(self, request, context):
        self._record("RecordSubscriptions", request, context)
        return pb.RecordSubscriptionsResponse(remaining={t: 1 for t in request.accepted_template_ids})

    async def AddGrowth(self, request, context):  # internal: must never be reached through the gateway
        self._record("AddGrowth", request, context)
        return pb.AddGrowthResponse()

    async def SendReach(self, request, context):  # internal too
        self._record("SendReach", request, context)
        return pb.Touch()


@dataclass
class Upstream:
    host: ServiceHost
    servicer: FakeMembers
    port: int
    stopped: bool = field(default=False)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.host.stop(grace=0)


@pytest.fixture
async def upstream():
    servicer = FakeMembers()
    host = ServiceHost(
        service="members", domain="members.mall", codec=CODEC, descriptors=[MEMBERS_SERVICE]
    )
    host.add(pb_grpc.add_MembersServiceServicer_to_server, servicer)
    port = await host.start()
    up = Upstream(host, servicer, port)
    yield up
    await up.stop()


def gateway_settings(upstream_addr: str, **overrides) -> GatewaySettings:
    """Settings pointing at ``upstream_addr``, with rate limits off unless asked for."""
    values = dict(services=["members"], rate_per_ip=0, rate_per_member=0, call_timeout_seconds=2.0,
                  health_timeout_seconds=0.5)
    values.update(overrides)
    return GatewaySettings(
        platform=PlatformSettings(env="test", token_secret=SECRET, members_addr=upstream_addr), **values
    )


@contextlib.asynccontextmanager
async def running_gateway(settings: GatewaySettings, client_ip: str = "203.0.113.7"):
    """The gateway app with its lifespan entered, and an httpx client over ASGI."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(client_ip, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture
async def gw(upstream):
    async with running_gateway(gateway_settings(upstream.addr)) as client:
        yield client


def bearer(principal: Principal, ttl: int | None = None, codec: TokenCodec = CODEC) -> dict[str, str]:
    return {"Authorization": f"Bearer {codec.issue(principal, ttl)[0]}"}


MEMBER_42 = Principal(MEMBER, "members/42")
ADMIN = Principal(STAFF, "staff/1", frozenset({"admin"}))
GUIDE = Principal(STAFF, "staff/2", frozenset({"guide"}))
ORDERS = Principal(SERVICE, "service/orders")


@pytest.fixture
def member_auth() -> dict[str, str]:
    return bearer(MEMBER_42)


@pytest.fixture
def admin_auth() -> dict[str, str]:
    return bearer(ADMIN)


def unsigned_token(subject: str = "members/42") -> str:
    """An ``alg=none`` token with otherwise valid claims."""
    now = int(time.time())
    claims = {"iss": "mall", "sub": subject, "typ": MEMBER, "roles": [], "iat": now, "exp": now + 600}
    return jwt.encode(claims, None, algorithm="none")


def error_of(response: httpx.Response) -> dict:
    """The ``error`` object of a JSON error response, with its details by type."""
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "status", "message", "details"}, err
    assert err["code"] == response.status_code
    err["by_type"] = {d["@type"].rsplit(".", 1)[-1]: d for d in err["details"]}
    return err


def violations(response: httpx.Response) -> dict[str, str]:
    """Field -> description of the BadRequest detail of a 400."""
    bad = error_of(response)["by_type"]["BadRequest"]
    return {v["field"]: v["description"] for v in bad["fieldViolations"]}
