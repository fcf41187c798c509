"""Quick-reply library (话术库): categories, entries of three kinds, keyword search, usage counts, staff only."""

from __future__ import annotations

import asyncio
import uuid

import grpc

from mall.community.v1 import community_service_pb2 as pb
from tests.community.helpers import refused, rid


async def test_search_by_keyword_most_used_first_and_usage_counted_once_per_request(community):
    op, guide = community.staff_md("operator"), community.staff_md("guide", 3)
    tag = uuid.uuid4().hex[:6]
    cat = await community.stub.CreateQuickReplyCategory(pb.CreateQuickReplyCategoryRequest(
        quick_reply_category=pb.QuickReplyCategory(display_name=f"售后{tag}")), metadata=op)
    code, info = await refused(community.stub.CreateQuickReplyCategory(pb.CreateQuickReplyCategoryRequest(
        quick_reply_category=pb.QuickReplyCategory(display_name=f"售后{tag}")), metadata=op))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    text = await community.stub.CreateQuickReply(pb.CreateQuickReplyRequest(parent=cat.name, quick_reply=pb.QuickReply(
        kind=pb.QUICK_REPLY_KIND_TEXT, title="退货说明", text=f"签收 7 天内可无理由退货{tag}", keywords=["退货", tag])),
        metadata=op)
    card = await community.stub.CreateQuickReply(pb.CreateQuickReplyRequest(parent=cat.name, quick_reply=pb.QuickReply(
        kind=pb.QUICK_REPLY_KIND_MINI_PROGRAM_CARD, title=f"售后入口{tag}", image_url="https://img.example.com/a.png",
        page_path="pages/aftersale/index?from=guide", keywords=["售后"])), metadata=op)
    image = await community.stub.CreateQuickReply(pb.CreateQuickReplyRequest(parent=cat.name, quick_reply=pb.QuickReply(
        kind=pb.QUICK_REPLY_KIND_IMAGE, title="尺码表", image_url="https://img.example.com/size.png")), metadata=op)
    key = rid()
    await asyncio.gather(*[community.stub.UseQuickReply(pb.UseQuickReplyRequest(name=card.name, request_id=key),
                                                        metadata=guide) for _ in range(5)])
    used = await community.stub.UseQuickReply(pb.UseQuickReplyRequest(name=card.name), metadata=guide)
    assert used.usage_count == 2
    found = await community.stub.ListQuickReplies(pb.ListQuickRepliesRequest(parent="quickReplyCategories/-",
                                                                             keyword=tag), metadata=guide)
    assert [q.name for q in found.quick_replies] == [card.name, text.name]
    page1 = await community.stub.ListQuickReplies(pb.ListQuickRepliesRequest(parent=cat.name, page_size=2),
                                                  metadata=guide)
    page2 = await community.stub.ListQuickReplies(pb.ListQuickRepliesRequest(parent=cat.name, page_size=2,
                                                                             page_token=page1.next_page_token),
                                                  metadata=guide)
    assert [q.name for q in [*page1.quick_replies, *page2.quick_replies]] == [card.name, image.name, text.name]
    percent = await community.stub.ListQuickReplies(pb.ListQuickRepliesRequest(parent=cat.name, keyword="%"),
                                                    metadata=guide)
    assert list(percent.quick_replies) == []  # LIKE wildcards are escaped


async def test_quick_replies_are_for_staff_only_and_validated(community):
    code, _ = await refused(community.stub.ListQuickReplyCategories(pb.ListQuickReplyCategoriesRequest(),
                                                                    metadata=community.member_md(5)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _ = await refused(community.stub.CreateQuickReplyCategory(pb.CreateQuickReplyCategoryRequest(
        quick_reply_category=pb.QuickReplyCategory(display_name="x")), metadata=community.staff_md("guide")))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    cats = await community.stub.ListQuickReplyCategories(pb.ListQuickReplyCategoriesRequest(page_size=1),
                                                         metadata=community.staff_md("guide"))
    parent = cats.quick_reply_categories[0].name
    for reply, field in [
        (pb.QuickReply(kind=pb.QUICK_REPLY_KIND_TEXT, title="t"), "quick_reply.text"),
        (pb.QuickReply(kind=pb.QUICK_REPLY_KIND_IMAGE, title="t", image_url="http://insecure/x.png"),
         "quick_reply.image_url"),
        (pb.QuickReply(kind=pb.QUICK_REPLY_KIND_MINI_PROGRAM_CARD, title="t", image_url="https://a/b.png"),
         "quick_reply.page_path"),
        (pb.QuickReply(title="t", text="x"), "quick_reply.kind"),
    ]:
        code, info = await refused(community.stub.CreateQuickReply(pb.CreateQuickReplyRequest(
            parent=parent, quick_reply=reply), metadata=community.staff_md("admin")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and info.metadata["field"] == field
