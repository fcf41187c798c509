"""The condition language of segments and auto-tag rules: a rule tree, validated, compiled to SQL.

A rule is a tree of plain dicts (stored as JSON; the proto ``SegmentRule`` converts to it)::

    {"all": [node, ...]} | {"any": [node, ...]} | {"not": node} | condition
    condition = {"field": "age", "operator": "between", "values": ["25", "34"]}
              | {"field": "behavior", "operator": "did", "kind": "BEHAVIOR_KIND_VIEW_PRODUCT", "min_count": 3, "within_days": 30}

:func:`validate` checks a tree and raises INVALID_ARGUMENT naming every bad node by its path
("segment.rule.all[1].condition.values[0]"). :func:`compile_rule` turns a valid tree into one
SQLAlchemy Core boolean over the members table joined to purchase stats and RFM (LEFT JOIN),
with EXISTS / correlated counts for tags, touchpoints, categories and behaviour, so a whole
audience is one SELECT on MariaDB and SQLite alike. Every condition is two-valued (a missing
value makes a positive condition false, never NULL), so ``not`` is plain negation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, false, func, not_, or_, select, true
from sqlalchemy.sql.elements import ColumnElement

from mall.members.v1 import members_service_pb2 as pb
from mallkit.errors import FieldViolation, InvalidArgument

from .models import (
    BehaviourEvent,
    Member,
    MemberAttribute,
    MemberPurchaseCategory,
    MemberPurchaseStats,
    MemberRfm,
    MemberTag,
    Touchpoint,
)

MAX_CHILDREN = 50
MAX_DEPTH = 10
MAX_NODES = 200
SEGMENT_KEY = re.compile(r"[a-z][a-z0-9-]{2,62}")
_NAME = {
    "tier": (re.compile(r"tiers/([0-9]{1,18})"), "tiers/{tier}"),
    "tag": (re.compile(r"tagGroups/[0-9]{1,18}/tags/([0-9]{1,18})"), "tagGroups/{group}/tags/{tag}"),
    "channel": (re.compile(r"channelCodes/([0-9]{1,18})"), "channelCodes/{channel_code}"),
    "category": (re.compile(r"(categories/[0-9A-Za-z_-]{1,40})"), "categories/{category}"),
    "segment": (re.compile(r"segments/([a-z][a-z0-9-]{2,62})"), "segments/{segment}"),
}
BUYER = {"NONE": 0, "SINGLE": 1, "REPEAT": 2}
NAME_OPS = ("eq", "ne", "in", "not_in")
SET_OPS = ("in", "not_in")
INT_OPS = ("eq", "ne", "gt", "ge", "lt", "le", "between")
BEHAVIOR_OPS = ("did", "did_not")


@dataclass(frozen=True)
class Field:
    type: str  # "int", "text", "enum", "name", "behavior", "segment"
    operators: tuple[str, ...]
    enum: Mapping[str, int] | None = None  # names allowed for "enum"
    name: str = ""  # the _NAME kind for "name"
    bounds: tuple[int, int] = (0, 10**15)


def _enum(enum_type, skip_zero: bool = True) -> dict[str, int]:
    return {n: v for n, v in enum_type.items() if not (skip_zero and v == 0)}


FIELDS: dict[str, Field] = {
    "gender": Field("enum", NAME_OPS, {n: v for n, v in pb.Gender.items()}),
    "age": Field("int", INT_OPS, bounds=(0, 150)),
    "province": Field("text", NAME_OPS),
    "city": Field("text", NAME_OPS),
    "occupation": Field("text", NAME_OPS),
    "tier": Field("name", NAME_OPS, name="tier"),
    "tag": Field("name", SET_OPS, name="tag"),
    "first_touch_channel": Field("name", NAME_OPS, name="channel"),
    "first_touch_channel_type": Field("enum", NAME_OPS, _enum(pb.ChannelType)),
    "touchpoint_channel": Field("name", SET_OPS, name="channel"),
    "touchpoint_channel_type": Field("enum", SET_OPS, _enum(pb.ChannelType)),
    "rfm.r_score": Field("int", INT_OPS, bounds=(1, 5)),
    "rfm.f_score": Field("int", INT_OPS, bounds=(1, 5)),
    "rfm.m_score": Field("int", INT_OPS, bounds=(1, 5)),
    "rfm.segment": Field("enum", NAME_OPS, _enum(pb.RfmSegment)),
    "orders": Field("int", INT_OPS, bounds=(0, 10**9)),
    "amount_fen": Field("int", INT_OPS),
    "days_since_first_order": Field("int", INT_OPS, bounds=(0, 100_000)),
    "days_since_last_order": Field("int", INT_OPS, bounds=(0, 100_000)),
    "buyer": Field("enum", NAME_OPS, BUYER),
    "category": Field("name", SET_OPS, name="category"),
    "behavior": Field("behavior", BEHAVIOR_OPS),
    "segment": Field("segment", SET_OPS),
}
ATTRIBUTE = re.compile(r"attribute\.([a-z][a-z0-9_]{1,31})")


def field_of(name: str) -> Field | None:
    if ATTRIBUTE.fullmatch(name):
        return Field("text", NAME_OPS)
    return FIELDS.get(name)


# --- validation ------------------------------------------------------------------------------------


class _Checker:
    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []
        self.nodes = 0
        self.segments: set[str] = set()  # keys of segments named by "segment" conditions

    def fail(self, path: str, description: str) -> None:
        self.violations.append(FieldViolation(path, description))

    def node(self, n: Any, path: str, depth: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            if self.nodes == MAX_NODES + 1:
                self.fail(path, f"the rule has more than {MAX_NODES} nodes")
            return
        if depth > MAX_DEPTH:
            return self.fail(path, f"the rule is nested deeper than {MAX_DEPTH}")
        if not isinstance(n, dict):
            return self.fail(path, "must be a rule node")
        keys = [k for k in ("all", "any", "not", "condition") if k in n and n[k] not in (None, [], {})]
        if "field" in n:  # a bare condition
            keys.append("field")
        if len(keys) != 1:
            return self.fail(path, "must hold exactly one of all, any, not, condition")
        k = keys[0]
        if k in ("all", "any"):
            children = n[k]
            if not isinstance(children, list) or not 1 <= len(children) <= MAX_CHILDREN:
                return self.fail(f"{path}.{k}", f"must hold 1 to {MAX_CHILDREN} rules")
            for i, c in enumerate(children):
                self.node(c, f"{path}.{k}[{i}]", depth + 1)
        elif k == "not":
            self.node(n["not"], f"{path}.not", depth + 1)
        else:
            self.condition(n["condition"] if k == "condition" else n,
                           f"{path}.condition" if k == "condition" else path)

    def condition(self, c: Any, path: str) -> None:
        if not isinstance(c, dict):
            return self.fail(path, "must be a condition")
        name = c.get("field", "")
        f = field_of(name) if isinstance(name, str) else None
        if f is None:
            return self.fail(f"{path}.field", f"unknown field {str(name)[:64]!r}")
        op = c.get("operator", "")
        if op not in f.operators:
            return self.fail(f"{path}.operator", f"must be one of {', '.join(f.operators)} for {name}")
        values = c.get("values", [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            return self.fail(f"{path}.values", "must be a list of strings")
        if f.type == "behavior":
            kind = c.get("kind", "")
            if kind not in pb.BehaviorKind.keys() or kind == "BEHAVIOR_KIND_UNSPECIFIED":
                self.fail(f"{path}.kind", "must be a behaviour kind")
            n = c.get("min_count", 1) or 1
            if not isinstance(n, int) or not 1 <= n <= 1000:
                self.fail(f"{path}.min_count", "must be between 1 and 1000")
            d = c.get("within_days", 0)
            if not isinstance(d, int) or not 1 <= d <= 3650:
                self.fail(f"{path}.within_days", "must be between 1 and 3650")
            return
        want = 2 if op == "between" else None if op in ("in", "not_in") else 1
        if (want is None and not 1 <= len(values) <= 100) or (want is not None and len(values) != want):
            return self.fail(f"{path}.values", "must hold 1 to 100 values" if want is None else
                             f"must hold exactly {want} value{'s' if want > 1 else ''}")
        for i, v in enumerate(values):
            vp = f"{path}.values[{i}]"
            if f.type == "int":
                if not re.fullmatch(r"-?[0-9]{1,16}", v):
                    self.fail(vp, "must be an integer")
                elif not f.bounds[0] <= int(v) <= f.bounds[1]:
                    self.fail(vp, f"must be between {f.bounds[0]} and {f.bounds[1]}")
            elif f.type == "enum":
                assert f.enum is not None
                if v not in f.enum:
                    self.fail(vp, f"must be one of {', '.join(f.enum)}")
            elif f.type == "text":
                if len(v) > 128:
                    self.fail(vp, "must be at most 128 characters")
            elif f.type in ("name", "segment"):
                regex, shape = _NAME[f.name or "segment"]
                m = regex.fullmatch(v)
                if not m:
                    self.fail(vp, f"must look like {shape}")
                elif f.type == "segment":
                    self.segments.add(m.group(1))


def validate(rule: Any, path: str = "rule") -> set[str]:
    """Check a rule tree; raise INVALID_ARGUMENT naming every bad node. Returns the keys of the
    segments it refers to (for the caller to resolve and check for cycles)."""
    checker = _Checker()
    checker.node(rule, path, 1)
    if checker.violations:
        first = checker.violations[0]
        raise InvalidArgument(f"invalid {first.field}: {first.description}", field_violations=checker.violations,
                              metadata={"field": first.field}, reason="RULE_INVALID", zh="规则有误")
    return checker.segments


def segment_refs(rule: Any, root: str = "rule") -> list[tuple[str, str]]:
    """(path, key) of every "segment" condition of a valid rule."""
    out: list[tuple[str, str]] = []

    def walk(n: dict, path: str) -> None:
        for k in ("all", "any"):
            if n.get(k):
                for i, c in enumerate(n[k]):
                    walk(c, f"{path}.{k}[{i}]")
                return
        if n.get("not"):
            return walk(n["not"], f"{path}.not")
        c, cp = (n["condition"], f"{path}.condition") if n.get("condition") else (n, path)
        if c.get("field") == "segment":
            for i, v in enumerate(c["values"]):
                out.append((f"{cp}.values[{i}]", v.split("/", 1)[1]))

    walk(rule, root)
    return out


# --- compilation -----------------------------------------------------------------------------------


def years_ago(today: date, n: int) -> date:
    try:
        return today.replace(year=today.year - n)
    except ValueError:  # 29 February in a year that has none
        return today.replace(year=today.year - n, day=28)


@dataclass
class Context:
    """What compiling needs besides the rule: the time, and the rules of referenced segments."""

    now: datetime
    segments: Mapping[str, Any]  # key -> rule (already validated, cycle-free)
    joins: set[str] = field(default_factory=set)  # tables the compiled conditions read: "ps", "rfm"

    @property
    def today(self) -> date:
        return self.now.date()


m = Member.__table__
ps = MemberPurchaseStats.__table__
rfm = MemberRfm.__table__


def base_from(joins: set[str] | frozenset[str] = frozenset({"ps", "rfm"})):
    """The FROM clause of a compiled rule: members LEFT JOIN purchase stats / RFM when it reads them."""
    out = m
    if "ps" in joins:
        out = out.outerjoin(ps, ps.c.member_id == m.c.id)
    if "rfm" in joins:
        out = out.outerjoin(rfm, rfm.c.member_id == m.c.id)
    return out


def _cmp(col: ColumnElement, op: str, values: list[int], nullable: bool = True) -> ColumnElement:
    """A two-valued comparison of an integer column (false when the value is missing)."""
    if op == "ne":
        return not_(_cmp(col, "eq", values, nullable))
    a = values[0]
    expr = {"eq": lambda: col == a, "gt": lambda: col > a, "ge": lambda: col >= a, "lt": lambda: col < a,
            "le": lambda: col <= a, "between": lambda: and_(col >= a, col <= values[1])}[op]()
    return and_(col.is_not(None), expr) if nullable else expr


def _names(col: ColumnElement, op: str, values: list, nullable: bool = True) -> ColumnElement:
    positive = col.in_(values) if op in ("in", "not_in") else col == values[0]
    if nullable:
        positive = and_(col.is_not(None), positive)
    return not_(positive) if op in ("ne", "not_in") else positive


def _set(op: str, exists_clause: ColumnElement) -> ColumnElement:
    return not_(exists_clause) if op == "not_in" else exists_clause


def _age(op: str, values: list[int], today: date) -> ColumnElement:
    """Age in whole years from the birthday, as date bounds (portable: no date arithmetic in SQL).
    age >= n  <=>  birthday <= today - n years;  age <= n  <=>  birthday > today - (n+1) years."""
    b = m.c.birthday

    def ge(n: int) -> ColumnElement:
        return b <= years_ago(today, n)

    def le(n: int) -> ColumnElement:
        return b > years_ago(today, n + 1)

    if op == "ne":
        return not_(_age("eq", values, today))
    a = values[0]
    expr = {"eq": lambda: and_(ge(a), le(a)), "gt": lambda: ge(a + 1), "ge": lambda: ge(a),
            "lt": lambda: le(a - 1) if a > 0 else false(), "le": lambda: le(a),
            "between": lambda: and_(ge(a), le(values[1]))}[op]()
    return and_(b.is_not(None), expr)


def _days_since(col: ColumnElement, op: str, values: list[int], now: datetime) -> ColumnElement:
    """Whole days since a time: days >= n <=> t <= now - n days; days <= n <=> t > now - (n+1) days."""

    def ge(n: int) -> ColumnElement:
        return col <= now - timedelta(days=n)

    def le(n: int) -> ColumnElement:
        return col > now - timedelta(days=n + 1)

    if op == "ne":
        return not_(_days_since(col, "eq", values, now))
    a = values[0]
    expr = {"eq": lambda: and_(ge(a), le(a)), "gt": lambda: ge(a + 1), "ge": lambda: ge(a),
            "lt": lambda: le(a - 1) if a > 0 else false(), "le": lambda: le(a),
            "between": lambda: and_(ge(a), le(values[1]))}[op]()
    return and_(col.is_not(None), expr)


def _behavior(c: dict, now: datetime) -> ColumnElement:
    be = BehaviourEvent.__table__
    since = int(now.timestamp() * 1000) - c["within_days"] * 86_400_000
    n = c.get("min_count", 1) or 1
    where = (be.c.member_id == m.c.id, be.c.kind == pb.BehaviorKind.Value(c["kind"]), be.c.occur_ms >= since)
    if n == 1:
        did = exists().where(*where)
    else:  # a correlated count on the (member_id, kind, occur_ms) index
        did = select(func.count()).where(*where).scalar_subquery() >= n
    return not_(did) if c["operator"] == "did_not" else did


def _condition(c: dict, ctx: Context, stack: tuple[str, ...]) -> ColumnElement:
    name, op, values = c["field"], c["operator"], c.get("values", [])
    f = field_of(name)
    assert f is not None
    ints = [int(v) for v in values] if f.type == "int" else []
    if name in ("orders", "amount_fen", "days_since_first_order", "days_since_last_order", "buyer"):
        ctx.joins.add("ps")
    elif name.startswith("rfm."):
        ctx.joins.add("rfm")
    if name == "behavior":
        return _behavior(c, ctx.now)
    if name == "segment":
        keys = [v.split("/", 1)[1] for v in values]
        inner = or_(*[compile_node(ctx.segments[k], ctx, stack + (k,)) for k in keys])
        return not_(inner) if op == "not_in" else inner
    if name == "age":
        return _age(op, ints, ctx.today)
    if name in ("days_since_first_order", "days_since_last_order"):
        col = ps.c.first_order_time if name == "days_since_first_order" else ps.c.last_order_time
        return _days_since(col, op, ints, ctx.now)
    if name == "orders":
        return _cmp(func.coalesce(ps.c.order_count, 0), op, ints, nullable=False)
    if name == "amount_fen":
        return _cmp(func.coalesce(ps.c.total_paid_fen, 0), op, ints, nullable=False)
    if name.startswith("rfm.") and f.type == "int":
        return _cmp(rfm.c[name[4:]], op, ints)
    if name == "rfm.segment":
        return _names(rfm.c.segment, op, [pb.RfmSegment.Value(v) for v in values])
    if name == "buyer":
        count = func.coalesce(ps.c.order_count, 0)
        kinds = {BUYER[v] for v in values}
        terms = [{0: count == 0, 1: count == 1, 2: count >= 2}[k] for k in sorted(kinds)]
        positive = or_(*terms)
        return not_(positive) if op in ("ne", "not_in") else positive
    if name == "gender":
        return _names(m.c.gender, op, [pb.Gender.Value(v) for v in values], nullable=False)
    if name in ("province", "city", "occupation"):
        return _names(m.c[name], op, values, nullable=False)
    if name.startswith("attribute."):
        a = MemberAttribute.__table__
        key = name.split(".", 1)[1]
        match = a.c.value.in_(values) if op in ("in", "not_in") else a.c.value == values[0]
        return _set("not_in" if op in ("ne", "not_in") else "in",
                    exists().where(a.c.member_id == m.c.id, a.c.key == key, match))
    if name == "tier":
        return _names(m.c.tier_id, op, [int(v.split("/")[1]) for v in values])
    if name == "first_touch_channel":
        return _names(m.c.first_touch_channel_id, op, [int(v.split("/")[1]) for v in values])
    if name == "first_touch_channel_type":
        return _names(m.c.first_touch_channel_type, op, [pb.ChannelType.Value(v) for v in values], nullable=False)
    if name == "tag":
        t = MemberTag.__table__
        ids = [int(v.rsplit("/", 1)[1]) for v in values]
        return _set(op, exists().where(t.c.member_id == m.c.id, t.c.tag_id.in_(ids)))
    if name in ("touchpoint_channel", "touchpoint_channel_type"):
        tp = Touchpoint.__table__
        if name == "touchpoint_channel":
            match = tp.c.channel_code_id.in_([int(v.split("/")[1]) for v in values])
        else:
            match = tp.c.channel_type.in_([pb.ChannelType.Value(v) for v in values])
        return _set(op, exists().where(tp.c.member_id == m.c.id, match))
    if name == "category":
        pc = MemberPurchaseCategory.__table__
        return _set(op, exists().where(pc.c.member_id == m.c.id, pc.c.category.in_(values)))
    raise AssertionError(f"field {name} has no compiler")


def compile_node(n: dict, ctx: Context, stack: tuple[str, ...] = ()) -> ColumnElement:
    if n.get("all"):
        return and_(true(), *[compile_node(c, ctx, stack) for c in n["all"]])
    if n.get("any"):
        return or_(false(), *[compile_node(c, ctx, stack) for c in n["any"]])
    if n.get("not"):
        return not_(compile_node(n["not"], ctx, stack))
    return _condition(n["condition"] if n.get("condition") else n, ctx, stack)


def compile_rule(rule: dict, ctx: Context):
    """One SELECT of the ids of the members matching ``rule`` (no ORDER BY)."""
    where = compile_node(rule, ctx)
    return select(m.c.id).select_from(base_from(ctx.joins)).where(where)


# --- proto <-> dict --------------------------------------------------------------------------------


def rule_of(msg: pb.SegmentRule) -> dict:
    """The dict form of a proto rule (empty message -> {} so validation names it)."""
    if len(msg.all):
        return {"all": [rule_of(c) for c in msg.all]}
    if len(msg.any):
        return {"any": [rule_of(c) for c in msg.any]}
    if msg.HasField("not"):
        return {"not": rule_of(getattr(msg, "not"))}
    if msg.HasField("condition"):
        c = msg.condition
        out: dict[str, Any] = {"field": c.field, "operator": c.operator, "values": list(c.values)}
        if c.field == "behavior":
            out.update(kind=pb.BehaviorKind.Name(c.kind) if c.kind in pb.BehaviorKind.values() else "",
                       min_count=c.min_count or 1, within_days=c.within_days)
        return {"condition": out}
    return {}


def rule_pb(rule: dict, out: pb.SegmentRule | None = None) -> pb.SegmentRule:
    out = out if out is not None else pb.SegmentRule()
    if rule.get("all"):
        for c in rule["all"]:
            rule_pb(c, out.all.add())
    elif rule.get("any"):
        for c in rule["any"]:
            rule_pb(c, out.any.add())
    elif rule.get("not"):
        rule_pb(rule["not"], getattr(out, "not"))
    else:
        c = rule.get("condition", rule)
        cond = out.condition
        cond.field, cond.operator = c["field"], c["operator"]
        cond.values.extend(c.get("values", []))
        if c["field"] == "behavior":
            cond.kind = pb.BehaviorKind.Value(c["kind"])
            cond.min_count, cond.within_days = c.get("min_count", 1), c["within_days"]
    return out

