"""No Telegram update can freeze the bot: the rich-text bomb (a spec-valid update whose
nested formatting aiogram validates in exponential time) is answered 200 at once, parked as
dead with its error, its sender's text still answered; the server (its /healthz, every
other customer) never stops; validation over its time budget is cut off; updates aiogram
rejects although Telegram sends them are handled from the raw JSON."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from bot.channel.sandbox import Sandbox
from bot.config import Settings
from channels.telegram.adapter import TelegramChannel
from channels.telegram.inbox import UpdateParser, small
from channels.telegram.parse import parse_update
from channels.telegram.raw import Bounds
from storage.models import DeadLetter, InboxStatus
from tests.channels.telegram.helpers import channel, inbox_rows, post, serving, settled, tg_settings
from tests.loop_lag import LoopLag
from tests.standins.telegram_api import TelegramStandIn, load_fixture
from tests.timed import TIMED

JAMES = 391047582  # the text fixture's customer
EVE = 700000042
STALL = 0.1


def formatted(depth: int, leaf: str = "hi") -> Any:
    node: Any = leaf
    for level in range(depth):
        node = {"type": ("bold", "italic")[level % 2], "text": node}
    return node


def bomb(depth: int, update_id: int, kind: str = "message", message_id: int = 5) -> dict[str, Any]:
    """The 389-byte update of the issue (depth 6), from Eve, a customer in a private chat."""
    return {
        "update_id": update_id,
        kind: {
            "message_id": message_id,
            "date": 1760000000,
            "chat": {"id": EVE, "type": "private", "first_name": "Eve"},
            "from": {"id": EVE, "is_bot": False, "first_name": "Eve", "language_code": "en"},
            "text": f"hello from a rich message {update_id}",
            "rich_message": {"blocks": [{"type": "paragraph", "text": formatted(depth)}]},
        },
    }


def quiet(settings: Settings) -> Settings:
    """No campaign scheduler: on SQLite, APScheduler 3 writes its job store synchronously
    on the event loop when it starts leading, and waits up to 5 s for the write lock an
    async transaction holds meanwhile (a stall of its own, not the parser's; see the notes
    of issue 14)."""
    settings.campaigns.scheduler = False
    return settings


async def ready(ch: TelegramChannel) -> None:
    async with asyncio.timeout(120):  # the forkserver imports aiogram on a busy machine
        while not ch.sandbox.ready:
            await asyncio.sleep(0.05)


class Prober:
    """GET /healthz every 20 ms: every answer and how long it took."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.answers: list[tuple[int, float]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                started = time.perf_counter()
                status = (await client.get(self.base + "/healthz")).status_code
                self.answers.append((status, time.perf_counter() - started))
                await asyncio.sleep(0.02)

    async def __aenter__(self) -> Prober:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@TIMED
async def test_rich_text_bomb_never_stops_the_bot(db_url: str, tg: TelegramStandIn) -> None:
    async with (
        serving(quiet(tg_settings(db_url, tg, mode="webhook"))) as (base, rt),
        httpx.AsyncClient() as client,
    ):
        await ready(channel(rt))
        # a warm server: the connection, the route and the database pool are up before
        # anything is timed (a group's message: stored, never answered)
        assert (await post(client, base, load_fixture("group_message"))).status_code == 200
        async with LoopLag() as lag, Prober(base) as health:
            took = []
            for n, (depth, kind) in enumerate(
                [(6, "message"), (20, "message"), (6, "guest_message"), (20, "guest_message")]
            ):
                started = time.perf_counter()
                answer = await post(client, base, bomb(depth, 900 + n, kind, message_id=n + 1))
                took.append(time.perf_counter() - started)
                assert answer.status_code == 200
            # the next customer is answered, and so is Eve: her text read from the raw JSON
            assert (await post(client, base, load_fixture("text"))).status_code == 200
            await tg.wait_for_messages(1, JAMES)
            await tg.wait_for_messages(2, EVE)
            await settled(rt, tg)
        print(f"webhook answers {[round(t * 1000, 1) for t in took]} ms; {lag.summary()}")
        # Parsed inside the request, a bomb costs seconds (the sandbox cuts it at 3 s); read
        # from the raw JSON and stored, it costs milliseconds. Wall clock on a shared machine
        # needs head room (CI once measured 106 ms for the first one); the loop itself is held
        # to STALL below by CPU time, which other processes do not inflate.
        assert max(took) < 1.0, took
        assert health.answers and all(status == 200 for status, _ in health.answers)
        assert lag.max_stall < STALL, lag.summary()
        rows = {r.payload["update_id"]: r for r in await inbox_rows(rt)}
        bombs = [rows[900 + n] for n in range(4)]
        assert all(r.status == InboxStatus.DEAD for r in bombs)
        assert all("rich text too deeply formatted" in (r.error or "") for r in bombs)
        async with rt.sessions() as s:
            letters = (await s.execute(select(DeadLetter))).scalars().all()
        assert sorted(d.reference for d in letters) == sorted(f"inbox:{r.id}" for r in bombs)
        # two answers to Eve, one per message: guest messages are not a customer channel
        assert len(tg.sent_messages(EVE)) == 2


