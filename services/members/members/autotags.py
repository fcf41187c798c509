"""Auto-tag rules: condition (the segment language, ``rules.py``) -> tag, applied set-wise.

A run computes the delta in SQL and records it first, in ``tag_rule_changes`` under a run id:
members matching the rule who do not hold the tag (APPLIED), and members holding the tag
*from this rule* (source RULE, source_ref ``tagRules/{id}``) who no longer match (REMOVED).
It then inserts / deletes exactly the recorded members, so the history and the tags agree.
A member holding the tag from anywhere else (manual, channel code) is never removed, and a
rule never displaces another tag of a single-select group. A dry run only counts the delta.

The job runs every enabled rule whose lease it takes (``tag_rules.lease_until``), so several
replicas never run one rule at once.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, func, insert, literal, not_, select
from sqlalchemy.ext.asyncio import AsyncSession

from mall.members.v1 import members_service_pb2 as pb
from mallkit.db import run_transaction, utcnow
from mallkit.errors import NotFound
from mallkit.jobs import claim
from mallkit.pagination import PageTokens
from mallkit.queries import keyset_page

from . import errors as reasons
from .models import MemberTag, Tag, TagGroup, TagRule, TagRuleChange
from .rules import Context, compile_node, m
from .rules import base_from as members_from
from .segments import Segments

APPLIED, REMOVED = pb.TAG_RULE_ACTION_APPLIED, pb.TAG_RULE_ACTION_REMOVED


class AutoTags:
    def __init__(self, segments: Segments, pages: PageTokens):
        self.segments = segments
        self.pages = pages

    async def rule(self, s: AsyncSession, rule_id: int) -> TagRule:
        r = await s.get(TagRule, rule_id)
        if r is None:
            raise NotFound("tag rule not found", reason=reasons.TAG_RULE_NOT_FOUND,
                           metadata={"tag_rule": f"tagRules/{rule_id}"}, zh="自动标签规则不存在")
        return r

    async def create(self, s: AsyncSession, display_name: str, tag_id: int, rule: dict, disabled: bool) -> TagRule:
        await self.segments.check(s, rule, None, "tag_rule.rule")
        if await s.get(Tag, tag_id) is None:
            raise NotFound("tag not found", reason=reasons.TAG_NOT_FOUND, metadata={"tag": str(tag_id)}, zh="标签不存在")
        r = TagRule(display_name=display_name, tag_id=tag_id, rule=json.dumps(rule), disabled=disabled,
                    create_time=utcnow())
        s.add(r)
        await s.flush()
        return r

    async def update(self, s: AsyncSession, rule_id: int, changes: dict) -> TagRule:
        r = await self.rule(s, rule_id)
        if "rule" in changes:
            await self.segments.check(s, changes["rule"], None, "tag_rule.rule")
            r.rule = json.dumps(changes["rule"])
        for k in ("display_name", "disabled"):
            if k in changes:
                setattr(r, k, changes[k])
        await s.flush()
        return r

    async def delete(self, s: AsyncSession, rule_id: int, now: datetime | None = None) -> int:
        """Delete the rule and remove the tags it gave (recorded as REMOVED); returns the members untagged."""
        r = await self.rule(s, rule_id)
        now = now or utcnow()
        ch, mt = TagRuleChange.__table__, MemberTag.__table__
        given = (mt.c.tag_id == r.tag_id, mt.c.source == pb.TAG_SOURCE_RULE, mt.c.source_ref == f"tagRules/{r.id}")
        await s.execute(insert(ch).from_select(["run", "rule_id", "member_id", "action", "create_time"], select(
            literal(str(uuid.uuid4())), literal(r.id), mt.c.member_id, literal(REMOVED),
            literal(now, ch.c.create_time.type)).where(*given)))
        removed = (await s.execute(mt.delete().where(*given))).rowcount or 0  # type: ignore[attr-defined]
        await s.delete(r)
        await s.flush()
        return int(removed)

    async def list_rules(self, s: AsyncSession, size: int, token: str) -> tuple[list[TagRule], str]:
        return await keyset_page(s, select(TagRule), key=TagRule.id, tokens=self.pages, page_size=size,
                                 page_token=token)

    async def _delta(self, s: AsyncSession, r: TagRule, now: datetime):
        """(gain, lose): SELECTs of the member ids the run would tag and untag."""
        rule = json.loads(r.rule)
        ctx = Context(now, await self.segments.resolve(s, rule, None, "rule"))
        cond = compile_node(rule, ctx)
        mt = MemberTag.__table__
        tag = await s.get(Tag, r.tag_id)
        assert tag is not None
        group = await s.get(TagGroup, tag.group_id)
        holds = exists().where(mt.c.member_id == m.c.id, mt.c.tag_id == r.tag_id)
        blocked = [exists().where(mt.c.member_id == m.c.id, mt.c.group_id == tag.group_id)] \
            if group is not None and group.selection == pb.TAG_SELECTION_SINGLE else []
        gain = select(m.c.id).select_from(members_from(ctx.joins)).where(cond, not_(holds),
                                                                          *[not_(b) for b in blocked])
        matching = select(m.c.id).select_from(members_from(ctx.joins)).where(cond)
        lose = select(mt.c.member_id).where(mt.c.tag_id == r.tag_id, mt.c.source == pb.TAG_SOURCE_RULE,
                                            mt.c.source_ref == f"tagRules/{r.id}",
                                            mt.c.member_id.not_in(matching))
        return gain, lose, tag

    async def dry_run(self, s: AsyncSession, rule_id: int, now: datetime | None = None) -> tuple[int, int]:
        r = await self.rule(s, rule_id)
        gain, lose, _ = await self._delta(s, r, now or utcnow())
        n_gain = (await s.execute(select(func.count()).select_from(gain.subquery()))).scalar_one()
        n_lose = (await s.execute(select(func.count()).select_from(lose.subquery()))).scalar_one()
        return int(n_gain), int(n_lose)

    async def apply(self, s: AsyncSession, rule_id: int, now: datetime | None = None) -> tuple[int, int]:
        """Apply one rule in the caller's transaction; returns (gained, lost)."""
        now = now or utcnow()
        r = await self.rule(s, rule_id)
        gain, lose, tag = await self._delta(s, r, now)
        run = str(uuid.uuid4())
        ch, mt = TagRuleChange.__table__, MemberTag.__table__
        cols = ["run", "rule_id", "member_id", "action", "create_time"]

        def changes(q, action: int):
            col = q.selected_columns[0]
            return insert(ch).from_select(cols, q.with_only_columns(
                literal(run), literal(r.id), col, literal(action), literal(now, ch.c.create_time.type)))

        gained = (await s.execute(changes(gain, APPLIED))).rowcount or 0  # type: ignore[attr-defined]
        lost = (await s.execute(changes(lose, REMOVED))).rowcount or 0  # type: ignore[attr-defined]
        group = await s.get(TagGroup, tag.group_id)
        single = tag.group_id if group is not None and group.selection == pb.TAG_SELECTION_SINGLE else None
        if gained:
            recorded = select(ch.c.member_id, literal(r.tag_id), literal(tag.group_id), literal(single),
                              literal(pb.TAG_SOURCE_RULE), literal(f"tagRules/{r.id}"),
                              literal(now, mt.c.create_time.type)).where(ch.c.run == run, ch.c.action == APPLIED)
            await s.execute(insert(mt).from_select(
                ["member_id", "tag_id", "group_id", "single_group_id", "source", "source_ref", "create_time"],
                recorded))
        if lost:
            removed = select(ch.c.member_id).where(ch.c.run == run, ch.c.action == REMOVED)
            await s.execute(mt.delete().where(and_(mt.c.tag_id == r.tag_id, mt.c.source == pb.TAG_SOURCE_RULE,
                                                   mt.c.member_id.in_(removed))))
        r.last_run_time = now
        await s.flush()
        return int(gained), int(lost)

    async def changes(self, s: AsyncSession, rule_id: int, size: int, token: str) -> tuple[list[TagRuleChange], str]:
        await self.rule(s, rule_id)
        q = select(TagRuleChange).where(TagRuleChange.rule_id == rule_id)
        return await keyset_page(s, q, key=TagRuleChange.id.desc(), tokens=self.pages, page_size=size,
                                 page_token=token, filters=[rule_id])

    async def run_job(self, sessions, now: datetime | None = None, lease: timedelta = timedelta(minutes=10)) -> int:
        """Apply every enabled rule this replica can lease; returns the rules applied."""
        now = now or utcnow()
        async with sessions() as s:
            ids = list((await s.execute(select(TagRule.id).where(TagRule.disabled.is_(False))
                                        .order_by(TagRule.id))).scalars())
        done = 0
        for rule_id in ids:
            async def take(s, rule_id=rule_id) -> bool:
                return await claim(s, TagRule.__table__, rule_id, lease, now)

            if not await run_transaction(sessions, take):
                continue  # another replica is on it

            async def work(s, rule_id=rule_id) -> None:
                await self.apply(s, rule_id, now)
                r = await s.get(TagRule, rule_id)
                if r is not None:
                    r.lease_until = None

            await run_transaction(sessions, work)
            done += 1
        return done
