"""Stores and staff (admins, operators, guides): accounts, scrypt passwords and the staff login."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mall.members.v1 import members_service_pb2 as pb
from mallkit.db import is_duplicate_key, utcnow
from mallkit.errors import AlreadyExists, FailedPrecondition, NotFound, Unauthenticated
from mallkit.pagination import PageTokens
from mallkit.queries import get_or_not_found, keyset_page

from . import errors as reasons
from .models import Staff, Store

# --- passwords (scrypt, from the standard library) ---------------------------------------

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), dklen=32, n=int(n), r=int(r), p=int(p))
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


_DUMMY_HASH = hash_password(secrets.token_hex(8))


def role_name(role: int) -> str:
    """The token role of a staff role: STAFF_ROLE_ADMIN -> "admin" (names of the generated enum)."""
    return pb.StaffRole.Name(role).removeprefix("STAFF_ROLE_").lower()


class Staffing:
    def __init__(self, pages: PageTokens):
        self.pages = pages

    async def store(self, s: AsyncSession, store_id: int, field: str) -> Store:
        return await get_or_not_found(s, Store, store_id, lambda: NotFound(
            "store not found", reason=reasons.STORE_NOT_FOUND, resource=("store", f"stores/{store_id}"),
            metadata={"field": field}, zh="门店不存在"))

    async def guide(self, s: AsyncSession, staff_id: int, field: str) -> Staff:
        st = await s.get(Staff, staff_id)
        if st is None:
            raise NotFound("staff not found", reason=reasons.STAFF_NOT_FOUND, resource=("staff", f"staff/{staff_id}"),
                           metadata={"field": field}, zh="导购不存在")
        if st.role != pb.STAFF_ROLE_GUIDE:
            raise FailedPrecondition("staff is not a guide", reason=reasons.NOT_A_GUIDE, metadata={"field": field},
                                     zh="该员工不是导购")
        return st

    async def login_staff(self, s: AsyncSession, username: str, password: str) -> Staff:
        st = (await s.execute(select(Staff).where(Staff.username == username))).scalar_one_or_none()
        ok = verify_password(password, st.password_hash if st else _DUMMY_HASH)  # same cost either way
        if st is None or not ok or st.disabled:
            raise Unauthenticated("invalid username or password", reason=reasons.LOGIN_FAILED, zh="用户名或密码错误")
        return st

    async def create_store(self, s: AsyncSession, fields: dict) -> Store:
        st = Store(create_time=utcnow(), **fields)
        s.add(st)
        await s.flush()
        return st

    async def list_stores(self, s: AsyncSession, size: int, token: str) -> tuple[list[Store], str]:
        return await keyset_page(s, select(Store), key=Store.id, tokens=self.pages, page_size=size, page_token=token)

    async def create_staff(self, s: AsyncSession, *, username: str, display_name: str, role: int, store_id: int | None,
                           password: str) -> Staff:
        if store_id is not None:
            await self.store(s, store_id, "staff.store")
        st = Staff(username=username, display_name=display_name, role=role, store_id=store_id,
                   password_hash=hash_password(password), disabled=False, create_time=utcnow())
        s.add(st)
        try:
            async with s.begin_nested():
                await s.flush()
        except IntegrityError as exc:
            if is_duplicate_key(exc):
                raise AlreadyExists("username taken", reason=reasons.USERNAME_TAKEN, metadata={"field": "staff.username"},
                                    zh="用户名已被使用")
            raise
        return st

    async def staff(self, s: AsyncSession, staff_id: int) -> Staff:
        return await get_or_not_found(s, Staff, staff_id, lambda: NotFound(
            "staff not found", reason=reasons.STAFF_NOT_FOUND, resource=("staff", f"staff/{staff_id}"), zh="员工不存在"))

    async def list_staff(self, s: AsyncSession, size: int, token: str) -> tuple[list[Staff], str]:
        return await keyset_page(s, select(Staff), key=Staff.id, tokens=self.pages, page_size=size, page_token=token)