@TIMED
async def test_validation_over_its_budget_is_cut_off(sqlite_url: str, tg: TelegramStandIn) -> None:
    """With the shape bounds lifted, the bomb reaches aiogram: the worker process validating
    it is killed at the budget; the other customer is answered meanwhile."""
    settings = tg_settings(
        sqlite_url, tg, mode="webhook", max_rich_text_cost=10**9, parse_budget_seconds=3
    )
    async with serving(quiet(settings)) as (base, rt), httpx.AsyncClient() as client:
        ch = channel(rt)
        await ready(ch)
        # a warm server, as in the test above: the first request's one-time costs (statement
        # compilation, the first transaction) are not the parser's
        assert (await post(client, base, load_fixture("group_message"))).status_code == 200
        async with LoopLag() as lag:
            assert (await post(client, base, bomb(6, 950))).status_code == 200
            assert (await post(client, base, load_fixture("text"))).status_code == 200
            await tg.wait_for_messages(1, JAMES)
            # answered while the bomb was still being validated in the other worker
            (row,) = [r for r in await inbox_rows(rt) if r.payload["update_id"] == 950]
            assert row.status == InboxStatus.PROCESSING, (row.status, row.error)
            await tg.wait_for_messages(1, EVE)
            await settled(rt, tg)
        print(lag.summary())
        assert lag.max_stall < STALL, lag.summary()
        (row,) = [r for r in await inbox_rows(rt) if r.payload["update_id"] == 950]
        assert row.status == InboxStatus.DEAD and "took longer than 3s" in (row.error or "")
        assert ch.sandbox.killed == 1
        # the pool goes on with a fresh worker
        later = load_fixture("text")
        later["update_id"] += 1
        later["message"]["message_id"] += 1
        assert (await post(client, base, later)).status_code == 200
        await tg.wait_for_messages(2, JAMES)


def administrator(update_id: int, kind: str) -> dict[str, Any]:
    """Spec-valid (Bot API 10.1): an administrator without can_send_welcome_messages, which
    aiogram 3.31 requires."""
    admin = {
        "status": "administrator",
        "user": {"id": 555, "is_bot": kind == "my_chat_member", "first_name": "Ada"},
        **dict.fromkeys(
            "can_be_edited is_anonymous can_manage_video_chats can_restrict_members "
            "can_promote_members can_post_stories can_edit_stories can_delete_stories".split(),
            False,
        ),
        **dict.fromkeys(
            "can_manage_chat can_delete_messages can_change_info can_invite_users".split(), True
        ),
    }
    return {
        "update_id": update_id,
        kind: {
            "chat": {"id": -1001234567890, "type": "supergroup", "title": "Customers"},
            "from": {"id": JAMES, "is_bot": False, "first_name": "James"},
            "date": 1760000000,
            "old_chat_member": {"status": "member", "user": admin["user"]},
            "new_chat_member": admin,
        },
    }


async def test_administrator_member_updates_are_handled_not_dead(
    db_url: str, tg: TelegramStandIn
) -> None:
    for kind in ("chat_member", "my_chat_member"):
        with pytest.raises(Exception, match="can_send_welcome_messages"):
            parse_update(administrator(1, kind))  # the library's bug, still there
    async with (
        serving(tg_settings(db_url, tg, mode="webhook")) as (base, rt),
        httpx.AsyncClient() as client,
    ):
        await ready(channel(rt))
        for n, kind in enumerate(("chat_member", "my_chat_member")):
            assert (await post(client, base, administrator(960 + n, kind))).status_code == 200
        await settled(rt, tg)
        rows = await inbox_rows(rt)
        # a group's membership is no customer's message: ignored, as a valid one would be,
        # with aiogram's complaint kept for whoever looks
        assert [r.status for r in rows] == [InboxStatus.IGNORED] * 2
        assert all("can_send_welcome_messages" in (r.error or "") for r in rows)


async def test_first_updates_after_a_start_do_not_wait_for_the_workers() -> None:
    sandbox = Sandbox(workers=1)  # never started: the forkserver is still importing
    parser = UpdateParser(Bounds(), sandbox, budget=2.0)
    try:
        for name in ("text", "callback_query", "my_chat_member_blocked", "group_message"):
            update = load_fixture(name)
            assert await parser(update) == parse_update(update), name
    finally:
        await sandbox.close()


async def test_small_plain_updates_are_validated_in_process_the_rest_in_a_worker() -> None:
    """Customers' everyday updates skip the trip to a worker; a bomb, a big or a deep update
    never runs aiogram in this process."""
    sandbox = Sandbox(workers=1)  # never started: an update sent to it would be read raw
    parser = UpdateParser(Bounds(), sandbox, budget=2.0)
    try:
        for name in ("text", "callback_query", "my_chat_member_blocked", "group_message"):
            update = load_fixture(name)
            assert small(update), name
            assert await parser(update) == parse_update(update), name  # not a Tolerated
        assert not small(bomb(2, 1))  # a rich_message: always the worker
        wide = load_fixture("text")
        wide["message"]["entities"] = [{"type": "bold", "offset": 0, "length": 1}] * 64
        assert not small(wide)
        deep: Any = {"chat": {"id": 1}}
        for _ in range(8):
            deep = {"reply_to_message": deep}
        assert not small({"update_id": 1, "message": deep})
    finally:
        await sandbox.close()
