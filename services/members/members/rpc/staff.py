"""RPCs of stores and staff, and the staff sign-in."""

from __future__ import annotations

from mall.members.v1 import members_service_pb2 as pb
from mallkit.auth import STAFF, Principal
from mallkit.names import optional_id, parse_id
from mallkit.pagination import page_size
from mallkit.validation import Validator

from ..messages import (
    USERNAME,
    staff_pb,
    store_pb,
)
from ..staff import role_name
from .base import RpcBase


class StaffRpc(RpcBase):
    async def LoginStaff(self, request, context):
        v = Validator()
        v.pattern("username", request.username, USERNAME, "3 to 32 letters, digits, '_', '-' or '.'", required=True)
        v.check(0 < len(request.password) <= 128, "password", "is required (at most 128 characters)")
        v.done()
        async with self.sessions() as s:
            st = await self.staffing.login_staff(s, request.username, request.password)
        token, expires = self.codec.issue(Principal(STAFF, f"staff/{st.id}", frozenset({role_name(st.role)})))
        out = pb.LoginStaffResponse(access_token=token, staff=staff_pb(st))
        out.expire_time.FromDatetime(expires)
        return out

    async def CreateStore(self, request, context):
        st, v = request.store, Validator()
        v.text("store.display_name", st.display_name, max_len=64, min_len=1)
        v.text("store.region.province", st.region.province, max_len=32)
        v.text("store.region.city", st.region.city, max_len=32)
        v.text("store.address", st.address, max_len=256)
        v.done()

        async def use_case(s):
            return store_pb(await self.staffing.create_store(s, {
                "display_name": st.display_name, "province": st.region.province, "city": st.region.city,
                "address": st.address}))

        return await self.idem.run(request, pb.Store, use_case)

    async def ListStores(self, request, context):
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.staffing.list_stores(s, size, request.page_token)
        return pb.ListStoresResponse(stores=[store_pb(st) for st in rows], next_page_token=token)

    async def CreateStaff(self, request, context):
        st, v = request.staff, Validator()
        v.pattern("staff.username", st.username, USERNAME, "3 to 32 letters, digits, '_', '-' or '.'", required=True)
        v.text("staff.display_name", st.display_name, max_len=32, min_len=1)
        v.enum("staff.role", st.role, pb.StaffRole, required=True)
        v.check(10 <= len(st.password) <= 128, "staff.password", "must be 10 to 128 characters")
        v.check(st.role != pb.STAFF_ROLE_STORE_MANAGER or bool(st.store), "staff.store",
                "is required for a store manager")
        v.done()
        store_id = optional_id(st.store, "stores", "staff.store")

        async def use_case(s):
            return staff_pb(await self.staffing.create_staff(s, username=st.username, display_name=st.display_name,
                                                             role=st.role, store_id=store_id, password=st.password))

        return await self.idem.run(request, pb.Staff, use_case)

    async def GetStaff(self, request, context):
        staff_id = parse_id(request.name, "staff", "name")
        async with self.sessions() as s:
            return staff_pb(await self.staffing.staff(s, staff_id))

    async def ListStaff(self, request, context):
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.staffing.list_staff(s, size, request.page_token)
        return pb.ListStaffResponse(staff=[staff_pb(st) for st in rows], next_page_token=token)
