"""Telegram webhook benchmark: cicbot against the bots a user would write instead, 127.0.0.1 only.

    .venv/bin/python bench/telegram.py                # 200 customers x 10 turns, 3 repetitions
    .venv/bin/python bench/telegram.py --quick        # 50 x 5, one repetition
    .venv/bin/python bench/telegram.py --open-loop 100 --duration 10
    .venv/bin/python bench/telegram.py --bots cicbot-sqlite,fsm
    .venv/bin/python bench/telegram.py --bots cicbot-pg,cicbot-pg2   # one worker against two

In one run, with the same load, five bots answer webhooks (each its own process):

* `echo`: a bare aiogram 3 webhook echo bot, no database;
* `fsm`: an aiogram 3 FSM complaint bot of the kind a user writes instead of cicbot: category,
  description, reference, severity, resolution, confirmation, each answered with an inline
  keyboard, every message logged to SQLite (WAL) and the case stored at the end;
* `cicbot-sqlite` and `cicbot-pg`: `cicbot serve` on a fresh SQLite file and on a fresh
  PostgreSQL database (--pg-admin names the server; skipped when it is unreachable);
* `cicbot-pg2`: two `cicbot serve` workers on one fresh PostgreSQL database,
  each on its own port, configured alike (webhook mode, the same secret, no webhook_url, so
  neither calls setWebhook); the load goes round-robin over the two, message by message, as
  a load balancer in front of them would send it.

Closed loop (default): N customers each go through M turns of a complaint conversation (text
answers and button presses as callback queries), each waiting for the answer to one turn
before sending the next. Open loop (--open-loop RATE): messages arrive at a fixed rate,
whether or not earlier ones were answered. The Bot API is the test stand-in
(tests/standins/telegram_api.py) in this process, which notes when each reply arrives; cicbot's
rate shaping is lifted (the stand-in never answers 429), so the pipeline itself is measured.

Per bot: msg/s (customer messages / wall time), p50 and p99 of the time from the webhook
POST to the turn's last reply (closed loop: also the first turns', which all start at once,
and the other turns' p99, and each turn's p50/p99, per run), messages without a reply within
--reply-timeout, SQL statements per message (cicbot: SQLAlchemy's before_cursor_execute,
read from /metrics; the FSM bot counts its own executes and commits), the share of one core
the bot's process tree used (cicbot-pg2: both workers' summed, so it can exceed 1), replies
sent twice (a chat's replies beyond what its turns call for, counted at the stand-in after
the run settles; the turns they fell in are printed; chats whose replies, digits aside,
differ from most chats' are reported, since every customer says the same: a turn handled out
of order or twice shows there), and cicbot's ratios against both peers. Each figure is the
median over --repeats runs: the machine is small and shared. Per run also the CPU the other
processes spent per message on the same two cores: this benchmark's own (the load and the
Bot API stand-in) and PostgreSQL's server processes (cicbot-pg; about 0 for the peers, whose
SQLite lives in their process).

After the runs, where cicbot's messages waited (print_stages): webhook POST -> its 200 (the
accept committed), accepted -> turn began, reply written -> at the stand-in, and -> its
sent mark; p50 and p99 over all runs of the bot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import os
import re
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

SELF = Path(__file__).resolve()
ROOT = SELF.parent.parent
sys.path.insert(0, str(ROOT))

from tests.standins.telegram_api import DEFAULT_TOKEN, TelegramStandIn  # noqa: E402

SECRET = "bench-webhook-secret-0123456789"
HEADER = "X-Telegram-Bot-Api-Secret-Token"
PATH = "/webhooks/telegram"
PG_ADMIN = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
BOTS = ("echo", "fsm", "cicbot-sqlite", "cicbot-pg", "cicbot-pg2")
UPDATE_IDS = itertools.count(900_000_000)
CALLBACK_IDS = itertools.count(5_000_000_000)
# (kind, value, replies cicbot sends for it); echo and fsm always send one
SCRIPT: list[tuple[str, str, int]] = [
    ("say", "complaint", 2),  # intro + the category question
    ("press", "f:complaint:category:delivery", 1),
    ("say", "The parcel arrived soaking wet and the box was torn.", 1),
    ("press", "f:complaint:reference:-", 1),
    ("press", "f:complaint:severity:medium", 1),
    ("press", "f:complaint:resolution:refund", 1),
    ("press", "f:complaint:confirm:yes", 1),  # the case reference
]


def turn(i: int) -> tuple[str, str, int]:
    return SCRIPT[i % len(SCRIPT)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---- the peers (each run as a subprocess: --serve echo|fsm) --------------------------------


def serve_peer(kind: str, port: int, api_base: str, db: str) -> None:
    """The bare echo bot, or the FSM + SQLite complaint bot."""
    import sqlite3

    import aiosqlite
    from aiogram import Bot, Dispatcher, F
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer
    from aiogram.fsm.context import FSMContext
    from aiogram.fsm.state import State, StatesGroup
    from aiogram.fsm.storage.memory import MemoryStorage
    from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message
    from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
    from aiohttp import web

    bot = Bot(DEFAULT_TOKEN, session=AiohttpSession(api=TelegramAPIServer.from_base(api_base)))
    dp = Dispatcher(storage=MemoryStorage())
    statements = [0]
    conn: list[aiosqlite.Connection] = []

    if kind == "echo":

        @dp.message()
        async def echo(message: Message) -> None:
            await message.answer(f"echo: {message.text or ''}")

        @dp.callback_query()
        async def pressed(query: CallbackQuery) -> None:
            await query.answer()
            if query.message is not None:
                await bot.send_message(query.message.chat.id, f"pressed: {query.data}")

    else:

        class Complaint(StatesGroup):
            category = State()
            description = State()
            reference = State()
            severity = State()
            resolution = State()
            confirm = State()

        def keyboard(step: str, *options: str) -> InlineKeyboardMarkup:
            rows = [
                [InlineKeyboardButton(text=o.title(), callback_data=f"f:complaint:{step}:{o}")]
                for o in options
            ]
            return InlineKeyboardMarkup(inline_keyboard=rows)

        async def log(chat: int, kind: str, text: str) -> None:
            db_ = conn[0]
            await db_.execute(
                "INSERT INTO messages (chat, kind, text, at) VALUES (?, ?, ?, ?)",
                (chat, kind, text, time.time()),
            )
            await db_.commit()
            statements[0] += 2

        @dp.message(F.text.lower() == "complaint")
        async def start(message: Message, state: FSMContext) -> None:
            await log(message.chat.id, "message", message.text or "")
            await state.set_state(Complaint.category)
            await message.answer(
                "Sorry to hear that. What is it about?",
                reply_markup=keyboard("category", "delivery", "product", "billing"),
            )

        @dp.message(Complaint.description)
        async def described(message: Message, state: FSMContext) -> None:
            await log(message.chat.id, "message", message.text or "")
            await state.update_data(description=message.text)
            await state.set_state(Complaint.reference)
            await message.answer(
                "Your order or invoice number?", reply_markup=keyboard("reference", "-")
            )

        @dp.message()
        async def other(message: Message) -> None:
            await log(message.chat.id, "message", message.text or "")
            await message.answer("Write 'complaint' to file a complaint.")

        steps: dict[str, tuple[State, str, tuple[str, ...]]] = {
            "category": (Complaint.description, "Please describe what happened.", ()),
            "reference": (Complaint.severity, "How bad is it?", ("low", "medium", "high")),
            "severity": (Complaint.resolution, "What would you like?", ("refund", "replace")),
            "resolution": (Complaint.confirm, "File the complaint?", ("yes", "no")),
        }

        @dp.callback_query(F.data.startswith("f:complaint:"))
        async def pressed_step(query: CallbackQuery, state: FSMContext) -> None:
            await query.answer()
            _, _, step, value = (query.data or "").split(":", 3)
            chat = query.message.chat.id if query.message is not None else 0
            await log(chat, "button", query.data or "")
            if step == "confirm":
                data = await state.get_data()
                cursor = await conn[0].execute(
                    "INSERT INTO cases (chat, description, created) VALUES (?, ?, ?)",
                    (chat, str(data.get("description", "")), time.time()),
                )
                await conn[0].commit()
                statements[0] += 2
                await state.clear()
                await bot.send_message(chat, f"Thank you. Your case is C-{cursor.lastrowid:06d}.")
                return
            if step not in steps:
                return
            following, text, options = steps[step]
            await state.update_data({step: value})
            await state.set_state(following)
            markup = keyboard(str(following.state).split(":")[-1], *options) if options else None
            await bot.send_message(chat, text, reply_markup=markup)

    app = web.Application()
    SimpleRequestHandler(dispatcher=dp, bot=bot, secret_token=SECRET).register(app, path=PATH)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({"statements": statements[0]})

    async def opened(_: web.Application) -> AsyncIterator[None]:
        if kind == "fsm":
            with sqlite3.connect(db) as setup:
                setup.execute("PRAGMA journal_mode=WAL")
                setup.execute(
                    "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, chat INTEGER,"
                    " kind TEXT, text TEXT, at REAL)"
                )
                setup.execute(
                    "CREATE TABLE IF NOT EXISTS cases (id INTEGER PRIMARY KEY, chat INTEGER,"
                    " description TEXT, created REAL)"
                )
            conn.append(await aiosqlite.connect(db))
            await conn[0].execute("PRAGMA synchronous=NORMAL")
        yield
        if conn:
            await conn[0].close()

    app.cleanup_ctx.append(opened)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/stats", stats)
    setup_application(app, dp, bot=bot)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# ---- load ---------------------------------------------------------------------------------


@dataclass
class Replies:
    """sendMessage arrivals per chat, recorded by a hook in the stand-in."""

    times: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    # the turn the chat was at (its latest POST) when each reply arrived, in step with `times`
    turns: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    at: dict[int, int] = field(default_factory=dict)  # the chat's latest turn sent
    texts: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))  # digits: #
    last: dict[int, dict[str, Any]] = field(default_factory=dict)
    changed: dict[int, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    # wall-clock arrival of each reply by "chat:message id" (cicbot's outbox keeps the id it
    # was sent as: print_stages reads "written -> at the platform" without the sent mark)
    arrived: dict[str, float] = field(default_factory=dict)
    # per bot (its first base URL): webhook POST -> its 200 (the accept committed), seconds
    accepts: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    tg: TelegramStandIn | None = None  # the call a webhook's response names is made there

    def install(self, tg: TelegramStandIn) -> None:
        self.tg = tg
        name, handler = tg._methods["sendmessage"]

        async def hooked(token: str, params: dict[str, Any]) -> Any:
            result = await handler(token, params)
            chat = params["chat_id"]
            self.times[chat].append(time.monotonic())
            if isinstance(result, dict) and "message_id" in result:
                self.arrived[f"{chat}:{result['message_id']}"] = time.time()
            self.turns[chat].append(self.at.get(chat, -1))
            self.texts[chat].append(re.sub(r"\d", "#", str(params.get("text", ""))))
            self.last[chat] = result
            self.changed[chat].set()
            return result

        tg._methods["sendmessage"] = (name, hooked)

    async def wait(self, chat: int, count: int, timeout: float) -> float | None:
        """When the chat's `count`-th reply arrived; None if not within `timeout`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while len(self.times[chat]) < count:
                    event = self.changed[chat]
                    event.clear()
                    await event.wait()
        times = self.times[chat]
        return times[count - 1] if len(times) >= count else None

    async def settle(self, quiet: float = 0.5, limit: float = 5.0) -> None:
        """Until no reply arrived for `quiet` seconds (at most `limit`): late doubles count."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            seen = sum(len(t) for t in self.times.values())
            await asyncio.sleep(quiet)
            if sum(len(t) for t in self.times.values()) == seen:
                return

    def doubled(
        self, chats: list[int], expected: Callable[[int], int], turns: int
    ) -> tuple[int, list[tuple[int, int, int]]]:
        """Replies beyond what the chats' turns call for (each chat's surplus, summed), and
        the (chat, turn, surplus) where a turn got more replies than it calls for: in a
        closed loop a reply is counted with the turn its chat was at when it arrived, so a
        late double lands in the next turn."""
        total, where = 0, []
        for chat in chats:
            total += max(0, len(self.times[chat]) - expected(turns - 1))
            got: dict[int, int] = defaultdict(int)
            for t in self.turns[chat]:
                got[t] += 1
            for t, n in sorted(got.items()):
                need = expected(t) - (expected(t - 1) if t > 0 else 0)
                if n > need:
                    where.append((chat, t, n - need))
        return total, where

    def off_script(self, chats: list[int]) -> int:
        """Chats whose replies (digits aside) differ from the most common chats' replies:
        every customer says the same, so a turn handled out of order, twice or by two
        workers at once shows here."""
        seen = Counter(tuple(self.texts[chat]) for chat in chats)
        return len(chats) - seen.most_common(1)[0][1] if seen else 0


@dataclass
class Run:
    messages: int
    seconds: float
    latencies: list[float]
    missing: int
    statements: float | None  # per message
    cpu: float  # share of one core
    doubled: int = 0  # replies beyond what the turns call for
    # which turn each latency is of: in a closed loop every customer's first message
    # arrives at once, so the first turns wait for the whole wave (printed apart)
    turns: list[int] = field(default_factory=list)
    # CPU ms per message of this benchmark's own process (the load and the Bot API stand-in)
    # and of PostgreSQL's server processes: they share the machine's two cores with the bot
    harness_ms: float = float("nan")
    server_ms: float = float("nan")

    @property
    def throughput(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_ms(self) -> float:
        """CPU milliseconds per message (the process tree's): less noisy than msg/s on a
        shared machine, since it does not count the time spent waiting for a core."""
        return self.cpu * self.seconds * 1000 / self.messages

    def by_turn(self) -> str:
        """Each turn's p50/p99 in ms: where in the conversation the time goes."""
        per: dict[int, list[float]] = {}
        for x, i in zip(self.latencies, self.turns, strict=True):
            per.setdefault(i, []).append(x)
        return "  ".join(
            f"{i}: {_quantile(v, 0.5) * 1000:.0f}/{_quantile(v, 0.99) * 1000:.0f}"
            for i, v in sorted(per.items())
        )

    def pct(self, q: float, first: bool | None = None) -> float:
        """The q-quantile of the latencies; of the first turns only (True) or of the
        others (False)."""
        data = self.latencies
        if first is not None:
            data = [x for x, i in zip(data, self.turns, strict=True) if (i == 0) == first]
        return _quantile(data, q)


def _quantile(values: list[float], q: float) -> float:
    data = sorted(values) or [float("nan")]
    return data[min(len(data) - 1, int(q * len(data)))]


class Load:
    def __init__(
        self, bases: list[str], replies: Replies, *, peer: bool, reply_timeout: float
    ) -> None:
        self.bases, self.replies, self.peer = bases, replies, peer
        self.next_base = itertools.cycle(bases)  # round-robin, message by message
        self.reply_timeout = reply_timeout
        self.latencies: list[float] = []
        self.turns: list[int] = []  # the turn of each latency
        self.missing = 0

    def _user(self, chat: int) -> dict[str, Any]:
        return {"id": chat, "is_bot": False, "first_name": f"C{chat}", "language_code": "en"}

    def update(self, chat: int, kind: str, value: str, message_id: int) -> dict[str, Any]:
        update_id = next(UPDATE_IDS)  # unique over the whole bench: the inbox dedupes on it
        if kind == "say":
            message = {
                "message_id": message_id,
                "from": self._user(chat),
                "chat": {"id": chat, "type": "private", "first_name": "C"},
                "date": int(time.time()),
                "text": value,
            }
            return {"update_id": update_id, "message": message}
        pressed = self.replies.last.get(chat) or {  # the bot's latest message, its keyboard
            "message_id": 1,
            "chat": {"id": chat, "type": "private"},
            "date": int(time.time()),
            "text": "?",
        }
        return {
            "update_id": update_id,
            "callback_query": {
                "id": str(next(CALLBACK_IDS)),
                "from": self._user(chat),
                "message": pressed,
                "chat_instance": str(-chat),
                "data": value,
            },
        }

    async def one(self, http: aiohttp.ClientSession, chat: int, i: int, expected: int) -> None:
        """Send turn `i` of `chat` and wait for its last reply (the `expected`-th in all)."""
        kind, value, _ = turn(i)
        started = time.monotonic()
        update = self.update(chat, kind, value, message_id=1000 + i)
        base = next(self.next_base)
        self.replies.at[chat] = i
        for attempt in range(3):
            # a keep-alive connection the server closed (idle while the customer waited for
            # a reply) fails on reuse: sent again, as Telegram would (the update id dedupes)
            try:
                async with http.post(base + PATH, json=update, headers={HEADER: SECRET}) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"webhook answered {resp.status}")
                    self.replies.accepts[self.bases[0]].append(time.monotonic() - started)
                    if self.replies.tg is not None:  # as Telegram does (answerCallbackQuery)
                        await self.replies.tg.webhook_replied(resp.status, await resp.read())
                break
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                if attempt == 2:
                    raise
        arrived = await self.replies.wait(chat, expected, self.reply_timeout)
        if arrived is None:
            self.missing += 1
        else:
            self.latencies.append(arrived - started)
            self.turns.append(i)

    def expected(self, i: int) -> int:
        """Replies in all after turn i."""
        return i + 1 if self.peer else sum(turn(k)[2] for k in range(i + 1))

    async def closed(self, http: aiohttp.ClientSession, chats: list[int], turns: int) -> None:
        async def customer(chat: int) -> None:
            for i in range(turns):
                await self.one(http, chat, i, self.expected(i))

        await asyncio.gather(*(customer(c) for c in chats))

    async def open(
        self, http: aiohttp.ClientSession, chats: list[int], turns: int, rate: float
    ) -> None:
        """Message k (customer k mod N, its turn k div N) is sent at k / rate, regardless."""
        start = time.monotonic()
        tasks = []
        for k in range(len(chats) * turns):
            chat, i = chats[k % len(chats)], k // len(chats)
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.one(http, chat, i, self.expected(i))))
        await asyncio.gather(*tasks)


