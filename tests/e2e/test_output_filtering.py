"""Write-only and secret fields never come back (issue 8, class 5), through the real gateway:
a quiz's correct option only after the member answered it (staff always); no staff answer ever
carries a password field; and the platform strips every INPUT_ONLY field from every answer."""

from __future__ import annotations

import uuid

from mall.members.v1 import members_service_pb2 as mpb
from mall.members.v1 import members_service_pb2_grpc as mpb_grpc
from mallkit.output import filter_outputs, has_input_only, strip_input_only


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def staff_token(gw) -> dict:
    r = await gw.post("/v1/staff:login", json={"username": "test-admin", "password": "test-admin-password"})
    assert r.status_code == 200, r.text
    return bearer(r.json()["accessToken"])


async def member_token(gw) -> dict:
    r = await gw.post("/v1/members:loginWithWechat", json={"code": f"q{uuid.uuid4().hex[:10]}"})
    assert r.status_code == 200, r.text
    return bearer(r.json()["accessToken"])


async def test_a_quiz_answer_is_shown_to_staff_and_to_a_member_only_after_answering(community_gateway):
    gw = community_gateway
    staff = await staff_token(gw)
    r = await gw.post("/v1/groups", json={"displayName": "答题群", "type": "GROUP_TYPE_GENERAL", "owner": "staff/3"},
                      headers=staff)
    assert r.status_code == 200, r.text
    group = r.json()["name"]
    r = await gw.post(f"/v1/{group}/posts", headers=staff, json={
        "kind": "POST_KIND_QUIZ", "title": "答题", "quiz": {"question": "宝宝几个月添加辅食?",
                                                           "options": ["3 个月", "6 个月", "12 个月"],
                                                           "correctOption": 1, "rewardPoints": "20"}})
    assert r.status_code == 200, r.text
    quiz = r.json()
    assert quiz["quiz"]["correctOption"] == 1  # staff see it

    async def seen_by(headers) -> dict:
        r = await gw.get(f"/v1/{group}/posts", headers=headers)
        assert r.status_code == 200, r.text
        return next(p for p in r.json()["posts"] if p["name"] == quiz["name"])["quiz"]

    assert (await seen_by(staff))["correctOption"] == 1
    alice, bob = await member_token(gw), await member_token(gw)
    for me in (alice, bob):
        assert (await gw.post(f"/v1/{group}:join", json={}, headers=me)).status_code == 200
        seen = await seen_by(me)
        assert "correctOption" not in seen and seen["options"] == ["3 个月", "6 个月", "12 个月"]
        r = await gw.post(f"/v1/{quiz['name']}:view", json={}, headers=me)
        assert r.status_code == 200, r.text
        assert "correctOption" not in r.json()["post"]["quiz"]

    # Alice answers wrong: told so, and shown the right option; her first answer counts.
    r = await gw.post(f"/v1/{quiz['name']}:answerQuiz", json={"option": 0}, headers=alice)
    assert r.status_code == 200, r.text
    assert r.json()["correct"] is False and r.json()["correctOption"] == 1 and r.json()["rewardPoints"] == "0"
    assert (await seen_by(alice))["correctOption"] == 1
    r = await gw.post(f"/v1/{quiz['name']}:view", json={}, headers=alice)
    assert r.json()["post"]["quiz"]["correctOption"] == 1
    r = await gw.post(f"/v1/{quiz['name']}:answerQuiz", json={"option": 1}, headers=alice)
    assert r.json()["correct"] is True and r.json()["rewardPoints"] == "0"  # knowing the answer earns nothing
    # Bob has not answered: still hidden from him; his right first answer earns the reward.
    assert "correctOption" not in await seen_by(bob)
    r = await gw.post(f"/v1/{quiz['name']}:answerQuiz", json={"option": 1}, headers=bob)
    assert r.json()["correct"] is True and r.json()["rewardPoints"] == "20"


async def test_staff_answers_never_carry_a_password(gateway, members):
    staff = await staff_token(gateway)
    username = f"guide{uuid.uuid4().hex[:8]}"
    password = f"pw-{uuid.uuid4().hex}"
    r = await gateway.post("/v1/staff", headers=staff, json={
        "username": username, "displayName": "导购", "role": "STAFF_ROLE_GUIDE", "password": password})
    assert r.status_code == 200, r.text
    created = r.json()
    assert "password" not in created and password not in r.text
    r = await gateway.get("/v1/staff", params={"pageSize": 100}, headers=staff)
    assert r.status_code == 200, r.text
    listed = r.json()["staff"]
    assert listed and all("password" not in s for s in listed) and password not in r.text
    r = await gateway.get(f"/v1/{created['name']}", headers=staff)
    assert r.status_code == 200 and "password" not in r.json() and password not in r.text
    # The new account signs in with it: the password was read on create, only never returned.
    r = await gateway.post("/v1/staff:login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    # Over gRPC too: the field is not set on any answer.
    async with __import__("grpc").aio.insecure_channel(members.addr) as channel:
        stub = mpb_grpc.MembersServiceStub(channel)
        got = await stub.GetStaff(mpb.GetStaffRequest(name=created["name"]), metadata=(
            ("authorization", staff["Authorization"]),))
    assert not got.HasField("password")


class _Leaky:
    """A servicer that (wrongly) puts a password in its answer."""

    async def GetStaff(self, request, context):
        return mpb.Staff(name=request.name, username="x", password="leaked-secret-value")

    async def ListStaff(self, request, context):
        return mpb.ListStaffResponse(staff=[mpb.Staff(name="staff/1", password="leaked-secret-value")])

    async def GetMember(self, request, context):
        return mpb.Member(name=request.name)


async def test_the_platform_strips_input_only_fields_from_every_answer():
    service = mpb.DESCRIPTOR.services_by_name["MembersService"]
    leaky = filter_outputs(_Leaky(), service)
    one = await leaky.GetStaff(mpb.GetStaffRequest(name="staff/1"), None)
    many = await leaky.ListStaff(mpb.ListStaffRequest(), None)
    assert one.username == "x" and not one.HasField("password")
    assert not many.staff[0].HasField("password")
    assert leaky.GetMember.__name__ == "GetMember"  # RPCs without such fields are passed through
    # The class, not the example: every INPUT_ONLY field of every proto has presence (``optional``),
    # so once stripped it is absent from the gateway's JSON, where "every field present" would
    # otherwise print it empty.
    from google.api import field_behavior_pb2

    from mall.community.v1 import community_service_pb2
    from mall.orders.v1 import orders_service_pb2
    from mall.points.v1 import points_service_pb2

    def messages(container):
        for d in container.message_types_by_name.values() if hasattr(container, "message_types_by_name") \
                else container.nested_types:
            yield d
            yield from messages(d)

    input_only = []
    for module in (mpb, community_service_pb2, orders_service_pb2, points_service_pb2):
        for d in messages(module.DESCRIPTOR):
            for f in d.fields:
                if field_behavior_pb2.INPUT_ONLY in f.GetOptions().Extensions[field_behavior_pb2.field_behavior]:
                    input_only.append(f.full_name)
                    assert f.has_presence, f"{f.full_name} is INPUT_ONLY: declare it optional"
    assert "mall.members.v1.Staff.password" in input_only
    answers = {m.output_type.full_name for module in (mpb,) for sd in module.DESCRIPTOR.services_by_name.values()
               for m in sd.methods if has_input_only(m.output_type)}
    assert {"mall.members.v1.Staff", "mall.members.v1.ListStaffResponse"} <= answers
    assert strip_input_only(mpb.Staff(password="p")).ByteSize() == 0
