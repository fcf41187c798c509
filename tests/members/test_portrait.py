"""Profile / portrait: partial updates, validation naming fields, ownership, phone consent."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from mall.members.v1 import members_service_pb2 as pb
from mallkit.errors import error_info, status_of
from tests.fixtures.members import rid


async def _violations(err) -> list[str]:
    from google.rpc import error_details_pb2

    st = await status_of(err)
    out = []
    for d in st.details:
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            d.Unpack(br)
            out += [v.field for v in br.field_violations]
    return out


async def test_partial_update_changes_only_masked_fields(members):
    login, md = await members.login()
    m = pb.Member(name="members/me", nickname="小红", occupation="设计师", gender=pb.GENDER_FEMALE)
    m.birthday.year, m.birthday.month, m.birthday.day = 1990, 5, 17
    m.region.province, m.region.city = "浙江省", "杭州市"
    updated = await members.stub.UpdateMember(
        pb.UpdateMemberRequest(member=m, update_mask=field_mask_pb2.FieldMask(paths=["nickname", "birthday", "region"])),
        metadata=md,
    )
    assert updated.nickname == "小红" and updated.birthday.year == 1990 and updated.region.city == "杭州市"
    assert updated.occupation == "" and updated.gender == pb.GENDER_UNSPECIFIED  # not in the mask
    again = await members.stub.UpdateMember(
        pb.UpdateMemberRequest(member=pb.Member(name="members/me", occupation="老师"),
                               update_mask=field_mask_pb2.FieldMask(paths=["occupation"])), metadata=md)
    assert again.nickname == "小红" and again.occupation == "老师"


async def test_bad_fields_are_all_named_and_nothing_is_written(members):
    login, md = await members.login()
    m = pb.Member(name="members/me", nickname="x" * 33, avatar_url="javascript:alert(1)", phone="12345", gender=7)
    m.birthday.year, m.birthday.month, m.birthday.day = 2020, 2, 30
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.UpdateMember(pb.UpdateMemberRequest(
            member=m, update_mask=field_mask_pb2.FieldMask(paths=["nickname", "avatar_url", "phone", "gender", "birthday"])),
            metadata=md)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = await _violations(e.value)
    # The declared rules (mall.api.v1.field, checked by the platform for every service) are named at once;
    # the date's validity is the service's own check, named once those pass.
    assert {"member.nickname", "member.avatar_url", "member.phone", "member.gender"} <= set(fields)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.UpdateMember(pb.UpdateMemberRequest(
            member=pb.Member(name="members/me", birthday=m.birthday), update_mask=field_mask_pb2.FieldMask(
                paths=["birthday"])), metadata=md)
    assert await _violations(e.value) == ["member.birthday"]
    me = await members.stub.GetMember(pb.GetMemberRequest(name="members/me"), metadata=md)
    assert me.nickname == "" and me.avatar_url == ""


async def test_injection_and_markup_are_refused(members):
    _, md = await members.login()
    for bad in ["<script>alert(1)</script>", "a\x00b"]:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await members.stub.UpdateMember(pb.UpdateMemberRequest(
                member=pb.Member(name="members/me", nickname=bad),
                update_mask=field_mask_pb2.FieldMask(paths=["nickname"])), metadata=md)
        assert await _violations(e.value) == ["member.nickname"]
    for bad_name in ["members/1 OR 1=1", "members/1'; DROP TABLE members;--", "members/../staff/1"]:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await members.stub.GetMember(pb.GetMemberRequest(name=bad_name), metadata=await members.staff())
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert await _violations(e.value) == ["name"]


async def test_unknown_and_output_only_mask_paths_are_refused(members):
    _, md = await members.login()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.UpdateMember(pb.UpdateMemberRequest(
            member=pb.Member(name="members/me"), update_mask=field_mask_pb2.FieldMask(paths=["openid"])), metadata=md)
    assert await _violations(e.value) == ["update_mask"]
    # Output-only fields are INVALID_ARGUMENT, never silently ignored (mallkit.constraints, for every service).
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.UpdateMember(pb.UpdateMemberRequest(
            member=pb.Member(name="members/me", growth_value=10**9, nickname="ok"),
            update_mask=field_mask_pb2.FieldMask(paths=["growth_value", "nickname"])), metadata=md)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(await _violations(e.value)) == {"update_mask", "member.growth_value"}
    out = await members.stub.GetMember(pb.GetMemberRequest(name="members/me"), metadata=md)
    assert out.growth_value == 0 and out.nickname != "ok"  # nothing was applied


async def test_member_cannot_read_or_change_another_member(members):
    a, md_a = await members.login()
    b, _ = await members.login()
    for name in [b.member.name, "members/999999999"]:  # existing or not: the same answer
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await members.stub.GetMember(pb.GetMemberRequest(name=name), metadata=md_a)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await members.stub.UpdateMember(pb.UpdateMemberRequest(
                member=pb.Member(name=name, nickname="hacked"), update_mask=field_mask_pb2.FieldMask(paths=["nickname"])),
                metadata=md_a)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    staff = await members.staff()
    assert (await members.stub.GetMember(pb.GetMemberRequest(name=b.member.name), metadata=staff)).nickname == ""


async def test_no_token_forged_token_and_wrong_role(members):
    from mallkit.auth import STAFF, Principal, TokenCodec

    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.GetMember(pb.GetMemberRequest(name="members/me"))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    forged = TokenCodec("another-secret-that-is-long-enough-32").issue(Principal(STAFF, "staff/1", frozenset({"admin"})))[0]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.ListMembers(pb.ListMembersRequest(), metadata=members.auth(forged))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    _, md = await members.login()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.ListMembers(pb.ListMembersRequest(), metadata=md)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as e:  # internal RPC, member token
        await members.stub.AddGrowth(pb.AddGrowthRequest(member="members/1", amount=1, source="x", request_id=rid()),
                                     metadata=md)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_phone_needs_consent_and_withdrawal_erases_it(members):
    _, md = await members.login()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.UpdateMember(pb.UpdateMemberRequest(
            member=pb.Member(name="members/me", phone="13800138000"),
            update_mask=field_mask_pb2.FieldMask(paths=["phone"])), metadata=md)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(await status_of(e.value)).reason == "PHONE_CONSENT_REQUIRED"
    ok = await members.stub.UpdateMember(pb.UpdateMemberRequest(
        member=pb.Member(name="members/me", phone="13800138000", phone_consent=True),
        update_mask=field_mask_pb2.FieldMask(paths=["phone", "phone_consent"])), metadata=md)
    assert ok.phone == "13800138000"
    gone = await members.stub.UpdateMember(pb.UpdateMemberRequest(
        member=pb.Member(name="members/me", phone_consent=False),
        update_mask=field_mask_pb2.FieldMask(paths=["phone_consent"])), metadata=md)
    assert gone.phone == "" and not gone.phone_consent


async def test_brand_attributes_are_typed(members):
    staff = await members.staff()
    key = "child_birth_date"
    try:
        await members.stub.CreateAttributeDefinition(pb.CreateAttributeDefinitionRequest(
            attribute_definition=pb.AttributeDefinition(key=key, display_name="宝宝生日", type=pb.ATTRIBUTE_TYPE_DATE)),
            metadata=staff)
    except grpc.aio.AioRpcError as e:
        assert e.code() == grpc.StatusCode.ALREADY_EXISTS
    _, md = await members.login()
    ok = await members.stub.UpdateMember(pb.UpdateMemberRequest(
        member=pb.Member(name="members/me", attributes={key: "2024-03-01"}),
        update_mask=field_mask_pb2.FieldMask(paths=[f"attributes.{key}"])), metadata=md)
    assert ok.attributes[key] == "2024-03-01"
    for paths, attrs, field in [([f"attributes.{key}"], {key: "next spring"}, f"member.attributes.{key}"),
                                (["attributes.shoe_size"], {"shoe_size": "42"}, "member.attributes.shoe_size")]:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await members.stub.UpdateMember(pb.UpdateMemberRequest(
                member=pb.Member(name="members/me", attributes=attrs),
                update_mask=field_mask_pb2.FieldMask(paths=paths)), metadata=md)
        assert await _violations(e.value) == [field]
    me = await members.stub.GetMember(pb.GetMemberRequest(name="members/me"), metadata=md)
    assert dict(me.attributes) == {key: "2024-03-01"}
