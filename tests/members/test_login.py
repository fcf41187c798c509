"""WeChat login, referral and tokens, over a real gRPC channel against the fake WeChat."""

from __future__ import annotations

import grpc
import pytest

from mall.members.v1 import members_service_pb2 as pb
from mallkit.errors import error_info, status_of


async def test_login_creates_member_once_and_session_key_never_leaves(members, fake_wechat):
    first, md = await members.login("zoe-login")
    assert first.created and first.member.name.startswith("members/")
    assert first.access_token and first.expire_time.seconds > 0
    again, _ = await members.login("zoe-login")
    assert not again.created and again.member.name == first.member.name
    assert "session" not in str(first).lower()  # no session_key field anywhere in the answer
    me = await members.stub.GetMember(pb.GetMemberRequest(name="members/me"), metadata=md)
    assert me.name == first.member.name and me.invite_code == first.member.invite_code


async def test_invalid_or_reused_code_is_invalid_argument_naming_code(members):
    for code in ["invalid-code", "", "a b"]:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await members.stub.LoginWithWechat(pb.LoginWithWechatRequest(code=code))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = await status_of(e.value)
        assert "code" in str(status)
    await members.stub.LoginWithWechat(pb.LoginWithWechatRequest(code="reuse#1"))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.LoginWithWechat(pb.LoginWithWechatRequest(code="reuse#1"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(await status_of(e.value)).reason == "WECHAT_CODE_INVALID"


async def test_referral_records_inviter_and_emits_one_event(members):
    from sqlalchemy import select

    from members.models import OutboxEvents

    inviter, _ = await members.login()
    invitee, _ = await members.login(invite_code=inviter.member.invite_code)
    assert invitee.created and invitee.member.inviter == inviter.member.name
    again, _ = await members.login(invitee.member.name.split("/")[1] + "-other", invite_code=inviter.member.invite_code)
    assert again.member.inviter == inviter.member.name
    async with members.engine.connect() as conn:
        rows = (await conn.execute(select(OutboxEvents.c.payload).where(
            OutboxEvents.c.event_type == "member.referred"))).scalars().all()
    from mall.events.v1 import events_pb2

    mine = []
    for raw in rows:
        ev = events_pb2.Event.FromString(raw)
        payload = pb.MemberReferredEvent()
        ev.data.Unpack(payload)
        if payload.invitee == invitee.member.name:
            mine.append(payload)
    assert len(mine) == 1 and mine[0].inviter == inviter.member.name


async def test_concurrent_first_logins_of_one_user_make_one_member(members):
    import asyncio
    import uuid

    user = f"race{uuid.uuid4().hex[:8]}"
    results = await asyncio.gather(*[members.login(user) for _ in range(10)])
    names = {r.member.name for r, _ in results}
    assert len(names) == 1
    assert sum(r.created for r, _ in results) == 1


async def test_staff_login_rejects_wrong_password_without_saying_which_part(members):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.LoginStaff(pb.LoginStaffRequest(username="test-admin", password="wrong-password"))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as e2:
        await members.stub.LoginStaff(pb.LoginStaffRequest(username="nobody-here", password="wrong-password"))
    assert e2.value.details() == e.value.details()


async def test_identity_is_for_services_only(members, fake_wechat):
    from fakes.wechat import openid_for

    login, md = await members.login("ident-user")
    ident = await members.stub.GetMemberIdentity(pb.GetMemberIdentityRequest(member=login.member.name),
                                                 metadata=members.service_md)
    assert ident.openid == openid_for(fake_wechat.appid, "ident-user") and ident.app_id == fake_wechat.appid
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.GetMemberIdentity(pb.GetMemberIdentityRequest(member=login.member.name), metadata=md)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
