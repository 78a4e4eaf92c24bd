"""Fuzzing the inbound edges: hypothesis mutates the real captured Telegram updates, Slack
payloads (signed, so they pass authentication) and emails.

* a webhook answers 2xx or a clean 4xx, never 5xx;
* every stored update is processed to an end (done, ignored or parked as dead);
* nothing is logged at ERROR: garbage is parked or ignored with a warning. The one
  deliberate ERROR record is a dead letter (a flow raising on a message) — allowed here but
  counted, as each one is a bug to look at;
* the email parser returns, or raises (the channel parks that mail as a dead letter),
  quickly for any bytes; tests/channels/email/test_poison.py follows such mails through.

Deterministic (derandomize) so that CI sees the same examples every run. The examples run
in a worker thread; each one is handed to the test's event loop, where the application
(the real FastAPI app over httpx's ASGI transport, the real runtime on SQLite and
PostgreSQL) lives.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bot.runtime import Runtime
from bot.web.app import create_app
from channels.email.adapter import EmailChannel
from channels.email.parse import parse_mail
from channels.email.settings import EmailSettings, EmailSmtpSettings
from channels.slack.adapter import EVENTS_PATH
from channels.slack.settings import SlackSettings
from channels.telegram.adapter import SECRET_HEADER, WEBHOOK_PATH
from channels.telegram.settings import TelegramSettings
from storage.models import InboxStatus, InboxUpdate
from tests.conftest import ROOT, make_settings
from tests.standins.slack_api import BOT_TOKEN, SIGNING_SECRET, SlackStandIn, sign
from tests.standins.telegram_api import DEFAULT_TOKEN, TelegramStandIn
from tests.timed import TIMED

T = TypeVar("T")
FIXTURES = ROOT / "tests" / "fixtures"
TG_SECRET = "fuzz-webhook-secret_0123456789"
PROFILE = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def load_json(folder: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text("utf-8")) for p in sorted((FIXTURES / folder).glob("*.json"))]


TELEGRAM = load_json("telegram")
SLACK = load_json("slack")
EMAILS = [p.read_bytes() for p in sorted((FIXTURES / "email").glob("*.eml"))]

# ---- strategies ----------------------------------------------------------------------------

HUGE = st.sampled_from(["x" * 70_000, "é" * 40_000, "\U0001f600" * 20_000, "\x00" * 5000])
SURROGATES = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1)
TEXT = st.text(max_size=40) | st.text(st.characters(codec="utf-8"), max_size=20) | SURROGATES
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | TEXT
    | HUGE
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


def slots(node: Any) -> Iterator[tuple[Any, Any]]:
    """(container, key) of every value in a JSON tree, depth first."""
    items: Any = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in list(items):
        yield node, key
        if isinstance(value, dict | list) and value:
            yield from slots(value)


@st.composite
def mutated(draw: st.DrawFn, docs: list[dict[str, Any]]) -> dict[str, Any]:
    """A fixture with 1-4 of: a value replaced by junk or by a value of another type, a key
    deleted, a junk key added."""
    doc: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(docs)))
    for _ in range(draw(st.integers(1, 4))):
        parent, key = draw(st.sampled_from(list(slots(doc)) or [(doc, "x")]))
        op = draw(st.sampled_from(["replace", "delete", "add", "retype"]))
        if op == "delete" and isinstance(parent, dict):
            parent.pop(key, None)
        elif op == "add" and isinstance(parent, dict):
            parent[draw(TEXT)] = draw(JUNK)
        elif op == "retype":
            parent[key] = draw(st.sampled_from([None, "1", 1, 1.5, [], {}, True, "", -1]))
        else:
            parent[key] = draw(JUNK)
    return doc


@st.composite
def emails(draw: st.DrawFn) -> bytes:
    raw = draw(st.sampled_from(EMAILS))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(
            st.sampled_from(
                ["header", "charset", "encoding", "boundary", "cut", "bytes", "huge", "nest"]
            )
        )
        if op == "header":
            name = draw(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1))
            value = draw(TEXT).encode("utf-8", "surrogatepass")
            raw = name.replace(":", "").encode() + b": " + value + b"\r\n" + raw
        elif op == "charset":
            charset = draw(
                st.sampled_from(
                    [b"utf-7", b"x-unknown", b"", b"utf-16", b"\xff\xfe", b"iso-2022-jp", b"cp1258"]
                )
            )
            raw = re.sub(rb'charset="?[^";\s]*"?', b"charset=" + charset, raw, flags=re.I)
        elif op == "encoding":
            cte = draw(st.sampled_from([b"base64", b"quoted-printable", b"x-uuencode", b"7bit"]))
            raw = re.sub(rb"(?i)(content-transfer-encoding:)[^\r\n]*", rb"\1 " + cte, raw)
        elif op == "boundary":
            boundary = draw(st.binary(max_size=12)).replace(b'"', b"")
            raw = re.sub(rb'boundary="?[^";\s]*"?', b'boundary="' + boundary + b'"', raw)
        elif op == "cut":
            raw = raw[: draw(st.integers(0, len(raw)))]
        elif op == "bytes":
            at = draw(st.integers(0, len(raw)))
            raw = raw[:at] + draw(st.binary(min_size=1, max_size=64)) + raw[at:]
        elif op == "huge":
            raw = raw + b"\r\n" + draw(st.sampled_from([b"A" * 300_000, b"=\r\n" * 60_000]))
        else:  # nested multiparts around the mail, with a missing close now and then
            for depth in range(draw(st.integers(1, 30))):
                b = f"b{depth}".encode()
                close = b"--" + b + b"--\r\n" if draw(st.booleans()) else b""
                raw = (
                    (
                        b'Content-Type: multipart/mixed; boundary="'
                        + b
                        + b'"\r\n\r\n--'
                        + b
                        + b"\r\n"
                    )
                    + raw
                    + b"\r\n"
                    + close
                )
            raw = b"From: Fuzz <fuzz@example.org>\r\nMessage-ID: <n@x>\r\n" + raw
    return raw


# ---- the application -------------------------------------------------------------------------


@dataclass
class App:
    runtime: Runtime
    client: httpx.AsyncClient
    loop: asyncio.AbstractEventLoop
    slack_url: str
    tg_url: str

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the test's loop (from hypothesis's worker thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)


@pytest.fixture
async def app(db_url: str, caplog: pytest.LogCaptureFixture) -> AsyncIterator[App]:
    async with TelegramStandIn() as tg, SlackStandIn() as slack:
        settings = make_settings(
            db_url,
            telegram=TelegramSettings(
                token=DEFAULT_TOKEN, webhook_secret=TG_SECRET, mode="webhook", api_base=tg.base_url
            ),
            slack=SlackSettings(
                bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET, api_base=slack.api_base
            ),
            email=EmailSettings(
                address="service@shop.test", smtp=EmailSmtpSettings(host="127.0.0.1", port=9)
            ),
        )
        runtime = Runtime(settings, channels=["telegram", "slack", "email"])
        runtime.inbox.flood = None  # most examples are one customer's: no pacing here
        caplog.set_level(logging.WARNING)
        await runtime.start(dispatch=False)  # replies stay queued: the inbound side is fuzzed
        transport = httpx.ASGITransport(app=create_app(runtime), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://cicbot") as client:
            yield App(runtime, client, asyncio.get_running_loop(), EVENTS_PATH, WEBHOOK_PATH)
        await runtime.stop()


async def in_thread(work: Callable[[], None]) -> None:
    await asyncio.get_running_loop().run_in_executor(None, work)


async def settle(app: App, caplog: pytest.LogCaptureFixture) -> None:
    """Process everything stored, then check that it all ended and nothing logged an error."""
    await app.runtime.inbox.drain(timeout=120)
    async with app.runtime.sessions() as s:
        q = select(InboxUpdate.status, func.count()).group_by(InboxUpdate.status)
        counts = dict((await s.execute(q)).all())
    assert not {InboxStatus.PENDING, InboxStatus.PROCESSING} & set(counts), counts
    # some examples got through to the engine: the fuzzing reached past the parsers
    assert counts.get(InboxStatus.DONE, 0) >= 5, counts
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    unexpected = [r for r in errors if not r.getMessage().startswith("dead letter")]
    assert not unexpected, "\n".join(f"{r.name}: {r.getMessage()}" for r in unexpected[:5])


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:200])


# ---- the tests -------------------------------------------------------------------------------


async def test_telegram_updates(app: App, caplog: pytest.LogCaptureFixture) -> None:
    counter = iter(range(10**9))

    @PROFILE
    @given(mutated(TELEGRAM))
    def one(update: dict[str, Any]) -> None:
        if type(update.get("update_id")) is int:
            update["update_id"] = next(counter)  # fresh, or the inbox dedupes it away
        body = json.dumps(update).encode()  # lone surrogates travel as \\udxxx escapes
        headers = {SECRET_HEADER: TG_SECRET, "Content-Type": "application/json"}
        check(app.run(app.client.post(app.tg_url, content=body, headers=headers)))

    await in_thread(one)
    await settle(app, caplog)


async def test_slack_payloads(app: App, caplog: pytest.LogCaptureFixture) -> None:
    counter = iter(range(10**9))

    @PROFILE
    @given(mutated(SLACK))
    def one(payload: dict[str, Any]) -> None:
        if isinstance(payload.get("event_id"), str):
            payload["event_id"] = f"EvFuzz{next(counter)}"
        text = json.dumps(payload)
        if payload.get("type") == "block_actions":
            body = urlencode({"payload": text}).encode()
            kind = "application/x-www-form-urlencoded"
        else:
            body, kind = text.encode(), "application/json"
        headers = {"Content-Type": kind, **sign(body)}
        check(app.run(app.client.post(app.slack_url, content=body, headers=headers)))

    await in_thread(one)
    await settle(app, caplog)


@TIMED
@settings(PROFILE, max_examples=150)
@given(emails())
def test_email_parser_returns(raw: bytes) -> None:
    started = time.monotonic()
    try:
        mail = parse_mail(raw)
    except Exception:  # a dead letter, see test_email_poison.py
        pass
    else:
        assert isinstance(mail.reply, str) and isinstance(mail.from_address, str)
    assert time.monotonic() - started < 5, "the parser must not take this long"


async def test_emails_through_the_channel(app: App, caplog: pytest.LogCaptureFixture) -> None:
    channel = app.runtime.channels["email"]
    assert isinstance(channel, EmailChannel)

    counter = iter(range(10**9))

    @settings(PROFILE, max_examples=50)
    @given(emails())
    def one(raw: bytes) -> None:
        fresh = f"Message-ID: <fuzz{next(counter)}@example.org>\r\n".encode()  # not deduped
        app.run(channel.accept(fresh + raw))  # what the IMAP poller calls: takes any bytes

    await in_thread(one)
    await settle(app, caplog)