# ---- processes ----------------------------------------------------------------------------


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _stat_fields(pid: str) -> list[str]:
    """/proc/PID/stat after the command's name (which may hold spaces): state, ppid, ..."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and its live descendants (cicbot's validating workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = _stat_fields(entry)
            parents[int(entry)] = int(fields[1])
            used[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, total = {pid}, 0.0
    for _ in range(4):  # descendants a few levels down
        tree |= {p for p, parent in parents.items() if parent in tree}
    for p in tree:
        total += used.get(p, 0.0)
    return total


def own_cpu() -> float:
    """CPU seconds of this process (the load generator and the stand-in), children apart."""
    t = os.times()
    return t.user + t.system


def server_cpu() -> float:
    """CPU seconds of PostgreSQL's server processes alive now (the bots' connections stay
    open through a run; the peers use SQLite in their own process: ~0 for them)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry}/comm").read_text().strip() == "postgres":
                    fields = _stat_fields(entry)
                    total += (int(fields[11]) + int(fields[12])) / tick
    return total


@dataclass
class Bot:
    name: str
    bases: list[str]  # one per worker process
    pids: list[int]
    peer: bool
    db_url: str | None = None  # cicbot's database (stage timings)

    def cpu(self) -> float:
        """CPU seconds of all the bot's worker processes (and their children), summed."""
        return sum(cpu_seconds(pid) for pid in self.pids)

    async def statements(self, http: aiohttp.ClientSession) -> float | None:
        """The statement counter, summed over the workers."""
        total = 0.0
        with contextlib.suppress(aiohttp.ClientError, ValueError, KeyError):
            for base in self.bases:
                if self.peer:
                    async with http.get(base + "/stats") as r:
                        total += float((await r.json())["statements"])
                    continue
                async with http.get(base + "/metrics") as r:
                    m = re.search(r"^cicbot_db_statements_total (\S+)$", await r.text(), re.M)
                    if m is None:
                        return None
                    total += float(m.group(1))
            return total
        return None


