"""Engine throughput without any channel: N customers send M messages each through
`engine.handle`, the outbox drained by the dispatcher into a recording channel.

    .venv/bin/python bench/engine.py [--customers 50] [--turns 7] [--db URL] [--repeats 3]

Prints messages/s for handling alone and for handling plus delivery, medians of the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.channel import ChannelAdapter, SendResult
from bot.channel.messages import InboundMessage, OutboundMessage
from bot.config import DatabaseSettings, load_settings
from bot.runtime import Runtime
from storage.migrate import upgrade

CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"
TURNS = [
    "hallo",
    "Beschwerde",
    "1",
    "Das Paket kam nass und zerrissen an.",
    "skip",
    "1",
    "2",
    "ja",
    "status",
    "danke",
]


class Sink(ChannelAdapter):
    name = "bench"

    def __init__(self) -> None:
        self.sent = 0

    async def send(self, message: OutboundMessage) -> SendResult:
        self.sent += 1
        return SendResult(platform_message_id=str(message.outbox_id))


async def run(url: str, customers: int, turns: int) -> tuple[float, float, int]:
    settings = load_settings(CONFIG)
    settings.database = DatabaseSettings(url=url, auto_migrate=False)
    rt = Runtime(settings, channels=[])
    rt.channels["bench"] = sink = Sink()
    await rt.start()
    n = 0

    async def customer(i: int) -> None:
        nonlocal n
        for t in range(turns):
            text = TURNS[t % len(TURNS)]
            await rt.engine.handle(
                InboundMessage(
                    channel="bench",
                    sender_id=f"c{i}",
                    platform_message_id=f"{i}-{t}",
                    thread_key=f"c{i}",
                    text=text,
                    locale_hint="de",
                )
            )
            n += 1

    start = time.perf_counter()
    await asyncio.gather(*(customer(i) for i in range(customers)))
    handled = time.perf_counter() - start
    async with rt.sessions() as s:
        from sqlalchemy import func, select

        from storage.models import OutboxMessage

        total = await s.scalar(select(func.count()).select_from(OutboxMessage))
    while sink.sent < (total or 0):  # noqa: ASYNC110 (a bench polls; no event to wait on)
        await asyncio.sleep(0.01)
    delivered = time.perf_counter() - start
    await rt.stop()
    return n / handled, n / delivered, sink.sent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=50)
    ap.add_argument("--turns", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--db", help="database URL (default: a fresh SQLite file per run)")
    args = ap.parse_args()
    handle, total = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            url = args.db or f"sqlite+aiosqlite:///{tmp}/bench.db"
            upgrade(url)
            h, d, sent = asyncio.run(run(url, args.customers, args.turns))
            handle.append(h)
            total.append(d)
    print(f"{args.customers} customers x {args.turns} messages, {sent} replies per run")
    print(f"handle:             {statistics.median(handle):7.1f} msg/s (median of {args.repeats})")
    print(f"handle + delivery:  {statistics.median(total):7.1f} msg/s")


if __name__ == "__main__":
    main()
