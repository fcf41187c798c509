"""Proto <-> domain translation of the members service: rows to messages, update masks and the
validation of incoming fields (no SQL, no business rule)."""

from __future__ import annotations

import json
import re
from datetime import date

from mall.members.v1 import members_service_pb2 as pb
from mallkit.errors import InvalidArgument
from mallkit.names import parse_ids
from mallkit.validation import Validator

from .models import (
    AttributeDefinition,
    BehaviourEvent,
    ChannelCode,
    Member,
    Segment,
    SegmentSnapshot,
    Staff,
    Store,
    Tag,
    TagGroup,
    TagRule,
    Tier,
    TierChange,
    Touch,
    Touchpoint,
)
from .rules import rule_pb

CODE = re.compile(r"[A-Za-z0-9_#-]{1,128}")
SCENE = re.compile(r"[A-Za-z0-9]{1,32}")
INVITE = re.compile(r"[A-Z0-9]{4,16}")
USERNAME = re.compile(r"[A-Za-z0-9_.-]{3,32}")
ATTRIBUTE_KEY = re.compile(r"[a-z][a-z0-9_]{1,31}")
PHONE = re.compile(r"1[3-9][0-9]{9}")
URL = re.compile(r"https://[^\s<>\"']{1,500}")
INTEGER = re.compile(r"-?[0-9]{1,18}")
FLAG = re.compile(r"[a-z][a-z0-9_]{0,31}")
VISITOR = re.compile(r"[A-Za-z0-9_-]{8,40}")
CLIENT_EVENT_ID = re.compile(r"[A-Za-z0-9_-]{1,40}")

MEMBER_FIELDS = {"nickname", "avatar_url", "gender", "birthday", "region", "region.province", "region.city",
                 "occupation", "phone", "phone_consent", "attributes"}
MEMBER_OUTPUT_ONLY = {"name", "invite_code", "inviter", "tier", "growth_value", "first_touch_channel_code",
                      "first_touch_channel_type", "guide", "store", "create_time", "update_time"}


def set_time(msg_field, dt) -> None:
    if dt is not None:
        msg_field.FromDatetime(dt)


# --- rows -> protos ------------------------------------------------------------------------

def member_pb(m: Member, attributes: dict[str, str]) -> pb.Member:
    out = pb.Member(
        name=f"members/{m.id}", nickname=m.nickname, avatar_url=m.avatar_url, gender=m.gender,
        region=pb.Region(province=m.province, city=m.city), occupation=m.occupation, phone=m.phone or "",
        phone_consent=m.phone_consent, attributes=attributes, invite_code=m.invite_code,
        inviter=f"members/{m.inviter_id}" if m.inviter_id else "", tier=f"tiers/{m.tier_id}" if m.tier_id else "",
        growth_value=m.growth_value,
        first_touch_channel_code=f"channelCodes/{m.first_touch_channel_id}" if m.first_touch_channel_id else "",
        first_touch_channel_type=m.first_touch_channel_type, guide=f"staff/{m.guide_id}" if m.guide_id else "",
        store=f"stores/{m.store_id}" if m.store_id else "",
    )
    if m.birthday:
        out.birthday.year, out.birthday.month, out.birthday.day = m.birthday.year, m.birthday.month, m.birthday.day
    set_time(out.create_time, m.create_time)
    set_time(out.update_time, m.update_time)
    return out


def channel_pb(c: ChannelCode, tags: list[Tag]) -> pb.ChannelCode:
    out = pb.ChannelCode(
        name=f"channelCodes/{c.id}", display_name=c.display_name, channel_type=c.channel_type,
        store=f"stores/{c.store_id}" if c.store_id else "", guide=f"staff/{c.guide_id}" if c.guide_id else "",
        tags=[f"tagGroups/{t.group_id}/tags/{t.id}" for t in tags], scene=c.scene, arrival_count=c.arrival_count,
    )
    set_time(out.create_time, c.create_time)
    return out


