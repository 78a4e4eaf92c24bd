"""The group commit's queue (bot/delivery/group.py): what is submitted is run, once."""

from __future__ import annotations

import asyncio

from bot.delivery.group import GroupCommit


async def test_a_submit_right_after_the_drains_last_look_starts_a_new_drain() -> None:
    # A task that was ready to run when the drain woke for its last batch submits after
    # the drain found the queue empty but before the drain's task was done: with the
    # drain still counted among the running ones, nothing ran the item until the next
    # submit (bench/telegram.py: a reply 10.7 s late, the run's last message, two workers)
    release = asyncio.Event()
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        await release.wait()
        batches.append(items)
        return items

    group: GroupCommit[int, int] = GroupCommit("test", run, workers=1)
    first = asyncio.ensure_future(group.submit(1))
    await asyncio.sleep(0.01)  # the drain waits inside its batch
    release.set()  # the drain's wake-up is queued first ...
    late = asyncio.ensure_future(group.submit(2))  # ... this submit right behind it
    assert await asyncio.wait_for(first, 1) == 1
    assert await asyncio.wait_for(late, 1) == 2
    assert batches == [[1], [2]]
    await group.stop()


async def test_items_submitted_during_a_batch_go_together_in_the_next() -> None:
    gate = asyncio.Event()
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[int | BaseException]:
        batches.append(items)
        if len(batches) == 1:
            await gate.wait()
        return [ValueError(i) if i == 3 else i for i in items]

    group: GroupCommit[int, int] = GroupCommit("test", run, workers=1)
    submitted = [asyncio.ensure_future(group.submit(1))]
    await asyncio.sleep(0.01)  # the first batch is running
    submitted += [asyncio.ensure_future(group.submit(i)) for i in range(2, 5)]
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(*submitted, return_exceptions=True)
    assert batches == [[1], [2, 3, 4]]
    assert results[0] == 1 and results[1] == 2 and results[3] == 4
    assert isinstance(results[2], ValueError)  # one item's failure is its own
    assert (group.batches, group.items) == (2, 4)
    await group.stop()
