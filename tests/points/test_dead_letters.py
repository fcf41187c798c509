"""An event that keeps failing is dead-lettered with its reason; an operator lists it and, once the
cause is gone, replays it through the consuming service's own inbox: `make dlq` / `make dlq-replay`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

from mall.events.v1 import events_pb2
from mall.orders.v1 import orders_events_pb2 as opb
from mallkit import events
from tests.fixtures import deliver

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MALL_ENV": "test", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


async def test_a_failing_event_is_dead_lettered_listed_and_replayed_once(points, members):
    member = (await members.login())[0].member.name
    order = f"orders/{uuid.uuid4().int % 10**12 + 1}"
    # order.completed before its order.paid: points refuses it on every delivery (NOT_FOUND).
    outbox = events.Outbox(None, "orders")  # only to build the envelope
    completed = outbox.envelope("order.completed", opb.OrderCompletedEvent(order=order, member=member))
    bus = events.EventBus(os.environ["MALL_NATS_URL"], "test-orders")
    await bus.wait_connected()
    try:
        stream = await bus.ensure_stream("orders")
        await bus.js.publish(events.subject_of("orders", "order.completed"), completed.SerializeToString(),
                             stream=stream, headers={"Nats-Msg-Id": completed.id})
        consumer = points.app.platform.consumers[0]
        deadline = asyncio.get_running_loop().time() + 120  # 5 deliveries, backoff capped at 1 s here
        mine = []
        while not mine:
            mine = [d for d in await events.list_dead_letters(bus, "points") if d.event and d.event.id == completed.id]
            assert asyncio.get_running_loop().time() < deadline, "not dead-lettered in time"
            await asyncio.sleep(0.2)
        dead = mine[0]
        assert dead.consumer == "points-apply" and dead.deliveries == consumer.max_deliveries
        assert "no purchase points for this order" in dead.reason

        # The operator's view: every service's dead letters, and this service's own.
        listed = cli("mallkit.dlq", "list", "--service", "points")
        assert listed.returncode == 0, listed.stderr
        assert completed.id in listed.stdout and "order.completed" in listed.stdout
        assert cli("mallkit.dlq", "service", str(dead.seq)).stdout.strip() == "points"

        # Replaying before the cause is gone fails and keeps the dead letter.
        env = {"POINTS_DATABASE_URL": points.url, "MALL_MEMBERS_ADDR": members.addr}
        again = cli("points", "dlq", "replay", str(dead.seq), env_extra=env)
        assert again.returncode == 1 and "stays" in again.stderr
        # The order.paid arrives; the replay now applies the completion once and removes the dead letter.
        await points.deliver("order.paid", opb.OrderPaidEvent(order=order, member=member, paid_amount_fen=1200,
                                                              points_multiplier_percent=100))
        replayed = cli("points", "dlq", "replay", str(dead.seq), env_extra=env)
        assert replayed.returncode == 0, replayed.stderr
        account = await points.account(int(member.split("/")[1]))
        assert (account.available_points, account.pending_points) == (12, 0)
        assert [d for d in await events.list_dead_letters(bus, "points") if d.seq == dead.seq] == []
        # Applied once: delivering the same event again is a duplicate.
        assert (await deliver(points.app, events_pb2.Event.FromString(completed.SerializeToString()))).duplicate
    finally:
        await bus.close()
