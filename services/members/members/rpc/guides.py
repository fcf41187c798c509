"""RPCs of shopping guides and guide tasks (the rules are in ``guides.py``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from mall.members.v1 import members_service_pb2 as pb
from mallkit.auth import principal
from mallkit.csvbody import csv_body
from mallkit.db import utcnow
from mallkit.errors import InvalidArgument
from mallkit.names import parse_id, parse_ids
from mallkit.pagination import page_size
from mallkit.validation import IDENTIFIER, Validator

from ..guides import OUTCOMES, PERIODS, Completion, Report
from ..messages import set_time
from ..models import GuideAssignment, GuideTask, GuideTaskItem
from .base import RpcBase
from .segments import SEGMENT_NAME, SNAPSHOT_NAME

QUICK_REPLY = re.compile(r"quickReplyCategories/[1-9][0-9]{0,17}/quickReplies/[1-9][0-9]{0,17}", re.ASCII)
MAX_AHEAD = timedelta(days=366)
DEFAULT_LEAD = timedelta(days=1)


def _opt(prefix: str, key: int | None) -> str:
    return f"{prefix}/{key}" if key else ""


def assignment_pb(a: GuideAssignment) -> pb.GuideAssignment:
    out = pb.GuideAssignment(name=f"members/{a.member_id}/guideAssignments/{a.id}", member=f"members/{a.member_id}",
                             guide=f"staff/{a.guide_id}", previous_guide=_opt("staff", a.previous_guide_id),
                             store=_opt("stores", a.store_id), reason=a.reason, assigned_by=a.assigned_by,
                             moved_item_count=a.moved_item_count)
    set_time(out.create_time, a.create_time)
    return out


def task_pb(t: GuideTask) -> pb.GuideTask:
    out = pb.GuideTask(name=f"guideTasks/{t.id}", display_name=t.display_name,
                       snapshot=f"segments/{t.segment_key}/snapshots/{t.snapshot_version}", script=t.script,
                       quick_reply=t.quick_reply, recurrence=t.recurrence, reminder_template_id=t.reminder_template_id,
                       round_count=t.round_count, item_count=t.item_count, creator=t.creator)
    for f, v in (("start_time", t.start_time), ("due_time", t.due_time), ("end_time", t.end_time),
                 ("create_time", t.create_time)):
        set_time(getattr(out, f), v)
    out.reminder_lead.FromSeconds(t.reminder_lead_seconds)
    return out


def item_pb(i: GuideTaskItem) -> pb.GuideTaskItem:
    out = pb.GuideTaskItem(name=f"guideTasks/{i.task_id}/items/{i.id}", round=i.round, member=f"members/{i.member_id}",
                           guide=_opt("staff", i.guide_id), store=_opt("stores", i.store_id), state=i.state, note=i.note,
                           completed_by=i.completed_by,
                           reminder_touch=f"members/{i.member_id}/touches/{i.reminder_touch_id}"
                           if i.reminder_touch_id else "")
    set_time(out.due_time, i.due_time)
    set_time(out.complete_time, i.complete_time)
    return out


def completion_pb(c: Completion) -> pb.GuideTaskCompletion:
    return pb.GuideTaskCompletion(key=c.key, item_count=c.items, completed_count=c.completed, done_count=c.done,
                                  unreachable_count=c.unreachable, declined_count=c.declined,
                                  completion_rate=c.completed / c.items if c.items else 0.0)


GUIDE_TASK_COLUMNS = ["level", "key", "items", "completed", "done", "unreachable", "declined", "completion_rate",
                      "outcome_days", "reached_members", "reached_buyers", "rest_members", "rest_buyers"]


def _completion_row(c: pb.GuideTaskCompletion) -> list:
    return [c.item_count, c.completed_count, c.done_count, c.unreachable_count, c.declined_count,
            round(c.completion_rate, 4)]


def report_pb(name: str, days: int, r: Report) -> pb.GuideTaskReport:
    return pb.GuideTaskReport(name=name, task=completion_pb(r.task), guides=[completion_pb(c) for c in r.guides],
                              stores=[completion_pb(c) for c in r.stores], outcome_days=days,
                              reached_member_count=r.reached, reached_buyer_count=r.reached_buyers,
                              rest_member_count=r.rest, rest_buyer_count=r.rest_buyers)


def _time(v: Validator, field: str, ts) -> datetime | None:
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        v.fail(field, "is not a valid time")
        return None


class GuidesRpc(RpcBase):
    async def AssignGuide(self, request, context):
        member_id = parse_id(request.member, "members", "member")
        guide_id = parse_id(request.guide, "staff", "guide")
        v = Validator()
        v.text("reason", request.reason, max_len=256, min_len=1)
        v.done()

        async def use_case(s):
            scope = await self.guides.scope_of(s, principal())
            return assignment_pb(await self.guides.assign(s, scope, member_id, guide_id, request.reason))

        return await self.idem.run(request, pb.GuideAssignment, use_case)

    async def ListGuideAssignments(self, request, context):
        member_id = parse_id(request.parent, "members", "parent")
        size = page_size(request.page_size)
        async with self.sessions() as s:
            scope = await self.guides.scope_of(s, principal())
            rows, token = await self.guides.assignments(s, scope, member_id, size, request.page_token)
        return pb.ListGuideAssignmentsResponse(guide_assignments=[assignment_pb(a) for a in rows],
                                               next_page_token=token)

    async def ListGuideMembers(self, request, context):
        guide_id = None if request.guide == "staff/-" else parse_id(request.guide, "staff", "guide")
        size = page_size(request.page_size)
        async with self.sessions() as s:
            scope = await self.guides.scope_of(s, principal())
            rows, token = await self.guides.guide_members(s, scope, guide_id, size, request.page_token)
        out = pb.ListGuideMembersResponse(next_page_token=token)
        for mid, nickname, guide, store, tier, segment, last_order, last_contact in rows:
            gm = out.members.add(member=f"members/{mid}", nickname=nickname, guide=_opt("staff", guide),
                                 store=_opt("stores", store), tier=_opt("tiers", tier), rfm_segment=segment or 0)
            set_time(gm.last_order_time, last_order)
            set_time(gm.last_contact_time, last_contact)
        return out

    async def CreateGuideTask(self, request, context):
        t, v, now = request.guide_task, Validator(), utcnow()
        v.text("guide_task.display_name", t.display_name, max_len=64, min_len=1)
        v.text("guide_task.script", t.script, max_len=1000, min_len=1)
        if t.quick_reply:
            v.pattern("guide_task.quick_reply", t.quick_reply, QUICK_REPLY,
                      "must look like quickReplyCategories/{id}/quickReplies/{id}")
        v.enum("guide_task.recurrence", t.recurrence, pb.GuideTaskRecurrence)
        if t.reminder_template_id:
            v.pattern("guide_task.reminder_template_id", t.reminder_template_id, IDENTIFIER,
                      "letters, digits, '_' or '-', at most 64")
        lead = t.reminder_lead.ToTimedelta() if t.HasField("reminder_lead") else DEFAULT_LEAD
        v.check(timedelta(minutes=1) <= lead <= timedelta(days=30), "guide_task.reminder_lead",
                "must be 1 minute to 30 days")
        start = _time(v, "guide_task.start_time", t.start_time) if t.HasField("start_time") else now
        due = _time(v, "guide_task.due_time", t.due_time) if v.check(t.HasField("due_time"), "guide_task.due_time",
                                                                      "is required") else None
        end = _time(v, "guide_task.end_time", t.end_time) if t.HasField("end_time") else None
        if start is not None:
            v.check(now - MAX_AHEAD < start < now + MAX_AHEAD, "guide_task.start_time", "must be within a year of now")
            if due is not None:
                v.check(start < due <= now + MAX_AHEAD, "guide_task.due_time",
                        "must be after the start time and within a year")
                period = PERIODS.get(t.recurrence)
                v.check(period is None or due - start <= period, "guide_task.due_time",
                        "must be at most one period after the start time of a recurring task")
            if end is not None:
                v.check(t.recurrence != pb.GUIDE_TASK_RECURRENCE_UNSPECIFIED, "guide_task.end_time",
                        "only recurring tasks have an end time")
                v.check(end > start, "guide_task.end_time", "must be after the start time")
        snap = SNAPSHOT_NAME.fullmatch(t.snapshot)
        seg = SEGMENT_NAME.fullmatch(t.snapshot)
        v.check(bool(snap or seg), "guide_task.snapshot",
                "must look like segments/{segment}/snapshots/{version} or segments/{segment}")
        v.check(not snap or snap.group(2) != "latest", "guide_task.snapshot", "must name a version (or the segment)")
        v.done()
        key, version = (snap.group(1), int(snap.group(2))) if snap else (seg.group(1), None)  # type: ignore[union-attr]
        fields = {"display_name": t.display_name, "script": t.script, "quick_reply": t.quick_reply,
                  "start_time": start, "due_time": due, "recurrence": t.recurrence, "end_time": end,
                  "reminder_template_id": t.reminder_template_id, "reminder_lead_seconds": int(lead.total_seconds())}

        async def use_case(s):
            scope = await self.guides.scope_of(s, principal())
            task = await self.guides.create_task(s, scope, fields, key, version)
            return task_pb(await self.guides.task(s, task.id))

        return await self.idem.run(request, pb.GuideTask, use_case)

    async def GetGuideTask(self, request, context):
        task_id = parse_id(request.name, "guideTasks", "name")
        async with self.sessions() as s:
            return task_pb(await self.guides.task(s, task_id))

    async def ListGuideTaskItems(self, request, context):
        task_id = None if request.parent == "guideTasks/-" else parse_id(request.parent, "guideTasks", "parent")
        v = Validator()
        v.enum("state", request.state, pb.GuideTaskItemState)
        v.done()
        size = page_size(request.page_size)
        async with self.sessions() as s:
            scope = await self.guides.scope_of(s, principal())
            rows, token = await self.guides.items(s, scope, task_id, request.state, size, request.page_token)
        return pb.ListGuideTaskItemsResponse(items=[item_pb(i) for i in rows], next_page_token=token)

    async def CompleteGuideTaskItem(self, request, context):
        task_id, item_id = parse_ids(request.name, "guideTasks/{}/items/{}", "name")
        v = Validator()
        v.check(request.outcome in OUTCOMES, "outcome",
                "must be GUIDE_TASK_ITEM_STATE_DONE, _UNREACHABLE or _DECLINED")
        v.text("note", request.note, max_len=500)
        v.done()

        async def use_case(s):
            scope = await self.guides.scope_of(s, principal())
            return item_pb(await self.guides.complete(s, scope, task_id, item_id, request.outcome, request.note))

        return await self.idem.run(request, pb.GuideTaskItem, use_case)

    async def GetGuideTaskReport(self, request, context):
        return await self._report(request)

    async def ExportGuideTaskReport(self, request, context):
        r = await self._report(request)
        outcome = [r.outcome_days, r.reached_member_count, r.reached_buyer_count, r.rest_member_count,
                   r.rest_buyer_count]
        rows = [["task", r.name.removesuffix("/report"), *_completion_row(r.task), *outcome]]
        rows += [["guide", c.key, *_completion_row(c), *[""] * len(outcome)] for c in r.guides]
        rows += [["store", c.key, *_completion_row(c), *[""] * len(outcome)] for c in r.stores]
        return csv_body(GUIDE_TASK_COLUMNS, rows)

    async def _report(self, request) -> pb.GuideTaskReport:
        if not request.name.endswith("/report"):
            raise InvalidArgument.field("name", "must look like guideTasks/{id}/report")
        task_id = parse_id(request.name.removesuffix("/report"), "guideTasks", "name")
        v = Validator()
        v.range("outcome_days", request.outcome_days, 0, 365)
        v.done()
        days = request.outcome_days or 7
        async with self.sessions() as s:
            scope = await self.guides.scope_of(s, principal())
            report = await self.guides.report(s, scope, task_id, days)
        return report_pb(f"guideTasks/{task_id}/report", days, report)
