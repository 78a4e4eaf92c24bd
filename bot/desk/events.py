"""In-process publish/subscribe for live views (the agent console's queue and
conversation updates). Each worker has its own bus; the console also refreshes on a
timer, so a change made on another worker shows up within seconds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

Event = dict[str, Any]


class EventBus:
    def __init__(self, max_queue: int = 100) -> None:
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self.max_queue = max_queue

    def publish(self, event: Event) -> None:
        for q in list(self._subscribers):
            if q.full():  # a slow client misses events, not memory
                continue
            q.put_nowait(event)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[Event]]:
        q: asyncio.Queue[Event] = asyncio.Queue(self.max_queue)
        self._subscribers.add(q)
        try:
            yield q
        finally:
            self._subscribers.discard(q)

    def __len__(self) -> int:
        return len(self._subscribers)
