"""The Telegram rate shaper (channels/telegram/send.py): at most the limit in any second,
and close to it when a campaign keeps it busy."""

from __future__ import annotations

import asyncio
import bisect

from channels.telegram.send import RateShaper
from channels.telegram.settings import TelegramSettings
from tests.timed import TIMED

RATE = 300


def _busiest_second(times: list[float]) -> int:
    return max(bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times))


@TIMED
async def test_the_bot_limiter_keeps_every_second_under_the_limit_and_uses_most_of_it() -> None:
    shaper = RateShaper(TelegramSettings(rate_per_second=RATE))
    loop = asyncio.get_running_loop()
    times: list[float] = []
    for _ in range(2 * RATE):
        async with shaper.bot:
            times.append(loop.time())
    assert _busiest_second(times) <= RATE
    # 600 sends: the first after no wait, the rest at the steady rate. Before, a burst of a
    # tenth and 0.9 of the rest sent 243/s (2.4 s); now ~290/s (2.06 s)
    elapsed = times[-1] - times[0]
    assert elapsed < 2 * RATE / (0.92 * RATE), elapsed
