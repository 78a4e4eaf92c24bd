"""The parser the inbox calls for Telegram rows: nothing unbounded on the event loop.

1. The update's shape is bounded first (channels/telegram/raw.py: nodes, depth, and the
   nesting of a rich_message's formatting, which aiogram validates in exponential time).
2. aiogram's models validate it in a worker process with a time budget (bot/channel/sandbox.py,
   channels/telegram/parse.py).
3. Where the models cannot be used, the tolerant reader (telegram_raw.read_raw) reads the
   update from the raw JSON: an update over the bounds or the budget is parked as dead with
   its error and the customer's text is still answered; one the models reject although
   Telegram sends it (aiogram is stricter than the Bot API) is handled, the row noting
   aiogram's error; while the workers are still starting (the first seconds after a
   start) or broken, updates are read by it too, rather than waiting.

Small plain updates (nearly every customer's message and button press) are validated in
this process instead: at most SMALL_NODES objects and arrays, nested at most SMALL_DEPTH
levels, no rich_message anywhere. pydantic's cost grows with the nesting of unions, and
within these bounds it is well under a millisecond, less than the trip to a worker and
back (pickling the update and the items both ways, two context switches); the sandbox and
its budget stay for everything else, the bombs and the unknown slow shapes.
"""

from __future__ import annotations

import logging
from typing import Any

from bot.channel.inbound import ParseError, Tolerated
from bot.channel.sandbox import OverBudget, Sandbox, SandboxBroken, WorkerDied
from channels.telegram.parse import REJECTED_KEY, SHALLOW_KEY, validated
from channels.telegram.raw import RICH_KEY, Bounds, Parsed, over_bounds, read_raw

log = logging.getLogger(__name__)
NOT_READY = "the validating workers are starting"
SMALL_NODES = 64
SMALL_DEPTH = 8


class UpdateParser:
    """`await parser(payload) -> [InboundMessage | ChannelEvent]`, registered with the inbox."""

    def __init__(self, bounds: Bounds, sandbox: Sandbox, budget: float) -> None:
        self.bounds = bounds
        self.sandbox = sandbox
        self.budget = budget

    async def __call__(self, payload: dict[str, Any]) -> Parsed | Tolerated:
        if REJECTED_KEY in payload:  # too deep to store whole: its first levels were kept
            raise ParseError(str(payload[REJECTED_KEY]), salvaged(payload.get(SHALLOW_KEY)))
        why = over_bounds(payload, self.bounds)
        if why is not None:
            raise ParseError(why, salvaged(payload))
        if small(payload):
            items, found = validated(payload)
            if found is None:
                return items
            error = f"aiogram could not validate the update: {found[:1500]}"
        elif not self.sandbox.ready:  # the first seconds after a start: no waiting for it
            self.sandbox.start()
            read = read_raw(payload)
            if read is not None:
                return read
            error = NOT_READY
        else:
            try:
                items, found = await self.sandbox.run(validated, payload, budget=self.budget)
            except OverBudget as exc:
                raise ParseError(f"validating the update {exc}", salvaged(payload)) from None
            except WorkerDied as exc:  # the update crashed the validator: never again
                raise ParseError(str(exc), salvaged(payload)) from None
            except SandboxBroken as exc:
                log.warning("telegram: validating workers broken (%s); reading raw JSON", exc)
                error = str(exc)
            else:
                if found is None:
                    return items
                error = f"aiogram could not validate the update: {found[:1500]}"
        read = read_raw(payload)
        if read is None:  # not shaped like a Telegram update either: dead with the error
            raise ParseError(error)
        return Tolerated(read, f"read from the raw JSON ({error})")


def small(update: dict[str, Any]) -> bool:
    """Few nodes, shallow, no rich_message: cheap to validate in this process."""
    stack: list[tuple[Any, int]] = [(update, 1)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if RICH_KEY in node:
                return False
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        nodes += 1
        if nodes > SMALL_NODES or depth > SMALL_DEPTH:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def salvaged(payload: Any) -> Parsed:
    """What the tolerant reader finds in an update that will be parked as dead."""
    return read_raw(payload) or []
