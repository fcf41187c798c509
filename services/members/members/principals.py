"""Whether the principal of a session token still names an active account (members' own answer).

The members service checks its own database; the other services ask it through
``CheckPrincipal`` (both through :class:`mallkit.principals.PrincipalCheck`'s cache).
"""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mall.members.v1 import members_service_pb2 as pb
from mallkit.errors import InvalidArgument

from .models import Member, Staff

SUBJECT = re.compile(r"(members|staff)/([1-9][0-9]{0,17})", re.ASCII)


def parse_subject(subject: str, field: str = "principal") -> tuple[str, int]:
    m = SUBJECT.fullmatch(subject)
    if m is None:
        raise InvalidArgument.field(field, "must look like members/{id} or staff/{id}")
    return m.group(1), int(m.group(2))


async def is_active(s: AsyncSession, subject: str) -> bool:
    """True when the member exists, or the staff account exists and is not disabled."""
    kind, key = parse_subject(subject)
    if kind == "members":
        return (await s.execute(select(Member.id).where(Member.id == key))).first() is not None
    disabled = (await s.execute(select(Staff.disabled).where(Staff.id == key))).scalar_one_or_none()
    return disabled is False


def lookup(sessions: async_sessionmaker[AsyncSession]):
    """The lookup of :class:`mallkit.principals.PrincipalCheck` inside the members service."""

    async def run(subject: str) -> bool:
        async with sessions() as s:
            return await is_active(s, subject)

    return run


async def check(sessions: async_sessionmaker[AsyncSession], request: pb.CheckPrincipalRequest) -> pb.CheckPrincipalResponse:
    """The whole of ``CheckPrincipal``."""
    parse_subject(request.principal)
    async with sessions() as s:
        active = await is_active(s, request.principal)
    return pb.CheckPrincipalResponse(principal=request.principal, active=active)