def touchpoint_pb(t: Touchpoint) -> pb.Touchpoint:
    out = pb.Touchpoint(name=f"members/{t.member_id}/touchpoints/{t.id}", scene=t.scene,
                        channel_code=f"channelCodes/{t.channel_code_id}" if t.channel_code_id else "",
                        channel_type=t.channel_type, first_touch=t.first_touch, post=t.post or "",
                        sharer=f"members/{t.sharer_id}" if t.sharer_id else "")
    set_time(out.create_time, t.create_time)
    return out


def tier_pb(t: Tier) -> pb.Tier:
    out = pb.Tier(name=f"tiers/{t.id}", display_name=t.display_name, growth_threshold=t.growth_threshold,
                  benefits=pb.TierBenefits(points_multiplier_percent=t.points_multiplier_percent,
                                           discount_percent=t.discount_percent,
                                           flags=[f for f in t.flags.split(",") if f]))
    set_time(out.create_time, t.create_time)
    return out


def tier_change_pb(c: TierChange) -> pb.TierChange:
    out = pb.TierChange(name=f"members/{c.member_id}/tierChanges/{c.id}",
                        from_tier=f"tiers/{c.from_tier_id}" if c.from_tier_id else "",
                        to_tier=f"tiers/{c.to_tier_id}" if c.to_tier_id else "", growth_value=c.growth_value)
    set_time(out.create_time, c.create_time)
    return out


def tag_group_pb(g: TagGroup) -> pb.TagGroup:
    out = pb.TagGroup(name=f"tagGroups/{g.id}", display_name=g.display_name, selection=g.selection,
                      description=g.description)
    set_time(out.create_time, g.create_time)
    return out


def tag_pb(t: Tag) -> pb.Tag:
    out = pb.Tag(name=f"tagGroups/{t.group_id}/tags/{t.id}", display_name=t.display_name)
    set_time(out.create_time, t.create_time)
    return out


def store_pb(st: Store) -> pb.Store:
    out = pb.Store(name=f"stores/{st.id}", display_name=st.display_name,
                   region=pb.Region(province=st.province, city=st.city), address=st.address)
    set_time(out.create_time, st.create_time)
    return out


def staff_pb(st: Staff) -> pb.Staff:
    out = pb.Staff(name=f"staff/{st.id}", username=st.username, display_name=st.display_name, role=st.role,
                   store=f"stores/{st.store_id}" if st.store_id else "", disabled=bool(st.disabled))
    set_time(out.create_time, st.create_time)
    return out


def attribute_definition_pb(d: AttributeDefinition) -> pb.AttributeDefinition:
    out = pb.AttributeDefinition(name=f"attributeDefinitions/{d.key}", key=d.key, display_name=d.display_name, type=d.type)
    set_time(out.create_time, d.create_time)
    return out


def touch_pb(t: Touch) -> pb.Touch:
    out = pb.Touch(name=f"members/{t.member_id}/touches/{t.id}", template_id=t.template_id, purpose=t.purpose,
                   state=t.state, skip_reason=t.skip_reason)
    set_time(out.create_time, t.create_time)
    return out


# --- validation helpers --------------------------------------------------------------------

def behavior_event_pb(e: BehaviourEvent) -> pb.BehaviorEvent:
    out = pb.BehaviorEvent(name=f"members/{e.member_id}/behaviorEvents/{e.id}", kind=e.kind, target=e.target,
                           detail=e.detail, touchpoint=e.touchpoint, value_fen=e.value_fen,
                           visitor_id=e.visitor_id or "", source=e.source)
    out.occur_time.FromMilliseconds(e.occur_ms)
    return out


def segment_pb(seg: Segment) -> pb.Segment:
    out = pb.Segment(name=f"segments/{seg.key}", display_name=seg.display_name, description=seg.description,
                     builtin=seg.builtin, latest_version=seg.last_version)
    rule_pb(json.loads(seg.rule), out.rule)
    set_time(out.create_time, seg.create_time)
    set_time(out.update_time, seg.update_time)
    return out


