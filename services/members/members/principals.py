"""Which principals of session tokens still name an active account (members' own answer).

The members service checks its own database; the other services ask it through
``CheckPrincipals`` (both through :class:`mallkit.principals.PrincipalCheck`'s cache,
which batches concurrent lookups).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mall.members.v1 import members_service_pb2 as pb
from mallkit.errors import InvalidArgument

from .models import Member, Staff

SUBJECT = re.compile(r"(members|staff)/([1-9][0-9]{0,17})", re.ASCII)
MAX_BATCH = 1000


def parse_subjects(subjects: Iterable[str], field: str = "principals") -> dict[str, tuple[str, int]]:
    out = {}
    for i, subject in enumerate(subjects):
        m = SUBJECT.fullmatch(subject)
        if m is None:
            raise InvalidArgument.field(f"{field}[{i}]", "must look like members/{id} or staff/{id}")
        out[subject] = (m.group(1), int(m.group(2)))
    return out


async def active_of(s: AsyncSession, subjects: Iterable[str]) -> set[str]:
    """The subjects whose member exists, or whose staff account exists and is not disabled."""
    parsed = parse_subjects(subjects)
    members = {key for kind, key in parsed.values() if kind == "members"}
    staff = {key for kind, key in parsed.values() if kind == "staff"}
    found = set()
    if members:
        found |= {f"members/{i}" for i in (await s.execute(select(Member.id).where(Member.id.in_(members)))).scalars()}
    if staff:
        found |= {f"staff/{i}" for i in (await s.execute(
            select(Staff.id).where(Staff.id.in_(staff), Staff.disabled.is_(False)))).scalars()}
    return found


def lookup(sessions: async_sessionmaker[AsyncSession]):
    """The lookup of :class:`mallkit.principals.PrincipalCheck` inside the members service."""

    async def run(subjects: list[str]) -> set[str]:
        async with sessions() as s:
            return await active_of(s, subjects)

    return run


async def check(sessions: async_sessionmaker[AsyncSession], request: pb.CheckPrincipalsRequest) -> pb.CheckPrincipalsResponse:
    """The whole of ``CheckPrincipals``."""
    if not 1 <= len(request.principals) <= MAX_BATCH:
        raise InvalidArgument.field("principals", f"1 to {MAX_BATCH} principals")
    parse_subjects(request.principals)
    async with sessions() as s:
        active = await active_of(s, request.principals)
    return pb.CheckPrincipalsResponse(active_principals=sorted(active))
