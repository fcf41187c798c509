"""The principal cache: one lookup for many concurrent calls, bounded, refusals kept briefly, errors never kept."""

from __future__ import annotations

import asyncio

import pytest

from mallkit.auth import MEMBER, SERVICE, Principal
from mallkit.errors import Unauthenticated, Unavailable
from mallkit.principals import PrincipalCheck


class Directory:
    def __init__(self):
        self.active = {"members/1": True, "members/2": False}
        self.calls: list[str] = []
        self.fail = False

    async def lookup(self, subject: str) -> bool:
        self.calls.append(subject)
        await asyncio.sleep(0.01)
        if self.fail:
            raise Unavailable("down", reason="PRINCIPALS_UNAVAILABLE")
        return self.active.get(subject, False)


async def test_concurrent_calls_share_one_lookup_and_the_answer_is_cached():
    d = Directory()
    check = PrincipalCheck(d.lookup, ttl=30)
    await asyncio.gather(*[check.require(Principal(MEMBER, "members/1")) for _ in range(50)])
    await check.require(Principal(MEMBER, "members/1"))
    assert d.calls == ["members/1"]
    await check.require(Principal(SERVICE, "service/orders"))  # services are not accounts
    assert d.calls == ["members/1"]


async def test_refusals_are_cached_for_less_time_and_errors_not_at_all():
    d = Directory()
    check = PrincipalCheck(d.lookup, ttl=30, negative_ttl=0.05)
    with pytest.raises(Unauthenticated):
        await check.require(Principal(MEMBER, "members/2"))
    d.active["members/2"] = True  # e.g. registered meanwhile
    for _ in range(200):  # the refusal expires after negative_ttl
        try:
            await check.require(Principal(MEMBER, "members/2"))
            break
        except Unauthenticated:
            await asyncio.sleep(0.01)
    else:
        pytest.fail("the refusal was never looked up again")
    d.fail = True
    with pytest.raises(Unavailable):
        await check.require(Principal(MEMBER, "members/3"))
    d.fail = False
    with pytest.raises(Unauthenticated):  # asked again: the failure was not cached as "allowed" or "refused"
        await check.require(Principal(MEMBER, "members/3"))
    assert d.calls.count("members/3") == 2


async def test_the_cache_is_bounded_and_the_ttl_capped():
    d = Directory()
    check = PrincipalCheck(d.lookup, ttl=30, max_size=10)
    for i in range(100):
        await check.active(f"members/{i}")
    assert len(check._cache) <= 10
    with pytest.raises(ValueError):
        PrincipalCheck(d.lookup, ttl=61)