async def wait_healthy(base: str, proc: asyncio.subprocess.Process, log: Path) -> None:
    async with aiohttp.ClientSession() as http, asyncio.timeout(300):  # a loaded machine
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"server exited:\n{tail(log)}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(base + "/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def process(
    name: str, argv: list[str], env: dict[str, str], log: Path, port: int
) -> AsyncIterator[Bot]:
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_healthy(base, proc, log)
        yield Bot(name, [base], [proc.pid], peer=not name.startswith("cicbot"))
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(20):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


def cicbot_env(api_base: str, db_url: str, extra: list[str]) -> dict[str, str]:
    env = {
        **os.environ,
        "CICBOT_CONFIG": str(ROOT / "config.yaml"),
        "CICBOT_DATABASE__URL": db_url,
        "CICBOT_TELEGRAM__TOKEN": DEFAULT_TOKEN,
        "CICBOT_TELEGRAM__WEBHOOK_SECRET": SECRET,
        "CICBOT_TELEGRAM__MODE": "webhook",
        "CICBOT_TELEGRAM__API_BASE": api_base,
        "CICBOT_TELEGRAM__RATE_PER_SECOND": "100000",
        "CICBOT_TELEGRAM__CHAT_RATE_PER_SECOND": "100000",
        "CICBOT_TELEGRAM__CHAT_BURST": "30",
        "CICBOT_LIMITS__MESSAGES_PER_SECOND": "1000",  # kept on, but the bench is no flood
        "CICBOT_LIMITS__BURST": "1000",
    }
    for item in extra:
        key, _, value = item.partition("=")
        env[key] = value
    return env


