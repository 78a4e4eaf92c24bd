"""What the fault tests and bench/chaos.py share: `cicbot serve` as a real subprocess,
webhook load from many customers with the platforms' redelivery, and the checks.

The platforms are the stand-ins (tests/standins/): Telegram updates and Slack Events API
envelopes (signed v0) are POSTed to the server's webhooks; replies arrive at the stand-ins.
Redelivery as the platforms do it: an update not answered 200 (an error status, a refused
or reset connection, a timeout) is sent again, until it is answered 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests import proctree
from tests.standins.slack_api import BOT_TOKEN, SIGNING_SECRET, SlackStandIn, sign
from tests.standins.telegram_api import DEFAULT_TOKEN, TelegramStandIn

ROOT = Path(__file__).resolve().parent.parent.parent
TG_SECRET = "reliability-webhook-secret_0123456789"
TG_PATH, SLACK_PATH = "/webhooks/telegram", "/webhooks/slack/events"
# a cold start imports aiogram, slack_bolt and scikit-learn: seconds on a busy machine
STARTUP_TIMEOUT = 180.0
LEASE_SECONDS = 10.0  # outbox and inbox leases of the servers under test


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def server_env(
    db_url: str, tg: TelegramStandIn, slack: SlackStandIn, *, scheduler: bool = False
) -> dict[str, str]:
    """The environment of a `cicbot serve` on `db_url` with Telegram (webhook mode) and
    Slack (HTTP) pointed at the stand-ins, rate shaping lifted, short leases."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CICBOT_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a restart should not import cold again
    env.update(
        {
            "CICBOT_CONFIG": str(ROOT / "config.yaml"),
            "CICBOT_DATABASE__URL": db_url,
            "CICBOT_DATABASE__AUTO_MIGRATE": "false",
            "CICBOT_CAMPAIGNS__SCHEDULER": "true" if scheduler else "false",
            "CICBOT_DISPATCHER__LEASE_SECONDS": str(LEASE_SECONDS),
            "CICBOT_DISPATCHER__POLL_INTERVAL_SECONDS": "0.2",
            "CICBOT_DISPATCHER__BASE_BACKOFF_SECONDS": "0.2",
            "CICBOT_DISPATCHER__MAX_BACKOFF_SECONDS": "2",
            "CICBOT_TELEGRAM__TOKEN": DEFAULT_TOKEN,
            "CICBOT_TELEGRAM__WEBHOOK_SECRET": TG_SECRET,
            "CICBOT_TELEGRAM__MODE": "webhook",
            "CICBOT_TELEGRAM__API_BASE": tg.base_url,
            "CICBOT_TELEGRAM__RATE_PER_SECOND": "1000",
            "CICBOT_TELEGRAM__CHAT_RATE_PER_SECOND": "100",
            "CICBOT_TELEGRAM__CHAT_BURST": "30",
            "CICBOT_SLACK__BOT_TOKEN": BOT_TOKEN,
            "CICBOT_SLACK__SIGNING_SECRET": SIGNING_SECRET,
            "CICBOT_SLACK__API_BASE": slack.api_base,
            "CICBOT_SLACK__CHANNEL_RATE_PER_SECOND": "100",
            "CICBOT_SLACK__CHANNEL_BURST": "30",
        }
    )
    return env


