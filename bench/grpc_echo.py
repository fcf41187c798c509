"""A bare grpc.aio server answering ``MembersService/GetMember`` with a fixed member: no
interceptor, no database. ``bench/members_me.py`` runs it in its own process as a baseline
for what grpc.aio itself costs per unary call on this machine.

    python bench/grpc_echo.py PORT
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "gen" / "python"))

import grpc  # noqa: E402

from mall.members.v1 import members_service_pb2 as pb  # noqa: E402


async def serve(port: int) -> None:
    member = pb.Member(name="members/1", nickname="基准", invite_code="BENCH001", growth_value=250)

    async def get_member(request, context):
        return member

    handler = grpc.method_handlers_generic_handler("mall.members.v1.MembersService", {
        "GetMember": grpc.unary_unary_rpc_method_handler(
            get_member, request_deserializer=pb.GetMemberRequest.FromString,
            response_serializer=pb.Member.SerializeToString)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
