"""The principal cache: batched lookups, bounded, refusals kept briefly, errors never kept."""

from __future__ import annotations

import asyncio

import pytest

from mallkit.auth import MEMBER, SERVICE, Principal
from mallkit.errors import Unauthenticated, Unavailable
from mallkit.principals import PrincipalCheck


class Directory:
    def __init__(self):
        self.active = {"members/1"}
        self.calls: list[list[str]] = []
        self.fail = False

    async def lookup(self, subjects: list[str]) -> set[str]:
        self.calls.append(list(subjects))
        await asyncio.sleep(0.01)
        if self.fail:
            raise Unavailable("down", reason="PRINCIPALS_UNAVAILABLE")
        return {s for s in subjects if s in self.active}


async def test_concurrent_calls_are_batched_and_answers_cached():
    d = Directory()
    d.active |= {f"members/{i}" for i in range(100, 1100)}
    check = PrincipalCheck(d.lookup, ttl=30, max_batch=500)
    # 1000 different members and 50 calls for the same one, all at once: three lookups at most.
    await asyncio.gather(*[check.require(Principal(MEMBER, f"members/{i}")) for i in range(100, 1100)],
                         *[check.require(Principal(MEMBER, "members/1")) for _ in range(50)])
    assert len(d.calls) <= 3 and sum(len(c) for c in d.calls) == 1001
    await check.require(Principal(MEMBER, "members/1"))
    await check.require(Principal(SERVICE, "service/orders"))  # services are not accounts
    assert sum(len(c) for c in d.calls) == 1001  # cached


async def test_refusals_are_cached_for_less_time_and_errors_not_at_all():
    d = Directory()
    check = PrincipalCheck(d.lookup, ttl=30, negative_ttl=0.05)
    with pytest.raises(Unauthenticated):
        await check.require(Principal(MEMBER, "members/2"))
    d.active.add("members/2")  # e.g. registered meanwhile
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
    assert sum(c.count("members/3") for c in d.calls) == 2


async def test_the_cache_is_bounded_and_the_ttl_capped():
    d = Directory()
    check = PrincipalCheck(d.lookup, ttl=30, max_size=10)
    for i in range(100):
        await check.active(f"members/{i}")
    assert len(check._cache) <= 10
    with pytest.raises(ValueError):
        PrincipalCheck(d.lookup, ttl=61)


def test_a_verified_token_is_remembered_until_its_expiry_and_bad_ones_never(monkeypatch):
    import time

    import jwt

    from mallkit.auth import TokenCodec

    codec = TokenCodec("a-test-secret-that-is-long-enough-for-hs256")
    token, _ = codec.issue(Principal(MEMBER, "members/7"), ttl=3600)
    decodes = []
    real = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: decodes.append(1) or real(*a, **k))
    assert codec.verify(token).subject == "members/7" and len(decodes) == 1
    assert codec.verify(token).subject == "members/7" and len(decodes) == 1  # remembered
    principal, _exp = codec._verified[token]
    codec._verified[token] = (principal, time.time() - 1)  # as if its expiry had passed
    assert codec.verify(token).subject == "members/7" and len(decodes) == 2  # decoded again
    expired, _ = codec.issue(Principal(MEMBER, "members/7"), ttl=-5)
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for bad in (expired, forged, expired, forged):  # refused every time, never remembered
        with pytest.raises(Unauthenticated):
            codec.verify(bad)
    assert expired not in codec._verified and forged not in codec._verified
