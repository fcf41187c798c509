"""Is the account behind a valid token still there? The same answer in every service.

A signed token proves who it was issued to, not that the account still exists
or is still active: a token forged with a leaked secret, or one of a staff
account disabled since, must stop working. Every service checks the principal
of member and staff tokens (service tokens name a service, not an account)
after the access policy admitted it:

* the members service looks in its own database;
* the other services ask members (``MembersService.CheckPrincipal``, an RPC
  without HTTP binding, through :meth:`mallkit.members.MembersClient.principal_active`),
  through :class:`PrincipalCheck`'s cache. :class:`mallkit.platform.Platform` wires it.

The cache keeps an answer ``ttl`` seconds at most (``MALL_PRINCIPAL_CACHE_SECONDS``,
60 at most: a disabled account's tokens stop working within that), a refusal
for a shorter time, and a bounded number of principals. Concurrent lookups of
the same principal share one call. When members cannot answer, the call fails
closed with UNAVAILABLE (nothing is cached, so the next call asks again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from cachetools import TLRUCache

from mallkit.auth import Principal
from mallkit.errors import MallError, Unauthenticated, Unavailable

#: ``lookup(subject)`` -> True when "members/{id}" or "staff/{id}" exists and is active.
Lookup = Callable[[str], Awaitable[bool]]

MAX_PRINCIPALS = 100_000
NEGATIVE_TTL = 5.0


class PrincipalCheck:
    """Refuses member and staff principals whose account is gone or disabled (cached)."""

    def __init__(self, lookup: Lookup, *, ttl: float = 30.0, negative_ttl: float = NEGATIVE_TTL,
                 max_size: int = MAX_PRINCIPALS):
        if not 0 <= ttl <= 60:
            raise ValueError("principal cache ttl must be between 0 and 60 seconds")
        self._lookup = lookup
        self.ttl = ttl
        self.negative_ttl = min(negative_ttl, ttl)
        self._cache: TLRUCache[str, bool] = TLRUCache(
            maxsize=max_size, ttu=lambda _key, active, now: now + (self.ttl if active else self.negative_ttl)
        )
        self._inflight: dict[str, asyncio.Future[bool]] = {}

    async def require(self, p: Principal) -> None:
        """Return if ``p`` may be served; UNAUTHENTICATED if its account is gone or disabled,
        UNAVAILABLE if that cannot be known right now."""
        if not (p.is_member or p.is_staff):
            return
        if not await self.active(p.subject):
            raise Unauthenticated(
                "the account of this token does not exist or is disabled",
                reason="PRINCIPAL_INACTIVE", zh="账号不存在或已停用,请重新登录",
            )

    async def active(self, subject: str) -> bool:
        cached = self._cache.get(subject)
        if cached is not None:
            return cached
        task = self._inflight.get(subject)
        if task is None:
            task = asyncio.ensure_future(self._load(subject))
            self._inflight[subject] = task
            task.add_done_callback(lambda t: self._inflight.pop(subject, None) if self._inflight.get(subject) is t
                                   else None)
        return await asyncio.shield(task)

    async def _load(self, subject: str) -> bool:
        active = bool(await self._lookup(subject))
        if self.ttl > 0:
            self._cache[subject] = active
        return active

    def forget(self, subject: str) -> None:
        """Drop a cached answer (e.g. right after this process disabled the account)."""
        self._cache.pop(subject, None)


def guarded(lookup: Lookup) -> Lookup:
    """A local lookup whose unexpected errors fail closed as UNAVAILABLE."""

    async def run(subject: str) -> bool:
        try:
            return await lookup(subject)
        except MallError:
            raise
        except Exception:
            raise Unavailable("cannot check the caller's account now, retry",
                              reason="PRINCIPALS_UNAVAILABLE") from None

    return run
