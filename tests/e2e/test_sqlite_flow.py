"""The whole members flow on SQLite (the zero-setup default), over real HTTP, whatever the test backend."""

from __future__ import annotations

import uuid

import httpx

from gateway.app import create_app
from gateway.config import GatewaySettings
from mallkit.settings import PlatformSettings
from mallkit.testing import HttpServer, service_database
from members.app import SERVICE_DIR, build
from members.seed import ensure_admin
from tests.fixtures.members import members_settings


async def test_whole_flow_on_sqlite_over_real_http(tmp_root, fake_wechat):
    async with service_database("members_sqlite", "sqlite", tmp_root, SERVICE_DIR) as (url, engine):
        await ensure_admin(engine, "flow-admin", "flow-admin-password")
        app = build(members_settings(url, fake_wechat.url), engine=engine)
        await app.start()
        gw = HttpServer(create_app(GatewaySettings(
            services=["members"], platform=PlatformSettings(env="test", members_addr=f"127.0.0.1:{app.port}"))))
        await gw.start()
        try:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                staff = (await http.post("/v1/staff:login", json={"username": "flow-admin",
                                                                   "password": "flow-admin-password"})).json()
                sh = {"Authorization": f"Bearer {staff['accessToken']}"}
                tier = await http.post("/v1/tiers", json={"displayName": "普通", "growthThreshold": "0"}, headers=sh)
                assert tier.status_code == 200, tier.text
                group = (await http.post("/v1/tagGroups", json={"displayName": "兴趣", "selection": "TAG_SELECTION_MULTIPLE"},
                                         headers=sh)).json()
                tag = (await http.post(f"/v1/{group['name']}/tags", json={"displayName": "奶粉"}, headers=sh)).json()
                code = (await http.post("/v1/channelCodes", json={"displayName": "包裹卡", "channelType": "CHANNEL_TYPE_PACKAGE_CARD",
                                                                  "tags": [tag["name"]]}, headers=sh)).json()
                inviter = (await http.post("/v1/members:loginWithWechat", json={"code": f"inv{uuid.uuid4().hex[:6]}"})).json()
                session = (await http.post("/v1/members:loginWithWechat", json={
                    "code": f"new{uuid.uuid4().hex[:6]}", "channelCode": code["scene"],
                    "inviteCode": inviter["member"]["inviteCode"]})).json()
                member = session["member"]
                assert member["tier"] == tier.json()["name"]
                assert member["firstTouchChannelCode"] == code["name"]
                assert member["inviter"] == inviter["member"]["name"]
                mh = {"Authorization": f"Bearer {session['accessToken']}"}
                upd = await http.patch("/v1/members/me", json={"nickname": "小丽"}, headers=mh)
                assert upd.status_code == 200 and upd.json()["nickname"] == "小丽"
                tags = (await http.get(f"/v1/{member['name']}/tags", headers=sh)).json()["memberTags"]
                assert [t["tag"] for t in tags] == [tag["name"]] and tags[0]["source"] == "TAG_SOURCE_CHANNEL_CODE"
                assert (await http.get("/healthz")).json()["status"] == "SERVING"
        finally:
            await gw.stop()
            await app.stop(grace=0)
