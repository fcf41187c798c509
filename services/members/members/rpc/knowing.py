"""RPCs of the RFM model and of auto-tag rules."""

from __future__ import annotations

from mall.members.v1 import members_service_pb2 as pb
from mallkit.db import run_transaction
from mallkit.errors import Aborted
from mallkit.names import parse_id, parse_ids
from mallkit.pagination import page_size
from mallkit.validation import Validator

from ..messages import set_time, tag_rule_pb, update_paths
from ..models import Tag
from ..rfm import Report
from ..rules import rule_of
from .base import RpcBase


def report_pb(r: Report, method: str) -> pb.RfmReport:
    out = pb.RfmReport(member_count=r.member_count, method=method, segments=[
        pb.RfmSegmentStat(segment=seg, member_count=n, amount_fen=a) for seg, n, a in r.rows])
    set_time(out.compute_time, r.compute_time)
    return out


class KnowingRpc(RpcBase):
    async def RecomputeRfm(self, request, context):
        if await self.rfm.run_job(self.sessions) is None:
            raise Aborted("an RFM recompute is running on another replica", reason="RFM_RUNNING",
                          zh="RFM 正在计算中,请稍后再试")
        async with self.sessions() as s:
            return report_pb(await self.rfm.report(s), self.rfm.config.method)

    async def GetRfmReport(self, request, context):
        async with self.sessions() as s:
            return report_pb(await self.rfm.report(s), self.rfm.config.method)

    async def CreateTagRule(self, request, context):
        r, v = request.tag_rule, Validator()
        v.text("tag_rule.display_name", r.display_name, max_len=64, min_len=1)
        v.check(r.HasField("rule"), "tag_rule.rule", "is required")
        v.done()
        tag_id = parse_ids(r.tag, "tagGroups/{}/tags/{}", "tag_rule.tag")[1]
        rule = rule_of(r.rule)

        async def use_case(s):
            created = await self.autotags.create(s, r.display_name, tag_id, rule, r.disabled)
            return tag_rule_pb(created, await s.get(Tag, tag_id))

        return await self.idem.run(request, pb.TagRule, use_case)

    async def UpdateTagRule(self, request, context):
        r = request.tag_rule
        rule_id = parse_id(r.name, "tagRules", "tag_rule.name")
        paths = update_paths(request.update_mask.paths, r, {"name", "last_run_time", "create_time"},
                             {"display_name", "rule", "disabled"}, "TagRule")
        v, changes = Validator(), {}
        if "display_name" in paths:
            v.text("tag_rule.display_name", r.display_name, max_len=64, min_len=1)
            changes["display_name"] = r.display_name
        if "disabled" in paths:
            changes["disabled"] = r.disabled
        if "rule" in paths:
            v.check(r.HasField("rule"), "tag_rule.rule", "is required")
        v.done()
        if "rule" in paths:
            changes["rule"] = rule_of(r.rule)

        async def use_case(s):
            updated = await self.autotags.update(s, rule_id, changes)
            return tag_rule_pb(updated, await s.get(Tag, updated.tag_id))

        return await self.idem.run(request, pb.TagRule, use_case)

    async def DeleteTagRule(self, request, context):
        rule_id = parse_id(request.name, "tagRules", "name")

        async def use_case(s):
            return pb.DeleteTagRuleResponse(removed_count=await self.autotags.delete(s, rule_id))

        return await self.idem.run(request, pb.DeleteTagRuleResponse, use_case)

    async def ListTagRules(self, request, context):
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.autotags.list_rules(s, size, request.page_token)
            out = [tag_rule_pb(r, await s.get(Tag, r.tag_id)) for r in rows]
        return pb.ListTagRulesResponse(tag_rules=out, next_page_token=token)

    async def RunTagRule(self, request, context):
        rule_id = parse_id(request.name, "tagRules", "name")
        if request.validate_only:
            async with self.sessions() as s:
                gained, lost = await self.autotags.dry_run(s, rule_id)
        else:
            async def use_case(s):
                return await self.autotags.apply(s, rule_id)

            gained, lost = await run_transaction(self.sessions, use_case)
        return pb.RunTagRuleResponse(gained_count=gained, lost_count=lost)

    async def ListTagRuleChanges(self, request, context):
        rule_id = parse_id(request.parent, "tagRules", "parent")
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.autotags.changes(s, rule_id, size, request.page_token)
        out = []
        for c in rows:
            ch = pb.TagRuleChange(member=f"members/{c.member_id}", action=c.action)
            set_time(ch.create_time, c.create_time)
            out.append(ch)
        return pb.ListTagRuleChangesResponse(changes=out, next_page_token=token)