class ServerProcess:
    """One `cicbot serve` subprocess on a fixed port, restartable after a kill."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.env = env
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._gone: list[proctree.Tree] = []  # the processes below each server stopped

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-c", "from bot.cli.app import main; main()"),
                *("serve", "--host", "127.0.0.1", "--port", str(self.port)),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> float:
        """Until /healthz answers 200; the seconds it took."""
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() - started < timeout:
                if self.proc is None or self.proc.poll() is not None:
                    raise RuntimeError(f"cicbot serve exited:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.base + "/healthz")).status_code == 200:
                        return time.monotonic() - started
                await asyncio.sleep(0.2)
        raise TimeoutError(f"cicbot serve not ready in {timeout}s:\n{self.log_tail()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self._gone.append(proctree.descendants(self.proc.pid))
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._close_log()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._gone.append(proctree.descendants(self.proc.pid))
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()
        self._reap()

    def _reap(self) -> None:
        """What the servers started goes with them (the sandbox's forkserver and workers
        die with their server, bot/channel/sandbox.py); whatever is left after 10 s is
        killed, with a warning: a validation spinning on at ppid 1 would slow every test
        after this one."""
        trees, self._gone = self._gone, []
        for tree in trees:
            if left := proctree.gone_within(tree, 10):
                proctree.kill(tree)
                left_running = f"killed what a stopped cicbot serve left (pid: state): {left}"
                warnings.warn(left_running, stacklevel=3)  # at the test's stop()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


# ---- load ---------------------------------------------------------------------------------


@dataclass
class Update:
    channel: str  # "telegram" | "slack"
    customer: str  # the chat id (Telegram) or DM channel (Slack) replies go to
    text: str  # unique: how the update is found in the history
    payload: dict[str, Any]
    acked_at: float | None = None
    attempts: int = 0
    answers: Counter[str] = field(default_factory=Counter)  # status or error → times


def slack_dm(user: str) -> str:
    return "D" + user[1:]


@dataclass
class Load:
    """`telegram` chats and `slack` users, each sending `messages` in order (the next once
    the previous was acknowledged); the customers at once."""

    tg: TelegramStandIn
    slack: SlackStandIn
    tag: str
    telegram: int = 30
    slack_users: int = 20
    messages: int = 3
    first_chat: int = 0  # chat ids / user numbers start here (several loads, one database)
    pause: float = 0.05  # between a customer's messages
    # where the same update is sent as well, at the same time (a redelivery racing it)
    twin: Callable[[Update], str | None] = lambda _: None
    customers: dict[str, list[Update]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for n in range(self.first_chat, self.first_chat + self.telegram):
            chat = 610_000_000 + n
            self.customers[str(chat)] = [
                Update("telegram", str(chat), said, self.tg.push_text(chat, said))
                for said in self._texts(f"tg{n}")
            ]
        for n in range(self.first_chat, self.first_chat + self.slack_users):
            user = f"U0R{n:08d}"
            self.slack.add_user(user, f"Customer {n}", locale="en-US")
            updates = []
            for said in self._texts(f"sl{n}"):
                event = self.slack.user_message(user, slack_dm(user), said)
                updates.append(Update("slack", slack_dm(user), said, self.slack.envelope(event)))
            self.customers[slack_dm(user)] = updates

    def _texts(self, who: str) -> list[str]:
        return [f"question {i} from {who} in run {self.tag}" for i in range(self.messages)]

    @property
    def updates(self) -> list[Update]:
        return [u for us in self.customers.values() for u in us]

    async def run(self, target: Callable[[Update], str], timeout: float = 300.0) -> None:
        """Send everything; `target(update)` picks the server base URL of each attempt."""
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with (
            httpx.AsyncClient(timeout=5.0, limits=limits) as client,
            asyncio.timeout(timeout),
        ):
            await asyncio.gather(
                *(self._customer(client, us, target) for us in self.customers.values())
            )

    async def _customer(
        self, client: httpx.AsyncClient, updates: Sequence[Update], target: Callable[[Update], str]
    ) -> None:
        await asyncio.sleep(random.uniform(0, 0.5))
        for update in updates:
            twin = self.twin(update)
            if twin is None:
                await deliver(client, update, target)
            else:
                await asyncio.gather(deliver(client, update, target), once(client, twin, update))
            await asyncio.sleep(random.uniform(0, 2 * self.pause))


async def post(client: httpx.AsyncClient, base: str, update: Update) -> int:
    """One delivery attempt as the platform makes it; the HTTP status."""
    body = json.dumps(update.payload).encode()
    if update.channel == "telegram":
        headers = {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}
        path = TG_PATH
    else:
        headers = sign(body)  # signed at each attempt, with that attempt's timestamp
        if update.attempts > 1:
            headers |= {"X-Slack-Retry-Num": str(update.attempts - 1)}
            headers |= {"X-Slack-Retry-Reason": "http_error"}
        path = SLACK_PATH
    headers["Content-Type"] = "application/json"
    response = await client.post(base + path, content=body, headers=headers)
    return response.status_code


async def once(client: httpx.AsyncClient, base: str, update: Update) -> None:
    with contextlib.suppress(httpx.HTTPError):
        update.answers[f"twin {await post(client, base, update)}"] += 1


async def deliver(
    client: httpx.AsyncClient, update: Update, target: Callable[[Update], str]
) -> None:
    """Until answered 200, backing off a little between attempts."""
    delay = 0.1
    while True:
        update.attempts += 1
        try:
            status = await post(client, target(update), update)
            update.answers[str(status)] += 1
            if status == 200:
                update.acked_at = time.monotonic()
                return
        except httpx.HTTPError as exc:  # refused, reset, timed out: not acknowledged
            update.answers[type(exc).__name__] += 1
        await asyncio.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 1.0)


# ---- waiting and checking -----------------------------------------------------------------


def database(db_url: str) -> AsyncEngine:
    return create_async_engine(db_url, pool_size=2, max_overflow=0)


async def busy(db: AsyncEngine) -> tuple[int, int]:
    """Inbox rows waiting to be processed, outbox rows waiting to be sent."""
    async with db.connect() as conn:
        inbox = await conn.scalar(
            text("SELECT count(*) FROM inbox WHERE status IN ('pending', 'processing')")
        )
        outbox = await conn.scalar(
            text("SELECT count(*) FROM outbox WHERE status IN ('pending', 'sending')")
        )
    return int(inbox or 0), int(outbox or 0)


async def settle(db: AsyncEngine, timeout: float = 120.0) -> None:
    """Until the inbox and the outbox have been idle for a moment."""
    idle_since: float | None = None
    async with asyncio.timeout(timeout):
        while True:
            if await busy(db) == (0, 0):
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 1.0:
                    return
            else:
                idle_since = None
            await asyncio.sleep(0.2)


async def in_flight(db: AsyncEngine) -> dict[str, int]:
    """Outbox rows claimed but not recorded as sent, per recipient: right after a kill -9,
    the sends that may have reached the platform without our commit."""
    async with db.connect() as conn:
        rows = await conn.execute(
            text("SELECT thread_key, count(*) FROM outbox WHERE status = 'sending' GROUP BY 1")
        )
        return {_conversation(key): int(n) for key, n in rows}


def _conversation(thread_key: str) -> str:
    """Where a reply lands at the stand-in: the Telegram chat, the Slack channel."""
    return thread_key.partition(":")[0]


@dataclass
class Outcome:
    acknowledged: int = 0
    in_history: int = 0
    missing_from_history: list[str] = field(default_factory=list)
    twice_in_history: list[str] = field(default_factory=list)
    replies_due: int = 0  # outbox rows of the load's customers
    not_sent: int = 0  # rows not in status sent (pending, failed, ...)
    delivered: int = 0  # messages at the stand-ins
    missing: dict[str, int] = field(default_factory=dict)  # per customer: due, not arrived
    doubled: dict[str, int] = field(default_factory=dict)  # per customer: arrived extra
    parked: list[str] = field(default_factory=list)  # dead inbox rows: "id: error"


async def check(db: AsyncEngine, load: Load) -> Outcome:
    """Compare what was acknowledged with the history, and the outbox with the stand-ins."""
    out = Outcome()
    acked = [u for u in load.updates if u.acked_at is not None]
    out.acknowledged = len(acked)
    async with db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT text, count(*) FROM touchpoints WHERE direction = 'in' "
                "AND text LIKE :tag GROUP BY text"
            ),
            {"tag": f"% in run {load.tag}"},
        )
        history = {t: int(n) for t, n in rows}
        dead = await conn.execute(
            text("SELECT id, error FROM inbox WHERE status = 'dead' ORDER BY id")
        )
        out.parked = [f"{i}: {(error or '')[:120]}" for i, error in dead]
        outbox = await conn.execute(text("SELECT thread_key, status FROM outbox"))
        due: Counter[str] = Counter()
        for key, status in outbox:
            if _conversation(key) in load.customers:
                due[_conversation(key)] += 1
                out.not_sent += status != "sent"
    for u in acked:
        n = history.get(u.text, 0)
        out.in_history += n == 1
        if n == 0:
            out.missing_from_history.append(u.text)
        elif n > 1:
            out.twice_in_history.append(u.text)
    out.replies_due = sum(due.values())
    for customer in load.customers:
        arrived = arrivals(load, customer)
        out.delivered += arrived
        if arrived < due[customer]:
            out.missing[customer] = due[customer] - arrived
        elif arrived > due[customer]:
            out.doubled[customer] = arrived - due[customer]
    return out


def arrivals(load: Load, customer: str) -> int:
    """Messages the bot sent to a customer, as the stand-ins recorded them."""
    if customer.startswith("D"):
        return len(load.slack.bot_messages(customer))
    return len(load.tg.sent_messages(int(customer)))
