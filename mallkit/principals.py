"""Is the account behind a valid token still there? The same answer in every service.

A signed token proves who it was issued to, not that the account still exists
or is still active: a token forged with a leaked secret, or one of a staff
account disabled since, must stop working. Every service checks the principal
of member and staff tokens (service tokens name a service, not an account)
after the access policy admitted it:

* the members service looks in its own database;
* the other services ask members (``MembersService.CheckPrincipals``, an RPC
  without HTTP binding, through :meth:`mallkit.members.MembersClient.active_principals`).

:class:`mallkit.platform.Platform` wires it. :class:`PrincipalCheck` keeps an answer
``ttl`` seconds at most (``MALL_PRINCIPAL_CACHE_SECONDS``, 60 at most: a disabled
account's tokens stop working within that), a refusal for a shorter time, and a
bounded number of principals. Lookups are batched: every principal missing from
the cache while a lookup is being prepared or is in flight joins the next single
call (a burst of 2000 new buyers is a handful of calls, not 2000), and concurrent
calls for one principal share its answer. When members cannot answer, the call
fails closed with UNAVAILABLE (nothing is cached, so the next call asks again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from cachetools import TLRUCache

from mallkit.auth import Principal
from mallkit.errors import MallError, Unauthenticated, Unavailable

#: ``lookup(subjects)`` -> the subjects ("members/{id}", "staff/{id}") that exist and are active.
Lookup = Callable[[list[str]], Awaitable[Iterable[str]]]

MAX_PRINCIPALS = 100_000
NEGATIVE_TTL = 5.0
MAX_BATCH = 500


class PrincipalCheck:
    """Refuses member and staff principals whose account is gone or disabled (cached, batched)."""

    def __init__(self, lookup: Lookup, *, ttl: float = 30.0, negative_ttl: float = NEGATIVE_TTL,
                 max_size: int = MAX_PRINCIPALS, max_batch: int = MAX_BATCH):
        if not 0 <= ttl <= 60:
            raise ValueError("principal cache ttl must be between 0 and 60 seconds")
        self._lookup = lookup
        self.ttl = ttl
        self.negative_ttl = min(negative_ttl, ttl)
        self.max_batch = max_batch
        self._cache: TLRUCache[str, bool] = TLRUCache(
            maxsize=max_size, ttu=lambda _key, active, now: now + (self.ttl if active else self.negative_ttl)
        )
        self._waiting: dict[str, asyncio.Future[bool]] = {}  # asked, not answered yet
        self._queue: list[str] = []  # asked, not sent yet
        self._sender: asyncio.Task | None = None
        self.lookups = 0  # calls made (for tests and metrics)

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
        future = self._waiting.get(subject)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiting[subject] = future
            self._queue.append(subject)
            if self._sender is None:
                self._sender = asyncio.ensure_future(self._send())
        return await asyncio.shield(future)

    async def _send(self) -> None:
        try:
            await asyncio.sleep(0)  # the callers of this loop iteration join the first batch
            while self._queue:
                batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
                self.lookups += 1
                try:
                    found = set(await self._lookup(batch))
                except Exception as exc:
                    for subject in batch:
                        future = self._waiting.pop(subject)
                        future.set_exception(exc)
                        future.exception()  # retrieved: no warning when every waiter has gone
                    continue
                for subject in batch:
                    active = subject in found
                    if self.ttl > 0:
                        self._cache[subject] = active
                    self._waiting.pop(subject).set_result(active)
        except BaseException:  # cancelled (shutting down): nobody may wait for an answer that will not come
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(Unavailable("cannot check the caller's account now, retry",
                                                     reason="PRINCIPALS_UNAVAILABLE"))
                    future.exception()
            self._waiting.clear()
            self._queue.clear()
            raise
        finally:
            self._sender = None

    def forget(self, subject: str) -> None:
        """Drop a cached answer (e.g. right after this process disabled the account)."""
        self._cache.pop(subject, None)


def guarded(lookup: Lookup) -> Lookup:
    """A local lookup whose unexpected errors fail closed as UNAVAILABLE."""

    async def run(subjects: list[str]) -> Iterable[str]:
        try:
            return await lookup(subjects)
        except MallError:
            raise
        except Exception:
            raise Unavailable("cannot check the caller's account now, retry",
                              reason="PRINCIPALS_UNAVAILABLE") from None

    return run