def snapshot_pb(key: str, snap: SegmentSnapshot) -> pb.SegmentSnapshot:
    out = pb.SegmentSnapshot(name=f"segments/{key}/snapshots/{snap.version}", version=snap.version,
                             member_count=snap.member_count)
    set_time(out.create_time, snap.create_time)
    return out


def tag_rule_pb(r: TagRule, tag: Tag | None) -> pb.TagRule:
    out = pb.TagRule(name=f"tagRules/{r.id}", display_name=r.display_name, disabled=r.disabled,
                     tag=f"tagGroups/{tag.group_id}/tags/{tag.id}" if tag else "")
    rule_pb(json.loads(r.rule), out.rule)
    set_time(out.last_run_time, r.last_run_time)
    set_time(out.create_time, r.create_time)
    return out


def update_paths(paths, message, output_only: set[str], allowed: set[str], prefix: str) -> list[str]:
    """The update paths: the mask, or the populated fields; output-only paths ignored."""
    if not paths:
        paths = [f.name for f, _ in message.ListFields()]
    if "*" in paths:
        paths = sorted(p for p in allowed if "." not in p)
    out = []
    for p in paths:
        if p in output_only:
            continue
        if p not in allowed and not (p.startswith("attributes.") and "attributes" in allowed):
            raise InvalidArgument.field("update_mask", f"{p!r} is not an updatable field of {prefix}")
        out.append(p)
    return out


def birthday_of(v: Validator, d) -> date | None:
    if d.year == 0 and d.month == 0 and d.day == 0:
        return None
    try:
        value = date(d.year, d.month, d.day)
    except ValueError:
        v.fail("member.birthday", "is not a valid date")
        return None
    if value.year < 1900 or value > date.today():
        v.fail("member.birthday", "must be between 1900-01-01 and today")
        return None
    return value


def check_attribute(v: Validator, key: str, value: str, definition: AttributeDefinition | None) -> None:
    field = f"member.attributes.{key}"
    if definition is None:
        v.fail(field, "is not a defined attribute")
        return
    if value == "":
        return  # removes the attribute
    if definition.type == pb.ATTRIBUTE_TYPE_STRING:
        v.text(field, value, max_len=128)
    elif definition.type == pb.ATTRIBUTE_TYPE_INTEGER:
        v.check(bool(INTEGER.fullmatch(value)), field, "must be an integer")
    elif definition.type == pb.ATTRIBUTE_TYPE_BOOLEAN:
        v.check(value in ("true", "false"), field, "must be true or false")
    elif definition.type == pb.ATTRIBUTE_TYPE_DATE:
        try:
            date.fromisoformat(value)
            v.check(len(value) == 10, field, "must be a date YYYY-MM-DD")
        except ValueError:
            v.fail(field, "must be a date YYYY-MM-DD")


def benefits_of(v: Validator, b: pb.TierBenefits, field: str) -> dict:
    mult = b.points_multiplier_percent or 100
    disc = b.discount_percent or 100
    v.range(f"{field}.points_multiplier_percent", mult, 100, 1000)
    v.range(f"{field}.discount_percent", disc, 50, 100)
    v.check(len(b.flags) <= 10, f"{field}.flags", "at most 10 flags")
    for i, f in enumerate(b.flags):
        v.pattern(f"{field}.flags[{i}]", f, FLAG, "lowercase letters, digits and '_', 1 to 32")
    return {"points_multiplier_percent": mult, "discount_percent": disc, "flags": ",".join(dict.fromkeys(b.flags))}


def tag_ids_of(names, field: str) -> list[int]:
    return [parse_ids(n, "tagGroups/{}/tags/{}", f"{field}[{i}]")[1] for i, n in enumerate(names)]