@contextlib.asynccontextmanager
async def bots(
    names: list[str], api_base: str, tmp: Path, args: argparse.Namespace
) -> AsyncIterator[list[Bot]]:
    async with contextlib.AsyncExitStack() as stack:
        started = []
        for name in names:
            port = free_port()
            log = tmp / f"{name}.log"
            if name in ("echo", "fsm"):
                argv = [sys.executable, str(SELF), "--serve", name, "--port", str(port)]
                argv += ["--api-base", api_base, "--peer-db", str(tmp / "fsm.db")]
                env = dict(os.environ)
                started.append(await stack.enter_async_context(process(name, argv, env, log, port)))
                continue
            if name.startswith("cicbot-pg"):
                from storage import scratch

                try:
                    url = await scratch.create(args.pg_admin, "cicbot_bench")
                except Exception as exc:
                    print(f"  {name} skipped: PostgreSQL unreachable ({exc})")
                    continue
                stack.push_async_callback(scratch.drop, args.pg_admin, url)
            else:
                url = f"sqlite+aiosqlite:///{tmp / 'cicbot.db'}"
            # cicbot-pg2: a second worker, configured exactly as the first (same database,
            # token and webhook secret), on its own port; started after the first is healthy,
            # though auto_migrate's advisory lock would make a simultaneous start safe too
            workers = []
            for w in range(2 if name == "cicbot-pg2" else 1):
                port = port if w == 0 else free_port()
                log = tmp / (f"{name}.log" if w == 0 else f"{name}-w{w + 1}.log")
                argv = [str(Path(sys.executable).parent / "cicbot"), "serve", "--port", str(port)]
                argv += ["--log-level", "warning"]
                env = cicbot_env(api_base, url, args.env)
                workers.append(await stack.enter_async_context(process(name, argv, env, log, port)))
            bases = [b for w in workers for b in w.bases]
            pids = [p for w in workers for p in w.pids]
            started.append(Bot(name, bases, pids, peer=False, db_url=url))
        yield started


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection in this process while a run is timed: the load generator
    and the Bot API stand-in live here, and a full collection of their heap (which grows with
    every run: the stand-in keeps each call) paused both for up to 220 ms at a time, every
    few seconds, adding the pause to whichever bot was measured then (later runs more)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def measure(
    bot: Bot, replies: Replies, chats: list[int], args: argparse.Namespace, open_rate: float
) -> Run:
    load = Load(bot.bases, replies, peer=bot.peer, reply_timeout=args.reply_timeout)
    # a connection per request: a kept-alive one sits idle while its customer waits for a
    # reply, and the server's keep-alive timeout closing it races its reuse (resets)
    connector = aiohttp.TCPConnector(limit=max(len(chats), 100), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        s0 = await bot.statements(http)
        s1 = await bot.statements(http)  # the difference: what one scrape itself costs
        cpu0, started = bot.cpu(), time.monotonic()
        own0, server0 = own_cpu(), server_cpu()
        with paused_gc():
            async with asyncio.timeout(args.run_timeout):
                if open_rate:
                    await load.open(http, chats, args.turns, open_rate)
                else:
                    await load.closed(http, chats, args.turns)
        seconds = time.monotonic() - started
        cpu = (bot.cpu() - cpu0) / seconds
        own, server = own_cpu() - own0, server_cpu() - server0
        s2 = await bot.statements(http)
        await replies.settle()  # a reply sent twice may come late
    messages = len(chats) * args.turns
    per_message = None
    if s0 is not None and s1 is not None and s2 is not None:
        per_message = (s2 - s1 - (s1 - s0)) / messages
    doubled, where = replies.doubled(chats, load.expected, args.turns)
    off = replies.off_script(chats)
    if off:
        print(f"  {bot.name}: {off} of {len(chats)} chats got replies unlike the others'")
    for chat, i, surplus in where[:5]:
        print(f"  {bot.name}: chat {chat} turn {i + 1}: {surplus} repl(ies) more than it calls for")
    return Run(
        messages,
        seconds,
        load.latencies,
        load.missing,
        per_message,
        cpu,
        doubled,
        load.turns,
        harness_ms=own * 1000 / messages,
        server_ms=server * 1000 / messages,
    )


@contextlib.asynccontextmanager
async def profiled(bot: Bot, folder: str | None, rep: int) -> AsyncIterator[None]:
    """py-spy (PyPI: py-spy) samples cicbot's process while the run lasts: collapsed stacks
    in `folder`, one file per bot and repetition (flamegraph.pl or speedscope read them)."""
    if folder is None or bot.peer:
        yield
        return
    spies = []
    for w, pid in enumerate(bot.pids):
        suffix = f"-w{w + 1}" if len(bot.pids) > 1 else ""
        out = Path(folder) / f"{bot.name}-{rep + 1}{suffix}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        spy = str(Path(sys.executable).parent / "py-spy")
        argv = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200"]
        argv += os.environ.get("BENCH_SPY_ARGS", "").split()
        spies.append(
            await asyncio.create_subprocess_exec(
                *argv, "--nonblocking", "--output", str(out), stdout=asyncio.subprocess.DEVNULL
            )
        )
    try:
        yield
    finally:
        for proc in spies:
            proc.send_signal(signal.SIGINT)
            await proc.wait()


async def print_stages(bot: Bot, replies: Replies) -> None:
    """Where a message waited (all runs of the bot together): webhook POST -> its 200 (the
    accept committed; timed by the load), then from cicbot's own rows: accepted -> its
    turn's transaction began (inbox created_at -> processed_at), a reply's row written ->
    its arrival at the stand-in (outbox created_at -> the stand-in's clock, matched by the
    message id the outbox keeps; both wall clocks of this machine) and -> its sent mark
    (sent_at: after the arrival, when the mark's shared transaction runs)."""
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import create_async_engine

    from storage.models import InboxUpdate, OutboxMessage

    if bot.db_url is None:
        return
    stages: dict[str, list[float]] = {"webhook POST -> 200": replies.accepts[bot.bases[0]]}
    engine = create_async_engine(bot.db_url)
    try:
        async with engine.connect() as conn:
            inbox = await conn.execute(
                select(InboxUpdate.created_at, InboxUpdate.processed_at).where(
                    InboxUpdate.processed_at.is_not(None)
                )
            )
            stages["inbox accepted -> turn began"] = [(b - a).total_seconds() for a, b in inbox]
            outbox = (
                await conn.execute(
                    select(
                        OutboxMessage.created_at,
                        OutboxMessage.sent_at,
                        OutboxMessage.platform_message_id,
                    ).where(OutboxMessage.sent_at.is_not(None))
                )
            ).all()
            stages["reply written -> at the platform"] = [
                replies.arrived[pid] - a.timestamp()
                for a, _, pid in outbox
                if pid in replies.arrived
            ]
            stages["reply written -> sent mark"] = [(b - a).total_seconds() for a, b, _ in outbox]
    finally:
        await engine.dispose()
    for stage, values in stages.items():
        waits = sorted(values)
        if waits:
            p50, p99 = waits[len(waits) // 2], waits[int(len(waits) * 0.99)]
            print(f"  {bot.name}: {stage}: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")


WORK = (  # (label, metric, the label value counted) of the per-worker split
    ("webhooks accepted", "cicbot_webhook_updates_total", 'result="accepted"'),
    ("inbox rows done", "cicbot_inbox_processed_total", 'outcome="done"'),
    ("replies sent", "cicbot_outbound_sends_total", 'result="sent"'),
)


async def print_groups(bot: Bot) -> None:
    """How many items cicbot's group commits put in one transaction, on average."""
    figures: dict[tuple[str, str], float] = defaultdict(float)
    async with aiohttp.ClientSession() as http:
        for w, base in enumerate(bot.bases):  # summed over the workers
            async with http.get(base + "/metrics") as r:
                text = await r.text()
            pattern = r'^cicbot_group_commit_(\w+)\{group="([\w-]+)"\} (\S+)$'
            for what, group, v in re.findall(pattern, text, re.M):
                figures[what, group] += float(v)
            if len(bot.bases) > 1:  # how the work split: each worker's own counters
                share = []
                for label, metric, result in WORK:
                    m = re.search(rf"^{metric}\{{[^}}]*{result}[^}}]*\}} (\S+)$", text, re.M)
                    share.append(f"{label} {float(m.group(1)) if m else 0:.0f}")
                print(f"  {bot.name}: worker {w + 1}: {', '.join(share)}")
    for group in sorted({g for _, g in figures}):
        n, items = figures.get(("batches", group), 0), figures.get(("items", group), 0)
        print(f"  {bot.name}: group commit {group}: {items / max(n, 1):.1f} per transaction")


async def main(args: argparse.Namespace) -> None:
    customers = max(1, min(args.customers, 1000))
    names = [n for n in args.bots.split(",") if n]
    unknown = set(names) - set(BOTS)
    if unknown:
        raise SystemExit(f"unknown bots: {', '.join(sorted(unknown))}")
    tmp = Path(tempfile.mkdtemp(prefix="cicbot-bench-"))
    results: dict[str, list[Run]] = defaultdict(list)
    chat = 10_000_000
    async with TelegramStandIn() as tg:
        replies = Replies()
        replies.install(tg)
        async with bots(names, tg.base_url, tmp, args) as running:
            for bot in running:  # a short warm-up (first requests, caches, file growth)
                warm = [chat + i for i in range(min(5, customers))]
                chat += 10_000
                await measure(bot, replies, warm, args, 0.0)
            for rep in range(args.repeats):
                for bot in running:
                    chats = [chat + i for i in range(customers)]
                    chat += 10_000
                    async with profiled(bot, args.profile, rep):
                        run = await measure(bot, replies, chats, args, args.open_loop)
                    results[bot.name].append(run)
                    stmts = f"{run.statements:5.1f}" if run.statements is not None else "   - "
                    print(
                        f"  run {rep + 1} {bot.name:14}{run.throughput:8.1f} msg/s  "
                        f"p50 {run.pct(0.5) * 1000:7.1f} ms  p99 {run.pct(0.99) * 1000:7.1f} ms"
                        f"  no reply {run.missing:4}  doubled {run.doubled:3}"
                        f"  stmts/msg {stmts}  cpu {run.cpu:4.2f}"
                        f"  cpu ms/msg {run.cpu_ms:5.2f}  load {os.getloadavg()[0]:.1f}",
                        f"\n        CPU ms per message elsewhere: this benchmark (load and"
                        f" stand-in) {run.harness_ms:.2f}, PostgreSQL's server {run.server_ms:.2f}",
                        flush=True,
                    )
                    if args.turns > 1 and not args.open_loop:
                        print(
                            f"        first turns p50 {run.pct(0.5, True) * 1000:7.1f} ms  "
                            f"p99 {run.pct(0.99, True) * 1000:7.1f} ms; the other turns "
                            f"p99 {run.pct(0.99, False) * 1000:7.1f} ms",
                            f"\n        per turn, p50/p99 ms: {run.by_turn()}",
                            flush=True,
                        )
            for bot in running:
                if not bot.peer:
                    await print_groups(bot)
                    await print_stages(bot, replies)
    print(f"  logs in {tmp}")
    report(results, customers, args)


def cell(value: float | None, fine: bool) -> str:
    return "-" if value is None else f"{value:.2f}" if fine else f"{value:.1f}"


def report(results: dict[str, list[Run]], customers: int, args: argparse.Namespace) -> None:
    def med(name: str, fn: Callable[[Run], float | None]) -> float | None:
        values = [v for v in (fn(r) for r in results[name]) if v is not None]
        return float(statistics.median(values)) if values else None

    rows = {
        name: {
            "msg/s": med(name, lambda r: r.throughput),
            "p50 ms": med(name, lambda r: r.pct(0.5) * 1000),
            "p99 ms": med(name, lambda r: r.pct(0.99) * 1000),
            "no reply": med(name, lambda r: r.missing),
            "doubled": med(name, lambda r: r.doubled),
            "stmts/msg": med(name, lambda r: r.statements),
            "cpu": med(name, lambda r: r.cpu),
            "cpu ms/msg": med(name, lambda r: r.cpu_ms),
        }
        for name in results
    }
    mode = f"open loop at {args.open_loop:g} msg/s" if args.open_loop else "closed loop"
    print(
        f"\n{customers} customers x {args.turns} turns, {mode}, {args.repeats} repetition(s) "
        f"(medians), rate shaping lifted, {os.cpu_count()} cores"
    )
    columns = ["msg/s", "p50 ms", "p99 ms", "no reply", "doubled", "stmts/msg", "cpu", "cpu ms/msg"]
    print(f"{'':22}" + "".join(f"{c:>11}" for c in columns))
    for name, row in rows.items():
        cells = "".join(f"{cell(row[c], c.startswith('cpu')):>11}" for c in columns)
        print(f"{name:22}{cells}")
    for name in (n for n in rows if n.startswith("cicbot")):
        for peer in (p for p in ("fsm", "echo") if p in rows):
            ratio = []
            for c in ("msg/s", "p50 ms", "p99 ms"):
                a, b = rows[name][c], rows[peer][c]
                ratio.append(f"{a / b:11.2f}" if a is not None and b else f"{'-':>11}")
            print(f"{name + ' / ' + peer:22}{''.join(ratio)}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--customers", type=int, default=200)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="50 customers x 5 turns, one run")
    p.add_argument("--bots", default=",".join(BOTS), help=f"a subset of {','.join(BOTS)}")
    p.add_argument("--open-loop", type=float, default=0.0, metavar="RATE", help="msg/s")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of an open-loop run")
    p.add_argument("--pg-admin", default=os.environ.get("CICBOT_TEST_PG", PG_ADMIN))
    p.add_argument("--reply-timeout", type=float, default=10.0, help="seconds: else no reply")
    p.add_argument("--run-timeout", type=float, default=300.0, help="seconds per run")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for cicbot")
    p.add_argument("--profile", metavar="DIR", help="py-spy cicbot's runs into DIR")
    p.add_argument("--serve", choices=("echo", "fsm"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--api-base", help=argparse.SUPPRESS)
    p.add_argument("--peer-db", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.customers, args.turns, args.repeats = 50, 5, 1
    if args.open_loop:  # customers send every `customers / rate` seconds, for --duration
        args.turns = max(1, round(args.open_loop * args.duration / args.customers))
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve:
        serve_peer(arguments.serve, arguments.port, arguments.api_base, arguments.peer_db)
    else:
        asyncio.run(main(arguments))
