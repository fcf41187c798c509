"""Dead letters for operators: ``python -m mallkit.dlq list`` (``make dlq``).

Lists the events that a consumer gave up on (after ``MALL_EVENT_MAX_DELIVERIES``
deliveries, or at once when undecodable), with the consumer, the reason and
the event. A dead letter is replayed by the service that consumes it, through
its own inbox and handler: ``python -m <service> dlq replay <seq>``
(``make dlq-replay SEQ=<seq>`` finds the service).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from mallkit.events import EventBus, StreamSettings, get_dead_letter, list_dead_letters
from mallkit.settings import PlatformSettings


async def connect(settings: PlatformSettings, wait_seconds: float = 10.0) -> EventBus:
    url = settings.nats_url
    bus = EventBus(url, name="dlq-cli", streams=StreamSettings(namespace=settings.event_namespace))
    try:
        async with asyncio.timeout(wait_seconds):
            await bus.wait_connected()
    except TimeoutError:
        raise SystemExit(f"NATS does not answer at {url} (MALL_NATS_URL)") from None
    return bus


def describe(dl) -> str:
    event = dl.event
    what = f"{event.type} id={event.id} from {event.source}" if event is not None else "(undecodable)"
    when = dl.time.isoformat() if dl.time else "-"
    return f"{dl.seq:>8}  {when}  {dl.consumer:<24} deliveries={dl.deliveries}  {what}\n          reason: {dl.reason}"


async def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mallkit.dlq", description="Dead-lettered events")
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="list dead letters, oldest first")
    ls.add_argument("--service", default="", help="only those of this consuming service")
    ls.add_argument("--limit", type=int, default=100)
    sv = sub.add_parser("service", help="print the consuming service of dead letter SEQ")
    sv.add_argument("seq", type=int)
    args = parser.parse_args(argv)
    bus = await connect(PlatformSettings())
    try:
        if args.command == "list":
            dead = await list_dead_letters(bus, args.service or None, args.limit)
            for dl in dead:
                print(describe(dl))
            print(f"{len(dead)} dead letter(s)")
        else:
            print((await get_dead_letter(bus, args.seq)).service)
        return 0
    finally:
        await bus.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(None)))
