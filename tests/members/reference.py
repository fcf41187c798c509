"""A plain-Python reference of the segment condition language and of RFM, and random data and rule
trees for property-based tests (hypothesis). Written apart from members.rules / members.rfm: the
tests compare the SQL the service compiles with what this code computes over the same data."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, timedelta

from hypothesis import strategies as st

from mall.members.v1 import members_service_pb2 as pb

DAY = timedelta(days=1)
PROVINCES = ["浙江省", "江苏省", "上海市", ""]
CITIES = ["杭州市", "南京市", "上海市", ""]
OCCUPATIONS = ["教师", "工程师", ""]
SKINS = ["dry", "oily"]
KINDS = ["BEHAVIOR_KIND_VIEW_PRODUCT", "BEHAVIOR_KIND_ADD_TO_CART", "BEHAVIOR_KIND_GROUP_JOINED"]
CATEGORIES = ["categories/1", "categories/2", "categories/3"]
CHANNEL_TYPES = ["CHANNEL_TYPE_SMS", "CHANNEL_TYPE_STORE_QR", "CHANNEL_TYPE_MOMENTS_AD"]
GENDERS = ["GENDER_UNSPECIFIED", "GENDER_MALE", "GENDER_FEMALE"]
RFM_SEGMENTS = [n for n in pb.RfmSegment.keys() if n != "RFM_SEGMENT_UNSPECIFIED"]


@dataclasses.dataclass
class Order:
    paid_fen: int
    days_ago: float  # pay time = now - days_ago


@dataclasses.dataclass
class Person:
    gender: int
    birthday: date | None
    province: str
    city: str
    occupation: str
    skin: str | None
    tier: int | None  # index into the lab's tiers
    first_channel: int | None  # index into the lab's channels
    first_channel_type: int
    touchpoints: list[int]  # channel indexes
    tags: list[int]  # tag indexes
    orders: list[Order]
    categories: list[str]
    rfm: tuple[int, int, int, int] | None  # r, f, m scores, segment
    events: list[tuple[str, float]]  # (kind, days ago)

    # purchase aggregates, as member_purchase_stats keeps them
    @property
    def order_count(self) -> int:
        return len(self.orders)

    @property
    def paid_fen(self) -> int:
        return sum(o.paid_fen for o in self.orders)

    def first_order(self, now: datetime) -> datetime | None:
        return now - max(o.days_ago for o in self.orders) * DAY if self.orders else None

    def last_order(self, now: datetime) -> datetime | None:
        return now - min(o.days_ago for o in self.orders) * DAY if self.orders else None


birthdays = st.one_of(st.none(), st.dates(date(1940, 1, 1), date(2020, 12, 31)),
                      st.sampled_from([date(2000, 2, 29), date(1996, 2, 29), date(1999, 2, 28), date(2001, 3, 1), date(1990, 1, 1)]))
people = st.builds(
    Person,
    gender=st.integers(0, 2), birthday=birthdays, province=st.sampled_from(PROVINCES),
    city=st.sampled_from(CITIES), occupation=st.sampled_from(OCCUPATIONS),
    skin=st.one_of(st.none(), st.sampled_from(SKINS)),
    tier=st.one_of(st.none(), st.integers(0, 1)), first_channel=st.one_of(st.none(), st.integers(0, 1)),
    first_channel_type=st.sampled_from([0] + [pb.ChannelType.Value(c) for c in CHANNEL_TYPES]),
    touchpoints=st.lists(st.integers(0, 1), max_size=2, unique=True),
    tags=st.lists(st.integers(0, 2), max_size=3, unique=True),
    orders=st.lists(st.builds(Order, st.integers(100, 300_000),
                              st.floats(0.01, 400, allow_nan=False)), max_size=6),
    categories=st.lists(st.sampled_from(CATEGORIES), max_size=2, unique=True),
    rfm=st.one_of(st.none(), st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), st.integers(1, 8))),
    events=st.lists(st.tuples(st.sampled_from(KINDS), st.floats(0.001, 60, allow_nan=False)), max_size=6),
)
datasets = st.lists(people, min_size=1, max_size=25)


def _ints(lo: int, hi: int, op: str) -> st.SearchStrategy[list[str]]:
    one = st.integers(lo, hi).map(str)
    if op == "between":
        return st.tuples(st.integers(lo, hi), st.integers(lo, hi)).map(lambda t: [str(min(t)), str(max(t))])
    return one.map(lambda v: [v])


def _names(pool: list[str], op: str) -> st.SearchStrategy[list[str]]:
    if op in ("in", "not_in"):
        return st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True)
    return st.sampled_from(pool).map(lambda v: [v])


INT_OPS = ["eq", "ne", "gt", "ge", "lt", "le", "between"]
NAME_OPS = ["eq", "ne", "in", "not_in"]
SET_OPS = ["in", "not_in"]


def condition_strategy(lab) -> st.SearchStrategy[dict]:
    """Random conditions over every field, with values drawn from the data's own domains."""
    ints = {"age": (0, 90), "rfm.r_score": (1, 5), "rfm.f_score": (1, 5), "rfm.m_score": (1, 5),
            "orders": (0, 7), "amount_fen": (0, 800_000), "days_since_first_order": (0, 400),
            "days_since_last_order": (0, 400)}
    names = {"gender": GENDERS, "province": PROVINCES, "city": CITIES, "occupation": OCCUPATIONS,
             "attribute.skin": SKINS, "tier": lab.tier_names, "first_touch_channel": lab.channel_names,
             "first_touch_channel_type": ["CHANNEL_TYPE_UNSPECIFIED"] + CHANNEL_TYPES, "rfm.segment": RFM_SEGMENTS,
             "buyer": ["NONE", "SINGLE", "REPEAT"]}
    sets = {"tag": lab.tag_names, "touchpoint_channel": lab.channel_names, "touchpoint_channel_type": CHANNEL_TYPES,
            "category": CATEGORIES, "segment": lab.segment_names}

    def cond(field, op, values):
        return {"condition": {"field": field, "operator": op, "values": values}}

    options = []
    for f, (lo, hi) in ints.items():
        options.append(st.sampled_from(INT_OPS).flatmap(lambda op, f=f, lo=lo, hi=hi: _ints(lo, hi, op).map(
            lambda v, op=op, f=f: cond(f, op, v))))
    for f, pool in names.items():
        pool = [p for p in pool if not (f == "first_touch_channel_type" and p.endswith("UNSPECIFIED"))]
        options.append(st.sampled_from(NAME_OPS).flatmap(lambda op, f=f, pool=pool: _names(pool, op).map(
            lambda v, op=op, f=f: cond(f, op, v))))
    for f, pool in sets.items():
        options.append(st.sampled_from(SET_OPS).flatmap(lambda op, f=f, pool=pool: _names(pool, op).map(
            lambda v, op=op, f=f: cond(f, op, v))))
    options.append(st.builds(lambda op, kind, n, d: {"condition": {
        "field": "behavior", "operator": op, "values": [], "kind": kind, "min_count": n, "within_days": d}},
        st.sampled_from(["did", "did_not"]), st.sampled_from(KINDS), st.integers(1, 3), st.integers(1, 60)))
    return st.one_of(options)


