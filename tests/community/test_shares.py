"""Content tracking and share chains (超私域): views, chains A -> B -> C, anonymous visitors joined on login."""

from __future__ import annotations

import asyncio
import uuid

import grpc

from mall.community.v1 import community_service_pb2 as pb
from tests.community.helpers import join, make_group, new_member_id, refused
from tests.community.test_content import post, wait_for


def visitor() -> str:
    return "v" + uuid.uuid4().hex


async def view(community, name, *, member=None, visitor_id="", share_token=""):
    md = community.member_md(member) if member else None
    return await community.stub.ViewPost(pb.ViewPostRequest(name=name, visitor_id=visitor_id, share_token=share_token),
                                         metadata=md)


async def report(community, name) -> pb.PostReport:
    return await community.stub.GetPostReport(pb.GetPostReportRequest(name=f"{name}/report"),
                                              metadata=community.staff_md("operator"))


async def test_share_chain_a_b_c_attributes_views_up_the_chain_and_anonymous_views_join_after_login(community):
    group = await make_group(community)
    article = await post(community, group, kind=pb.POST_KIND_ARTICLE, title="黑头是怎么形成的", body="油脂氧化……")
    a, b, c = new_member_id(), new_member_id(), new_member_id()
    await join(community, group, a)
    await view(community, article.name, member=a)

    share_a = await community.stub.SharePost(pb.SharePostRequest(name=article.name), metadata=community.member_md(a))
    assert share_a.depth == 1 and share_a.sharer == f"members/{a}" and share_a.token
    again = await community.stub.SharePost(pb.SharePostRequest(name=article.name), metadata=community.member_md(a))
    assert again.name == share_a.name  # one share per member and post

    # B is not in the group: B reads through A's link, then shares it on.
    await view(community, article.name, member=b, share_token=share_a.token)
    share_b = await community.stub.SharePost(pb.SharePostRequest(name=article.name, parent_share_token=share_a.token),
                                             metadata=community.member_md(b))
    assert share_b.depth == 2 and share_b.parent_share == share_a.name

    # C reads B's link twice before signing in (an anonymous visitor), then signs in.
    c_visitor = visitor()
    first = await view(community, article.name, visitor_id=c_visitor, share_token=share_b.token)
    assert first.post.title == "黑头是怎么形成的" and first.view
    await view(community, article.name, visitor_id=c_visitor, share_token=share_b.token)
    before = await report(community, article.name)
    assert before.members_gained == 0 and before.unique_viewers == 3  # a, b, and visitor c

    linked = await community.stub.LinkVisitor(pb.LinkVisitorRequest(name=f"visitors/{c_visitor}"),
                                              metadata=community.member_md(c))
    assert linked.member == f"members/{c}" and linked.linked_view_count == 2
    again = await community.stub.LinkVisitor(pb.LinkVisitorRequest(name=f"visitors/{c_visitor}"),
                                             metadata=community.member_md(c))
    assert again.linked_view_count == 0  # idempotent
    code, info = await refused(community.stub.LinkVisitor(pb.LinkVisitorRequest(name=f"visitors/{c_visitor}"),
                                                          metadata=community.member_md(a)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and info.reason == "VISITOR_LINKED_ELSEWHERE"
    await view(community, article.name, member=c, share_token=share_b.token)  # now signed in
    await view(community, article.name, visitor_id=c_visitor, share_token=share_b.token)  # same device, no session

    r = await report(community, article.name)
    assert r.views == 6 and r.shared_views == 5 and r.shares == 2 and r.max_share_depth == 2
    assert r.unique_viewers == 3  # a, b, c: C's anonymous views joined C
    assert r.members_gained == 1  # C read anonymously, then became known
    by_sharer = {s.sharer: s for s in r.sharers}
    sa, sb = by_sharer[f"members/{a}"], by_sharer[f"members/{b}"]
    assert (sa.depth, sa.direct_views, sa.chain_views, sa.unique_viewers, sa.chain_depth, sa.members_gained) == \
        (1, 1, 5, 2, 1, 1)  # B's view directly, C's four through B
    assert (sb.depth, sb.direct_views, sb.chain_views, sb.unique_viewers, sb.chain_depth, sb.members_gained) == \
        (2, 4, 4, 1, 0, 1)
    activity = await community.stub.GetMemberActivity(pb.GetMemberActivityRequest(
        name=f"members/{c}/communityActivity"), metadata=community.service_md)
    assert activity.view_count == 4 and activity.active

    # Sharing reaches the points service (share task), once per member and post.
    assert await wait_for(lambda: _shared(community, b, article.name))
    await asyncio.sleep(0.2)
    assert (await community.points.total(f"members/{b}", f"share:{article.name}"))[0] == 1


async def _shared(community, m, name):
    return (await community.points.total(f"members/{m}", f"share:{name}"))[0] >= 1


async def test_views_need_membership_or_a_share_of_that_post(community):
    group = await make_group(community)
    article = await post(community, group, kind=pb.POST_KIND_ARTICLE)
    other = await post(community, group, kind=pb.POST_KIND_ARTICLE)
    insider, outsider = new_member_id(), new_member_id()
    await join(community, group, insider)
    share = await community.stub.SharePost(pb.SharePostRequest(name=article.name), metadata=community.member_md(insider))
    code, _ = await refused(view(community, article.name, member=outsider))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, info = await refused(view(community, article.name))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and info.reason == "VISITOR_REQUIRED"
    code, _ = await refused(view(community, article.name, visitor_id=visitor()))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, info = await refused(view(community, other.name, visitor_id=visitor(), share_token=share.token))
    assert code == grpc.StatusCode.NOT_FOUND and info.reason == "SHARE_NOT_FOUND"  # a token of another post
    code, info = await refused(view(community, article.name, visitor_id="short"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and info.metadata["field"] == "visitor_id"
    assert (await view(community, article.name, visitor_id=visitor(), share_token=share.token)).view
    code, _ = await refused(community.stub.SharePost(pb.SharePostRequest(name=article.name),
                                                     metadata=community.member_md(outsider)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
