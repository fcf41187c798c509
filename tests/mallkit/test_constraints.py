"""mallkit.constraints on the real request messages (the rules come from the protos)."""

from __future__ import annotations

import pytest
from google.protobuf import field_mask_pb2

from mall.members.v1 import members_service_pb2 as mpb
from mall.orders.v1 import orders_service_pb2 as opb
from mallkit.auth import MEMBER, STAFF, Principal, current_principal
from mallkit.constraints import check_request
from mallkit.errors import InvalidArgument, PermissionDenied
from mallkit.names import ID_PATTERN, is_id, member_key, parse_id, parse_ids


def fields(exc: InvalidArgument) -> set[str]:
    return {v.field for v in exc.field_violations}


def test_names_are_ascii_digits_only_and_whole():
    assert ID_PATTERN == "[1-9][0-9]{0,17}"
    for bad in ["²", "١", "１", "1\n", "1 ", "01", "0", "-1", "1" * 19]:
        assert not is_id(bad)
        with pytest.raises(InvalidArgument):
            parse_id(f"orders/{bad}", "orders", "name")
    assert parse_ids("tagGroups/3/tags/7", "tagGroups/{}/tags/{}", "tag") == (3, 7)
    assert member_key("members/me") == "me" and member_key("members/12") == "12"
    with pytest.raises(InvalidArgument):
        member_key("members/١")


def test_declared_rules_name_every_bad_field():
    req = opb.CreateAddressRequest(parent="members/me", address=opb.Address(
        recipient="x" * 33, phone="12345", province="浙江省", city="杭州市", detail="湖滨路"))
    with pytest.raises(InvalidArgument) as e:
        check_request(req)
    assert fields(e.value) == {"address.recipient", "address.phone"}
    req.address.recipient, req.address.phone = "张三", "13800138000"
    check_request(req)


def test_required_is_checked_on_what_can_be_told():
    with pytest.raises(InvalidArgument) as e:
        check_request(opb.CreateAddressRequest(parent="members/me", address=opb.Address(phone="13800138000")))
    assert {"address.recipient", "address.province", "address.city", "address.detail"} <= fields(e.value)
    # Not on requests of service-only RPCs, nor inside the resource of an update.
    check_request(opb.CreateAddressRequest(parent="members/me", address=opb.Address()), required=False)
    check_request(mpb.UpdateMemberRequest(member=mpb.Member(name="members/me", nickname="新"),
                                          update_mask=field_mask_pb2.FieldMask(paths=["nickname"])))


def test_output_only_and_unknown_enums_are_refused():
    with pytest.raises(InvalidArgument) as e:
        check_request(mpb.UpdateMemberRequest(member=mpb.Member(name="members/me", growth_value=5),
                                              update_mask=field_mask_pb2.FieldMask(paths=["growth_value"])))
    assert fields(e.value) == {"update_mask", "member.growth_value"}
    with pytest.raises(InvalidArgument) as e:
        check_request(mpb.UpdateMemberRequest(member=mpb.Member(name="members/me", gender=7),
                                              update_mask=field_mask_pb2.FieldMask(paths=["gender"])))
    assert fields(e.value) == {"member.gender"}


def test_a_member_naming_another_member_is_denied_before_anything_else():
    token = current_principal.set(Principal(MEMBER, "members/5"))
    try:
        with pytest.raises(PermissionDenied):  # even with bad fields: ownership is answered first
            check_request(opb.CreateAddressRequest(parent="members/6", address=opb.Address(phone="1")))
        with pytest.raises(InvalidArgument):
            check_request(opb.CreateAddressRequest(parent="members/5", address=opb.Address(phone="1")))
    finally:
        current_principal.reset(token)
    token = current_principal.set(Principal(STAFF, "staff/1", frozenset({"admin"})))
    try:
        check_request(opb.ListAddressesRequest(parent="members/6"))  # staff may name any member
    finally:
        current_principal.reset(token)
