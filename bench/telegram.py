"""Telegram webhook benchmark: cicbot against a bare aiogram echo bot, on 127.0.0.1 only.

    .venv/bin/python bench/telegram.py [--customers 50] [--repeats 3] [--db URL] [--shaped]

N simulated customers each go through a multi-turn complaint conversation (text answers
and button presses as callback queries), POSTing Telegram updates to the webhook of a
running `cicbot serve` (a subprocess, SQLite in a temporary directory unless --db names
another database). Each customer waits for the bot's answer to one turn before the next.
The Bot API is the test stand-in (tests/standins/telegram_api.py) in this process; it
notes when each reply arrives.

Measured per turn: latency from the webhook POST to the arrival of the turn's last reply
at the stand-in; per run: throughput in customer messages per second (turns / wall time).
The same load then goes to a bare aiogram webhook echo bot (aiohttp, no database, one
reply per update), and the ratio is printed. Each figure is the median over --repeats
runs (the machine is small and noisy).

By default cicbot's Telegram rate shaping is lifted (the stand-in has no limits) so that
the pipeline itself is measured; --shaped keeps the production limits (30 messages/s per
bot, about 1/s per chat), which then bound the figures by design.

Bounded: at most 500 customers, and every run has a time limit (--run-timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import socket
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
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
UPDATE_IDS = itertools.count(900_000_000)
CALLBACK_IDS = itertools.count(5_000_000_000)
# (kind, value, replies cicbot sends for it); the echo bot always sends one
SCRIPT: list[tuple[str, str, int]] = [
    ("say", "complaint", 2),  # intro + the category question
    ("press", "f:complaint:category:delivery", 1),
    ("say", "The parcel arrived soaking wet and the box was torn.", 1),
    ("press", "f:complaint:reference:-", 1),
    ("press", "f:complaint:severity:medium", 1),
    ("press", "f:complaint:resolution:refund", 1),
    ("press", "f:complaint:confirm:yes", 1),  # the case reference
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---- the bare aiogram echo bot (run as a subprocess: --echo-server) -----------------------


def echo_server(port: int, api_base: str) -> None:
    from aiogram import Bot, Dispatcher
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer
    from aiogram.types import CallbackQuery, Message
    from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
    from aiohttp import web

    bot = Bot(DEFAULT_TOKEN, session=AiohttpSession(api=TelegramAPIServer.from_base(api_base)))
    dp = Dispatcher()

    @dp.message()
    async def echo(message: Message) -> None:
        await message.answer(f"echo: {message.text or ''}")

    @dp.callback_query()
    async def pressed(query: CallbackQuery) -> None:
        await query.answer()
        if query.message is not None:
            await bot.send_message(query.message.chat.id, f"pressed: {query.data}")

    app = web.Application()
    SimpleRequestHandler(dispatcher=dp, bot=bot, secret_token=SECRET).register(app, path=PATH)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/healthz", healthz)
    setup_application(app, dp, bot=bot)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# ---- load ---------------------------------------------------------------------------------


@dataclass
class Replies:
    """sendMessage arrivals per chat, recorded by a hook in the stand-in."""

    times: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    last: dict[int, dict[str, Any]] = field(default_factory=dict)
    changed: dict[int, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))

    def install(self, tg: TelegramStandIn) -> None:
        name, handler = tg._methods["sendmessage"]

        async def hooked(token: str, params: dict[str, Any]) -> Any:
            result = await handler(token, params)
            chat = params["chat_id"]
            self.times[chat].append(time.monotonic())
            self.last[chat] = result
            self.changed[chat].set()
            return result

        tg._methods["sendmessage"] = (name, hooked)

    async def wait(self, chat: int, count: int) -> float:
        while len(self.times[chat]) < count:
            event = self.changed[chat]
            event.clear()
            await event.wait()
        return self.times[chat][count - 1]


@dataclass
class Run:
    turns: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.turns / self.seconds

    def pct(self, q: float) -> float:
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))]


class Load:
    def __init__(self, base: str, replies: Replies, *, echo: bool) -> None:
        self.base, self.replies, self.echo = base, replies, echo

    def _user(self, chat: int) -> dict[str, Any]:
        return {
            "id": chat,
            "is_bot": False,
            "first_name": f"Customer {chat}",
            "language_code": "en",
        }

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
        pressed = self.replies.last[chat]  # the bot's latest message, with its keyboard
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

    async def customer(
        self, http: aiohttp.ClientSession, chat: int, latencies: list[float]
    ) -> None:
        expected = 0
        for i, (kind, value, replies) in enumerate(SCRIPT):
            expected += 1 if self.echo else replies
            update = self.update(chat, kind, value, message_id=1000 + i)
            started = time.monotonic()
            async with http.post(
                self.base + PATH, json=update, headers={HEADER: SECRET}
            ) as response:
                if response.status != 200:
                    raise RuntimeError(f"webhook answered {response.status}")
            arrived = await self.replies.wait(chat, expected)
            latencies.append(arrived - started)

    async def run(self, chats: list[int], timeout: float) -> Run:
        latencies: list[float] = []
        connector = aiohttp.TCPConnector(limit=len(chats))
        async with aiohttp.ClientSession(connector=connector) as http:
            started = time.monotonic()
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(self.customer(http, c, latencies) for c in chats))
            seconds = time.monotonic() - started
        return Run(len(chats) * len(SCRIPT), seconds, latencies)


# ---- processes ----------------------------------------------------------------------------


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def wait_healthy(base: str, proc: asyncio.subprocess.Process, log: Path) -> None:
    async with aiohttp.ClientSession() as http, asyncio.timeout(60):
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"server exited:\n{tail(log)}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(base + "/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def process(argv: list[str], env: dict[str, str], log: Path, port: int) -> Any:
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_healthy(base, proc, log)
        yield base
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(20):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


def cicbot_env(api_base: str, db_url: str, shaped: bool) -> dict[str, str]:
    env = {
        **os.environ,
        "CICBOT_CONFIG": str(ROOT / "config.yaml"),
        "CICBOT_DATABASE__URL": db_url,
        "CICBOT_TELEGRAM__TOKEN": DEFAULT_TOKEN,
        "CICBOT_TELEGRAM__WEBHOOK_SECRET": SECRET,
        "CICBOT_TELEGRAM__MODE": "webhook",
        "CICBOT_TELEGRAM__API_BASE": api_base,
    }
    if not shaped:
        env |= {
            "CICBOT_TELEGRAM__RATE_PER_SECOND": "100000",
            "CICBOT_TELEGRAM__CHAT_RATE_PER_SECOND": "100000",
            "CICBOT_TELEGRAM__CHAT_BURST": "30",
        }
    return env


async def main(args: argparse.Namespace) -> None:
    customers = max(1, min(args.customers, 500))
    tmp = Path(tempfile.mkdtemp(prefix="cicbot-bench-"))
    db_url = args.db or f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    results: dict[str, list[Run]] = {"cicbot": [], "echo": []}
    async with TelegramStandIn() as tg:
        replies = Replies()
        replies.install(tg)
        cicbot_port, echo_port = free_port(), free_port()
        cicbot_argv = [
            str(Path(sys.executable).parent / "cicbot"),
            "serve",
            "--port",
            str(cicbot_port),
            "--log-level",
            "warning",
        ]
        echo_argv = [
            sys.executable,
            str(SELF),
            "--echo-server",
            "--port",
            str(echo_port),
            "--api-base",
            tg.base_url,
        ]
        async with (
            process(
                cicbot_argv,
                cicbot_env(tg.base_url, db_url, args.shaped),
                tmp / "cicbot.log",
                cicbot_port,
            ) as cicbot_base,
            process(echo_argv, dict(os.environ), tmp / "echo.log", echo_port) as echo_base,
        ):
            chat = 10_000_000
            # a short warm-up of both (first requests, caches, SQLite file growth)
            for name, base in (("cicbot", cicbot_base), ("echo", echo_base)):
                warm = [chat + i for i in range(min(5, customers))]
                chat += 1000
                await Load(base, replies, echo=name == "echo").run(warm, args.run_timeout)
            for rep in range(args.repeats):
                for name, base in (("cicbot", cicbot_base), ("echo", echo_base)):
                    chats = [chat + i for i in range(customers)]
                    chat += 1000
                    run = await Load(base, replies, echo=name == "echo").run(
                        chats, args.run_timeout
                    )
                    results[name].append(run)
                    print(
                        f"  run {rep + 1} {name:6}: {run.throughput:8.1f} msg/s  "
                        f"p50 {run.pct(0.5) * 1000:7.1f} ms  p99 {run.pct(0.99) * 1000:7.1f} ms",
                        flush=True,
                    )
    report(results, customers, args, db_url)


def report(
    results: dict[str, list[Run]], customers: int, args: argparse.Namespace, db_url: str
) -> None:
    def med(name: str, fn: Callable[[Run], float]) -> float:
        return float(statistics.median(fn(r) for r in results[name]))

    figures = {
        name: (
            med(name, lambda r: r.throughput),
            med(name, lambda r: r.pct(0.5)),
            med(name, lambda r: r.pct(0.99)),
        )
        for name in results
    }
    db = "sqlite" if db_url.startswith("sqlite") else db_url.split(":", 1)[0]
    print(
        f"\n{customers} customers x {len(SCRIPT)} turns, {args.repeats} repetitions "
        f"(medians), database {db}, rate shaping {'on' if args.shaped else 'lifted'}"
    )
    print(f"{'':24}{'msg/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, label in (("cicbot", "cicbot serve (webhook)"), ("echo", "bare aiogram echo")):
        tput, p50, p99 = figures[name]
        print(f"{label:24}{tput:10.1f}{p50 * 1000:10.1f}{p99 * 1000:10.1f}")
    (ct, c50, c99), (et, e50, e99) = figures["cicbot"], figures["echo"]
    print(f"{'cicbot / echo':24}{ct / et:10.2f}{c50 / e50:10.2f}{c99 / e99:10.2f}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--customers", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--db", help="database URL for cicbot (default: a temporary SQLite file)")
    p.add_argument("--shaped", action="store_true", help="keep the production rate limits")
    p.add_argument("--run-timeout", type=float, default=180.0, help="seconds per run")
    p.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--api-base", help=argparse.SUPPRESS)
    return p.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.echo_server:
        echo_server(arguments.port, arguments.api_base)
    else:
        asyncio.run(main(arguments))