def rule_strategy(lab) -> st.SearchStrategy[dict]:
    return st.recursive(condition_strategy(lab), lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=4).map(lambda c: {"all": c}),
        st.lists(children, min_size=1, max_size=4).map(lambda c: {"any": c}),
        children.map(lambda c: {"not": c})), max_leaves=8)


# --- the reference evaluator -----------------------------------------------------------------------


def age(b: date, today: date) -> int:
    return today.year - b.year - ((today.month, today.day) < (b.month, b.day))


def _int_op(value: int | None, op: str, vals: list[int]) -> bool:
    if op == "ne":
        return not _int_op(value, "eq", vals)
    if value is None:
        return False
    return {"eq": value == vals[0], "gt": value > vals[0], "ge": value >= vals[0], "lt": value < vals[0],
            "le": value <= vals[0], "between": len(vals) == 2 and vals[0] <= value <= vals[-1]}[op]


def _name_op(value, op: str, vals: list) -> bool:
    positive = value is not None and (value in vals if op in ("in", "not_in") else value == vals[0])
    return not positive if op in ("ne", "not_in") else positive


def holds(node: dict, p: Person, lab, now: datetime) -> bool:
    if "all" in node:
        return all(holds(c, p, lab, now) for c in node["all"])
    if "any" in node:
        return any(holds(c, p, lab, now) for c in node["any"])
    if "not" in node:
        return not holds(node["not"], p, lab, now)
    c = node["condition"]
    f, op, vals = c["field"], c["operator"], c.get("values", [])
    if f == "behavior":
        since = int(now.timestamp() * 1000) - c["within_days"] * 86_400_000
        n = sum(1 for k, d in p.events if k == c["kind"] and lab.event_ms(now, d) >= since)
        did = n >= c["min_count"]
        return did if op == "did" else not did
    if f == "segment":
        inside = any(holds(lab.segment_rules[v.split("/")[1]], p, lab, now) for v in vals)
        return not inside if op == "not_in" else inside
    ints = [int(v) for v in vals] if f in ("age", "orders", "amount_fen", "days_since_first_order",
                                            "days_since_last_order") or f.startswith("rfm.") and f != "rfm.segment" \
        else []
    if f == "age":
        return _int_op(age(p.birthday, now.date()) if p.birthday else None, op, ints)
    if f == "orders":
        return _int_op(p.order_count, op, ints)
    if f == "amount_fen":
        return _int_op(p.paid_fen, op, ints)
    if f in ("days_since_first_order", "days_since_last_order"):
        t = lab.stored_time(p.first_order(now) if f == "days_since_first_order" else p.last_order(now))
        return _int_op((now - t) // DAY if t else None, op, ints)
    if f.startswith("rfm.") and f != "rfm.segment":
        scores = {"rfm.r_score": 0, "rfm.f_score": 1, "rfm.m_score": 2}
        return _int_op(p.rfm[scores[f]] if p.rfm else None, op, ints)
    if f == "rfm.segment":
        return _name_op(p.rfm[3] if p.rfm else None, op, [pb.RfmSegment.Value(v) for v in vals])
    if f == "gender":
        return _name_op(p.gender, op, [pb.Gender.Value(v) for v in vals])
    if f in ("province", "city", "occupation"):
        return _name_op(getattr(p, f), op, vals)
    if f == "attribute.skin":
        return _name_op(p.skin, op, vals)
    if f == "tier":
        return _name_op(lab.tier_names[p.tier] if p.tier is not None else None, op, vals)
    if f == "first_touch_channel":
        return _name_op(lab.channel_names[p.first_channel] if p.first_channel is not None else None, op, vals)
    if f == "first_touch_channel_type":
        return _name_op(p.first_channel_type, op, [pb.ChannelType.Value(v) for v in vals])
    if f == "buyer":
        mine = "NONE" if p.order_count == 0 else "SINGLE" if p.order_count == 1 else "REPEAT"
        return _name_op(mine, op, vals)
    if f == "tag":
        has = any(lab.tag_names[t] in vals for t in p.tags)
        return not has if op == "not_in" else has
    if f == "touchpoint_channel":
        has = any(lab.channel_names[t] in vals for t in p.touchpoints)
        return not has if op == "not_in" else has
    if f == "touchpoint_channel_type":
        has = any(lab.channel_types[t] in vals for t in p.touchpoints)
        return not has if op == "not_in" else has
    if f == "category":
        has = any(x in vals for x in p.categories)
        return not has if op == "not_in" else has
    raise AssertionError(f"reference has no field {f}")
