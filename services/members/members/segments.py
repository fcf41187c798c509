"""Segments (分群): saved audiences as rule trees (``rules.py``), previewed and materialized in SQL.

Preview counts and samples the members matching a rule now (one SELECT). Materialize takes
the next version number with one conditional UPDATE of the segment row and copies the
matching member ids into a snapshot with one INSERT ... SELECT, so concurrent materializes
get distinct versions and a snapshot is exactly the audience at that moment. Other services
read a snapshot by segment name and version (``segments/core/snapshots/3``, or ``latest``).

Built-in layers (core / loyal / regular members) are segments the migration creates; they
can be re-defined but not removed. A delete is soft (``delete_time``): the segment is gone
for operators and rules, its id stays taken and its snapshots stay readable, so a coupon
campaign or a guide task paging one goes on.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mallkit.db import utcnow
from mallkit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from mallkit.pagination import PageTokens
from mallkit.queries import keyset_page

from . import errors as reasons
from .models import Segment, SegmentSnapshot, SegmentSnapshotMember, TagRule
from .rules import Context, compile_rule, segment_refs, validate

#: The built-in layers, in order (the migration 0004 creates them with these rules).
BUILTIN: dict[str, tuple[str, dict]] = {
    "core": ("核心会员", {"all": [
        {"condition": {"field": "orders", "operator": "ge", "values": ["5"]}},
        {"condition": {"field": "amount_fen", "operator": "ge", "values": ["200000"]}},
        {"condition": {"field": "days_since_last_order", "operator": "le", "values": ["90"]}}]}),
    "loyal": ("忠诚会员", {"all": [
        {"condition": {"field": "orders", "operator": "ge", "values": ["2"]}},
        {"condition": {"field": "days_since_last_order", "operator": "le", "values": ["180"]}},
        {"condition": {"field": "segment", "operator": "not_in", "values": ["segments/core"]}}]}),
    "regular": ("普通会员", {"all": [
        {"condition": {"field": "orders", "operator": "ge", "values": ["1"]}},
        {"condition": {"field": "segment", "operator": "not_in", "values": ["segments/core", "segments/loyal"]}}]}),
}


def not_found(key: str) -> NotFound:
    return NotFound("segment not found", reason=reasons.SEGMENT_NOT_FOUND, metadata={"segment": f"segments/{key}"},
                    zh="分群不存在")


class Segments:
    def __init__(self, pages: PageTokens):
        self.pages = pages

    async def by_key(self, s: AsyncSession, key: str, *, deleted: bool = False) -> Segment:
        """The segment ``key``; a deleted one only with ``deleted`` (its snapshots stay readable)."""
        q = select(Segment).where(Segment.key == key)
        if not deleted:
            q = q.where(Segment.delete_time.is_(None))
        seg = (await s.execute(q)).scalar_one_or_none()
        if seg is None:
            raise not_found(key)
        return seg

    async def delete(self, s: AsyncSession, key: str) -> None:
        seg = await self.by_key(s, key)
        if seg.builtin:
            raise FailedPrecondition("a built-in layer cannot be deleted", reason=reasons.SEGMENT_BUILTIN,
                                     metadata={"segment": f"segments/{key}"}, zh="内置分层不能删除")
        others = (await s.execute(select(Segment.key, Segment.rule).where(
            Segment.delete_time.is_(None), Segment.id != seg.id))).tuples().all()
        rules = (await s.execute(select(TagRule.id, TagRule.rule))).tuples().all()
        users = [f"segments/{k}" for k, r in others if any(ref == key for _, ref in segment_refs(json.loads(r)))]
        users += [f"tagRules/{i}" for i, r in rules if any(ref == key for _, ref in segment_refs(json.loads(r)))]
        if users:
            raise FailedPrecondition(f"{', '.join(users)} refer to segments/{key}", reason=reasons.SEGMENT_IN_USE,
                                     metadata={"segment": f"segments/{key}", "referrers": ",".join(users)},
                                     zh="该分群正被其他分群或自动标签规则引用")
        changed = await s.execute(update(Segment).where(Segment.id == seg.id, Segment.delete_time.is_(None))
                                  .values(delete_time=utcnow()))
        if changed.rowcount != 1:  # type: ignore[attr-defined]  # a concurrent delete won
            raise not_found(key)

    async def resolve(self, s: AsyncSession, rule: dict, own_key: str | None, root: str) -> dict[str, dict]:
        """The rules of every segment ``rule`` refers to, transitively; a reference to an unknown
        segment or a cycle (back to ``own_key`` or around) is refused naming the reference."""
        found: dict[str, dict] = {}

        async def visit(key: str, chain: list[str], path: str) -> None:
            if key in chain:
                raise InvalidArgument.field(path, "makes a cycle of segments: " + " -> ".join(
                    f"segments/{k}" for k in chain[chain.index(key):] + [key]))
            if key not in found:
                seg = (await s.execute(select(Segment).where(Segment.key == key))).scalar_one_or_none()
                if seg is None or seg.delete_time is not None:
                    raise InvalidArgument.field(path, f"segments/{key} does not exist")
                found[key] = json.loads(seg.rule)
            for _, k in segment_refs(found[key]):
                await visit(k, chain + [key], path)

        for path, key in segment_refs(rule, root):
            await visit(key, [own_key] if own_key else [], path)
        return found

    async def check(self, s: AsyncSession, rule: dict, own_key: str | None, root: str) -> Context:
        validate(rule, root)
        return Context(utcnow(), await self.resolve(s, rule, own_key, root))

    async def create(self, s: AsyncSession, key: str, display_name: str, description: str, rule: dict) -> Segment:
        await self.check(s, rule, key, "segment.rule")
        if (await s.execute(select(Segment.id).where(Segment.key == key))).first() is not None:
            raise AlreadyExists("segment id taken", reason=reasons.SEGMENT_ID_TAKEN,
                                metadata={"segment": f"segments/{key}"}, zh="分群标识已存在")
        now = utcnow()
        seg = Segment(key=key, display_name=display_name, description=description, rule=json.dumps(rule),
                      builtin=False, last_version=0, create_time=now, update_time=now)
        s.add(seg)
        await s.flush()  # a concurrent create of the same key fails here (unique key)
        return seg

    async def update(self, s: AsyncSession, key: str, changes: dict) -> Segment:
        seg = await self.by_key(s, key)
        if "rule" in changes:
            await self.check(s, changes["rule"], key, "segment.rule")
            seg.rule = json.dumps(changes["rule"])
        for k in ("display_name", "description"):
            if k in changes:
                setattr(seg, k, changes[k])
        seg.update_time = utcnow()
        await s.flush()
        return seg

    async def list_segments(self, s: AsyncSession, size: int, token: str) -> tuple[list[Segment], str]:
        return await keyset_page(s, select(Segment).where(Segment.delete_time.is_(None)), key=Segment.id,
                                 tokens=self.pages, page_size=size, page_token=token)

    async def preview(self, s: AsyncSession, rule: dict, sample: int, root: str = "rule") -> tuple[int, list[int]]:
        ctx = await self.check(s, rule, None, root)
        return await self.count_and_sample(s, rule, ctx, sample)

    async def count_and_sample(self, s: AsyncSession, rule: dict, ctx: Context, sample: int) -> tuple[int, list[int]]:
        q = compile_rule(rule, ctx)
        count = (await s.execute(select(func.count()).select_from(q.subquery()))).scalar_one()
        ids = list(await s.execute(q.order_by(q.selected_columns[0]).limit(sample))) if sample else []
        return int(count), [int(r[0]) for r in ids]

    async def member_ids(self, s: AsyncSession, rule: dict, now: datetime | None = None) -> list[int]:
        """Every member id matching ``rule`` (tests and small audiences)."""
        ctx = Context(now or utcnow(), await self.resolve(s, rule, None, "rule"))
        q = compile_rule(rule, ctx)
        return sorted(int(r[0]) for r in await s.execute(q))

    async def materialize(self, s: AsyncSession, key: str) -> SegmentSnapshot:
        seg = await self.by_key(s, key)
        rule = json.loads(seg.rule)
        ctx = Context(utcnow(), await self.resolve(s, rule, key, "rule"))
        await s.execute(update(Segment).where(Segment.id == seg.id).values(last_version=Segment.last_version + 1))
        version = (await s.execute(select(Segment.last_version).where(Segment.id == seg.id))).scalar_one()
        snap = SegmentSnapshot(segment_id=seg.id, version=version, rule=seg.rule, member_count=0, create_time=ctx.now)
        s.add(snap)
        await s.flush()
        q = compile_rule(rule, ctx)
        copied = await s.execute(insert(SegmentSnapshotMember).from_select(
            ["snapshot_id", "member_id"], q.with_only_columns(literal(snap.id), q.selected_columns[0])))
        snap.member_count = copied.rowcount  # type: ignore[attr-defined]
        await s.flush()
        return snap

    async def snapshot(self, s: AsyncSession, key: str, version: str) -> SegmentSnapshot:
        seg = await self.by_key(s, key, deleted=True)
        q = select(SegmentSnapshot).where(SegmentSnapshot.segment_id == seg.id)
        if version == "latest":
            q = q.order_by(SegmentSnapshot.version.desc()).limit(1)
        else:
            q = q.where(SegmentSnapshot.version == int(version))
        snap = (await s.execute(q)).scalar_one_or_none()
        if snap is None:
            raise NotFound("snapshot not found", reason=reasons.SNAPSHOT_NOT_FOUND,
                           metadata={"snapshot": f"segments/{key}/snapshots/{version}"}, zh="分群快照不存在")
        return snap

    async def snapshot_members(self, s: AsyncSession, snap: SegmentSnapshot, size: int,
                               token: str) -> tuple[list[int], str]:
        sm = SegmentSnapshotMember
        return await keyset_page(s, select(sm.member_id).where(sm.snapshot_id == snap.id), key=sm.member_id,
                                 tokens=self.pages, page_size=size, page_token=token, filters=[snap.id])
