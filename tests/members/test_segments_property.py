"""Property: for random members, orders and behaviour events and random rule trees, the members a
segment's compiled SQL selects (on MariaDB and on SQLite) are exactly those the plain-Python
reference (tests/members/reference.py) says match."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert

from mall.members.v1 import members_service_pb2 as pb
from mallkit.db import run_transaction, session_factory, utcnow
from mallkit.pagination import PageTokens
from mallkit.testing import service_database
from members.app import SERVICE_DIR
from members.models import (
    AttributeDefinition,
    BehaviourEvent,
    ChannelCode,
    Member,
    MemberAttribute,
    MemberPurchaseCategory,
    MemberPurchaseStats,
    MemberRfm,
    MemberTag,
    SegmentSnapshotMember,
    Tag,
    TagGroup,
    Tier,
    Touchpoint,
)
from members.segments import Segments
from tests.members import reference as ref

NOW = datetime(2028, 2, 29, 12, 0, 0, 123456, tzinfo=UTC)


@dataclasses.dataclass
class Lab:
    engine: object
    sessions: object
    segments: Segments
    tier_ids: list[int]
    channel_ids: list[int]
    channel_types: list[str]
    tag_ids: list[int]
    tag_group_id: int
    segment_rules: dict

    @property
    def tier_names(self) -> list[str]:
        return [f"tiers/{i}" for i in self.tier_ids]

    @property
    def channel_names(self) -> list[str]:
        return [f"channelCodes/{i}" for i in self.channel_ids]

    @property
    def tag_names(self) -> list[str]:
        return [f"tagGroups/{self.tag_group_id}/tags/{i}" for i in self.tag_ids]

    @property
    def segment_names(self) -> list[str]:
        return [f"segments/{k}" for k in self.segment_rules]

    @staticmethod
    def event_ms(now: datetime, days_ago: float) -> int:
        return int((now - days_ago * ref.DAY).timestamp() * 1000)

    @staticmethod
    def stored_time(t: datetime | None) -> datetime | None:
        return t


SAVED = {
    "s-repeat": {"condition": {"field": "orders", "operator": "ge", "values": ["2"]}},
    "s-mix": {"any": [{"condition": {"field": "segment", "operator": "in", "values": ["segments/s-repeat"]}},
                      {"condition": {"field": "gender", "operator": "eq", "values": ["GENDER_FEMALE"]}}]},
}


@pytest.fixture(scope="module")
async def lab(backend, tmp_root):
    async with service_database("members", backend, tmp_root, SERVICE_DIR) as (_url, engine):
        sessions = session_factory(engine)
        segments = Segments(PageTokens("property-test"))
        now = utcnow()

        async def setup(s):
            tiers = [Tier(display_name=f"T{i}", growth_threshold=i * 100, create_time=now) for i in range(2)]
            channels = [ChannelCode(display_name=f"C{i}", channel_type=pb.ChannelType.Value(t), scene=f"labc{i}",
                                    create_time=now) for i, t in enumerate(ref.CHANNEL_TYPES[:2])]
            group = TagGroup(display_name="lab", selection=pb.TAG_SELECTION_MULTIPLE, create_time=now)
            s.add_all([*tiers, *channels, group, AttributeDefinition(key="skin", display_name="肤质",
                                                                      type=pb.ATTRIBUTE_TYPE_STRING, create_time=now)])
            await s.flush()
            tags = [Tag(group_id=group.id, display_name=f"tag{i}", create_time=now) for i in range(3)]
            s.add_all(tags)
            await s.flush()
            for key, rule in SAVED.items():
                await segments.create(s, key, key, "", rule)
            return Lab(engine, sessions, segments, [t.id for t in tiers], [c.id for c in channels],
                       ref.CHANNEL_TYPES[:2], [t.id for t in tags], group.id, SAVED)

        yield await run_transaction(sessions, setup)


TABLES = [MemberTag, MemberAttribute, Touchpoint, MemberPurchaseStats, MemberPurchaseCategory, MemberRfm,
          BehaviourEvent, SegmentSnapshotMember, Member]


async def load(lab: Lab, people: list[ref.Person], now: datetime) -> list[int]:
    """Replace the lab's members by ``people``; returns their ids in order."""

    async def use_case(s):
        for t in TABLES:
            await s.execute(delete(t))
        ids = []
        for i, p in enumerate(people):
            m = Member(openid=f"lab{i}", invite_code=f"LAB{i:04d}", nickname="", gender=p.gender, birthday=p.birthday,
                       province=p.province, city=p.city, occupation=p.occupation,
                       tier_id=lab.tier_ids[p.tier] if p.tier is not None else None,
                       first_touch_channel_id=lab.channel_ids[p.first_channel] if p.first_channel is not None else None,
                       first_touch_channel_type=p.first_channel_type, growth_value=0, create_time=now, update_time=now)
            s.add(m)
            await s.flush()
            ids.append(m.id)
            if p.skin:
                s.add(MemberAttribute(member_id=m.id, key="skin", value=p.skin))
            for t in p.tags:
                s.add(MemberTag(member_id=m.id, tag_id=lab.tag_ids[t], group_id=lab.tag_group_id, source=1,
                                create_time=now))
            for c in p.touchpoints:
                s.add(Touchpoint(member_id=m.id, channel_code_id=lab.channel_ids[c],
                                 channel_type=pb.ChannelType.Value(lab.channel_types[c]), scene=f"labc{c}",
                                 create_time=now))
            if p.orders:
                s.add(MemberPurchaseStats(member_id=m.id, order_count=p.order_count, total_paid_fen=p.paid_fen,
                                          refund_count=0, total_refunded_fen=0, first_order_time=p.first_order(now),
                                          last_order_time=p.last_order(now), update_time=now))
            for c in p.categories:
                s.add(MemberPurchaseCategory(member_id=m.id, category=c, order_count=1, amount_fen=1,
                                             last_order_time=now))
            if p.rfm:
                r, f, mm, seg = p.rfm
                s.add(MemberRfm(member_id=m.id, recency_days=1, frequency=1, monetary_fen=1, r_score=r, f_score=f,
                                m_score=mm, segment=seg, compute_time=now))
        rows = [{"dedupe_key": f"lab:{i}:{j}", "member_id": mid, "visitor_id": None,
                 "kind": pb.BehaviorKind.Value(kind), "source": "client", "target": "", "detail": "", "touchpoint": "",
                 "value_fen": 0, "occur_ms": lab.event_ms(now, d), "receive_time": now}
                for i, (p, mid) in enumerate(zip(people, ids, strict=True)) for j, (kind, d) in enumerate(p.events)]
        if rows:
            await s.execute(insert(BehaviourEvent), rows)
        return ids

    return await run_transaction(lab.sessions, use_case)


@pytest.fixture(scope="module")
def rules(lab):
    return ref.rule_strategy(lab)


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
async def test_compiled_segments_equal_the_reference(lab, rules, data):
    people = data.draw(ref.datasets, label="members")
    ids = await load(lab, people, NOW)
    for _ in range(6):
        rule = data.draw(rules, label="rule")
        async with lab.sessions() as s:
            got = await lab.segments.member_ids(s, rule, NOW)
        want = sorted(mid for p, mid in zip(people, ids, strict=True) if ref.holds(rule, p, lab, NOW))
        assert got == want, rule
