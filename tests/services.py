"""The running system for tests: real services on 127.0.0.1 with their own migrated databases, and the gateway."""

from __future__ import annotations

import uuid

import grpc
import pytest

from mall.members.v1 import members_service_pb2 as pb
from mall.members.v1 import members_service_pb2_grpc as pb_grpc
from mallkit.auth import SERVICE, Principal, TokenCodec
from mallkit.settings import PlatformSettings
from mallkit.testing import service_database
from members.app import SERVICE_DIR, build
from members.config import MembersSettings
from members.seed import ensure_admin

ADMIN = ("test-admin", "test-admin-password")


def members_settings(url: str, wechat_url: str, **overrides) -> MembersSettings:
    return MembersSettings(
        port=0, database_url=url, wechat_base_url=wechat_url, outbox_poll_seconds=0.05, outbox_max_backoff_seconds=1.0,
        platform=PlatformSettings(env="test"), **overrides,
    )


class Members:
    """The running service and ways to call it as a member, staff or a service."""

    def __init__(self, app, engine, url):
        self.app = app
        self.engine = engine
        self.url = url
        self.addr = f"127.0.0.1:{app.port}"
        self.channel = grpc.aio.insecure_channel(self.addr)
        self.stub = pb_grpc.MembersServiceStub(self.channel)
        self.codec = TokenCodec(app.settings.platform.token_secret.get_secret_value())

    @staticmethod
    def auth(token: str):
        return (("authorization", f"Bearer {token}"),)

    @property
    def service_md(self):
        return self.auth(self.codec.issue(Principal(SERVICE, "service/orders"))[0])

    async def login(self, user: str | None = None, **kw) -> tuple[pb.LoginWithWechatResponse, tuple]:
        user = user or f"u{uuid.uuid4().hex[:12]}"
        resp = await self.stub.LoginWithWechat(pb.LoginWithWechatRequest(code=f"{user}#{uuid.uuid4().hex[:6]}", **kw))
        return resp, self.auth(resp.access_token)

    async def staff(self) -> tuple:
        resp = await self.stub.LoginStaff(pb.LoginStaffRequest(username=ADMIN[0], password=ADMIN[1]))
        return self.auth(resp.access_token)


@pytest.fixture(scope="session")
async def members_db(backend, tmp_root):
    async with service_database("members", backend, tmp_root, SERVICE_DIR) as (url, engine):
        yield url, engine


@pytest.fixture(scope="session")
async def members(members_db, fake_wechat):
    url, engine = members_db
    await ensure_admin(engine, *ADMIN)
    app = build(members_settings(url, fake_wechat.url), engine=engine)
    await app.start()
    m = Members(app, engine, url)
    yield m
    await m.channel.close()
    await app.stop(grace=1)


def rid() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="session")
async def gateway(members):
    """The real HTTP gateway in front of the members service (over ASGI; real HTTP in tests that need it)."""
    import httpx

    from gateway.app import create_app
    from gateway.config import GatewaySettings

    settings = GatewaySettings(
        services=["members"], rate_per_ip=10_000, burst_per_ip=10_000, rate_per_member=10_000, burst_per_member=10_000,
        platform=PlatformSettings(env="test", members_addr=members.addr),
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mall.test") as client:
            client.app = app
            yield client
