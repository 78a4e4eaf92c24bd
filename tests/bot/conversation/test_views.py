"""What channels ask the core: is a thread's conversation open."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

from bot.conversation.views import conversation_open
from storage.db import create_engine, session_factory


async def test_an_open_conversation_is_read_in_one_snapshot(db_url: str) -> None:
    """Regression: the web chat asked in two statements (a conversation? a waiting inbox
    row?); the inbox's commit that marks a row done and opens its conversation could fall
    between them, and a visitor's second message counted as a new conversation (its
    per-address limit refused the tenth of ten visitors, one run in six). One statement
    reads both from one snapshot."""
    engine = create_engine(db_url)
    sessions = session_factory(engine)
    statements: list[str] = []

    def seen(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        assert not await conversation_open(sessions, "webchat", "v-1", pending=True)
        reads = [q for q in statements if q.lstrip().upper().startswith("SELECT")]
        assert len(reads) == 1, reads
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)
        await engine.dispose()
