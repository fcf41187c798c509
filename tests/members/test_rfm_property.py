"""Property: the set-wise SQL RFM recompute (thresholds and quintiles, MariaDB and SQLite) equals a
plain-Python reference over random members and paid orders; the report sums what the model holds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select

from mallkit.db import run_transaction, session_factory
from mallkit.testing import service_database
from members.app import SERVICE_DIR
from members.models import Member, MemberPurchase, MemberRfm
from members.rfm import Rfm, RfmConfig
from tests.members.reference import DAY

NOW = datetime(2026, 6, 15, 9, 30, 0, 654321, tzinfo=UTC)
WINDOW = 90


@pytest.fixture(scope="module")
async def lab(backend, tmp_root):
    async with service_database("members", backend, tmp_root, SERVICE_DIR) as (_url, engine):
        yield session_factory(engine)


orders = st.lists(st.tuples(st.integers(1, 400_000), st.integers(0, 100), st.floats(0.0005, 140, allow_nan=False)),
                  max_size=7)  # (paid fen, refunded %, days ago)
members = st.lists(orders, min_size=1, max_size=30)
configs = st.builds(
    RfmConfig, method=st.sampled_from(["thresholds", "quintiles"]), window_days=st.just(WINDOW),
    recency_days=st.just((7, 14, 30, 60)), frequency_orders=st.just((2, 3, 4, 6)),
    monetary_fen=st.just((50_000, 200_000, 400_000, 800_000)), high=st.integers(2, 4))


def ntile(ordered: list[int], buckets: int = 5) -> dict[int, int]:
    """SQL NTILE: rows split in order into ``buckets`` groups, the first ``n % buckets`` one larger."""
    n = len(ordered)
    base, extra = divmod(n, buckets)
    out, i = {}, 0
    for b in range(1, buckets + 1):
        size = base + (1 if b <= extra else 0)
        for mid in ordered[i:i + size]:
            out[mid] = b
        i += size
    return out


def reference(data: dict[int, list[tuple[int, int, float]]], c: RfmConfig, now: datetime) -> dict[int, tuple]:
    facts = {}
    for mid, os in data.items():
        inside = [(p, p * r // 100, now - d * DAY) for p, r, d in os if now - d * DAY >= now - c.window_days * DAY]
        if inside:
            last = max(t for _, _, t in inside)
            facts[mid] = ((now - last) // DAY, len(inside), sum(p - rf for p, rf, _ in inside))
    if c.method == "quintiles":
        r = ntile(sorted(facts, key=lambda k: (-facts[k][0], k)))
        f = ntile(sorted(facts, key=lambda k: (facts[k][1], k)))
        m = ntile(sorted(facts, key=lambda k: (facts[k][2], k)))
    else:
        r = {k: next((5 - i for i, d in enumerate(c.recency_days) if v[0] <= d), 1) for k, v in facts.items()}
        f = {k: 1 + sum(v[1] >= n for n in c.frequency_orders) for k, v in facts.items()}
        m = {k: 1 + sum(v[2] >= n for n in c.monetary_fen) for k, v in facts.items()}
    out = {}
    for k, (rec, freq, mon) in facts.items():
        lo = {x: int(s[k] < c.high) for x, s in (("r", r), ("f", f), ("m", m))}
        out[k] = (rec, freq, mon, r[k], f[k], m[k], 1 + 4 * lo["m"] + 2 * lo["r"] + lo["f"])
    return out


async def load(sessions, data: list[list[tuple[int, int, float]]], now: datetime) -> dict[int, list]:
    async def use_case(s):
        for t in (MemberRfm, MemberPurchase, Member):
            await s.execute(delete(t))
        out = {}
        for i, os in enumerate(data):
            m = Member(openid=f"rfm{i}", invite_code=f"RFM{i:04d}", growth_value=0, create_time=now, update_time=now)
            s.add(m)
            await s.flush()
            out[m.id] = os
        rows = [{"member_id": mid, "order": f"orders/{uuid.uuid4().hex[:16]}", "paid_fen": p,
                 "refunded_fen": p * r // 100, "categories": "", "pay_time": now - d * DAY}
                for mid, os in out.items() for p, r, d in os]
        if rows:
            await s.execute(insert(MemberPurchase), rows)
        return out

    return await run_transaction(sessions, use_case)


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=members, config=configs)
async def test_rfm_recompute_equals_the_reference(lab, data, config):
    by_id = await load(lab, data, NOW)
    rfm = Rfm(config)

    async def earlier(s):  # an earlier run leaves rows to update, and members who have left the window since
        return await rfm.recompute(s, NOW - 60 * DAY)

    async def recompute(s):
        return await rfm.recompute(s, NOW)

    await run_transaction(lab, earlier)
    n = await run_transaction(lab, recompute)
    want = reference(by_id, config, NOW)
    async with lab() as s:
        got = {r.member_id: (r.recency_days, r.frequency, r.monetary_fen, r.r_score, r.f_score, r.m_score, r.segment)
               for r in (await s.execute(select(MemberRfm))).scalars()}
        report = await rfm.report(s)
    assert n == len(want)
    assert got == want
    assert report.member_count == len(want)
    for seg, count, amount in report.rows:
        assert count == sum(1 for v in want.values() if v[6] == seg)
        assert amount == sum(v[2] for v in want.values() if v[6] == seg)
