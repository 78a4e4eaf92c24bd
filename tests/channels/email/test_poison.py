"""No mail can stop the mailbox: whatever bytes arrive, each mail becomes a message (or is
kept unanswered: an auto-reply, a bounce) or a dead letter, and the mails behind it are
answered. Malformed headers from real-world mail, seeded mutations of the fixture mails and
hypothesis's, through the real inbox on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import random
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from bot.runtime import Runtime
from channels.email.adapter import EmailChannel
from channels.email.parse import Limits, bounded, mail_key, parse_mail
from storage.models import DeadLetter, EmailMailbox, InboxStatus, InboxUpdate, Touchpoint
from tests.channels.email.helpers import (  # noqa: F401
    Dovecot,
    SmtpSink,
    dovecot_fixture,
    email_settings,
    mail,
    smtp_sink_fixture,
    tls_cert_fixture,
)
from tests.reliability.test_fuzz import PROFILE, emails
from tests.timed import TIMED

FIXTURES = Path(__file__).parents[2] / "fixtures" / "email"
# headers the standard library's parser choked on (IndexError, AttributeError, ValueError)
POISON = [
    b'From: "',
    b"From: Kunde <",
    b"From: a@",
    b"Message-ID: <",
    b"To: <",
    b'Reply-To: "\\',
    b"Subject: =?utf-8?q?",
    b'Content-Type: text/plain; charset="utf-8\x00"',
    b"Content-Type: multipart/alternative; boundary=",
    b"Content-Disposition: attachment; filename*=utf-8''%ff%",
]
ENDED = {InboxStatus.DONE, InboxStatus.IGNORED, InboxStatus.DEAD}


def poisoned(header: bytes, n: int) -> bytes:
    """A person's mail with one bad header (the good one of that name taken out)."""
    good = mail(f"Mail {n}", sender=f"Kunde {n} <k{n}@example.org>", message_id=f"<p{n}@x.org>")
    name = header.split(b":", 1)[0].lower() + b":"
    lines = [x for x in good.split(b"\r\n") if not x.lower().startswith(name)]
    return header + b"\r\n" + b"\r\n".join(lines)


def channel(rt: Runtime) -> EmailChannel:
    c = rt.channels["email"]
    assert isinstance(c, EmailChannel)
    return c


@pytest.fixture
async def rt(db_url: str, smtp_sink: SmtpSink) -> AsyncIterator[Runtime]:
    runtime = Runtime(email_settings(db_url, smtp_sink), channels=["email"])
    runtime.inbox.flood = None
    yield runtime
    await runtime.stop()


async def outcome(rt: Runtime, dedupe_key: str) -> tuple[str, bool, bool]:
    """(inbox status, a dead letter points at it, the engine took it in as a message)."""
    async with rt.sessions() as s:
        row = (
            await s.execute(select(InboxUpdate).where(InboxUpdate.dedupe_key == dedupe_key))
        ).scalar_one()
        letter = await s.scalar(
            select(DeadLetter.id).where(DeadLetter.reference == f"inbox:{row.id}")
        )
        taken = await s.scalar(
            select(Touchpoint.id)
            .where(Touchpoint.direction == "in", Touchpoint.actor == "customer")
            .where(Touchpoint.platform_message_id == dedupe_key[:200])
        )
        return row.status, letter is not None, taken is not None


# ---- the poison mail between two good ones, through Dovecot --------------------------------


@pytest.fixture
async def folder(dovecot: Dovecot) -> AsyncIterator[str]:
    name = "p" + uuid.uuid4().hex[:10]
    imap = await dovecot.client()
    assert (await imap.create(name)).result == "OK"
    await imap.logout()
    yield name


async def test_a_poison_mail_between_two_good_ones(
    db_url: str, smtp_sink: SmtpSink, dovecot: Dovecot, folder: str
) -> None:
    """`From: "` made `accept` raise IndexError: the poller reconnected and fetched the same
    UID for ever, and no later mail was answered."""
    first = mail("Hallo, wo ist mein Paket?", sender="Anna <anna@example.org>", message_id="<g1@e>")
    last = mail("Where is my parcel?", sender="Bob <bob@example.org>", message_id="<g2@e>")
    for raw in (first, poisoned(b'From: "', 1), last):
        await dovecot.append(raw, folder)
    rt = Runtime(email_settings(db_url, smtp_sink, dovecot, folder=folder), channels=["email"])
    try:
        poller = channel(rt).poller
        assert poller is not None
        await poller.connect()
        assert await poller.fetch_new() == 3
        await rt.inbox.drain()
        await rt.dispatcher.drain()
        assert sorted(e.rcpt_tos[0] for e, _ in smtp_sink.messages) == [
            "anna@example.org",
            "bob@example.org",
        ]
        key, _ = mail_key(poisoned(b'From: "', 1))
        status, letter, taken = await outcome(rt, key)
        assert (status, letter, taken) == (InboxStatus.DEAD, True, False)
        async with rt.sessions() as s:
            row = (
                await s.execute(select(InboxUpdate).where(InboxUpdate.dedupe_key == key))
            ).scalar_one()
            assert base64.b64decode(row.payload["raw"]) == poisoned(b'From: "', 1)  # kept raw
            assert "no sender address" in (row.error or "")
            progress = await s.get(EmailMailbox, poller.mailbox)
            assert progress is not None and progress.last_uid == 3  # the UID moved on
    finally:
        await rt.stop()
    assert "\\Seen" in (await dovecot.flags(folder))[2]


# ---- every malformed header: a message or a dead letter, the next one answered --------------


@pytest.mark.parametrize("header", POISON, ids=[h.decode("latin-1")[:30] for h in POISON])
async def test_each_malformed_header_ends_and_blocks_nothing(
    rt: Runtime, smtp_sink: SmtpSink, header: bytes
) -> None:
    bad = poisoned(header, 7)
    assert await channel(rt).accept(bad)
    assert await channel(rt).accept(mail("Next one", sender="n@example.org", message_id="<n@e>"))
    await rt.inbox.drain()
    await rt.dispatcher.drain()
    status, letter, taken = await outcome(rt, mail_key(bad)[0])
    assert status in ENDED and (taken or letter), (status, letter, taken)
    assert letter == (status == InboxStatus.DEAD)
    assert "n@example.org" in [e.rcpt_tos[0] for e, _ in smtp_sink.messages]


# ---- bounded parsing, off the event loop -----------------------------------------------------

HUGE_SUBJECT = b"Subject: " + b"\r\n ".join([b"=?utf-8?q?w=C3=B6rd?="] * 60_000) + b"\r\n"


@TIMED
def test_a_huge_folded_subject_is_cut_before_parsing() -> None:
    """1.3 MB of encoded words: the standard library's header parser is quadratic on them
    (480 kB took 21 s); cut to the header limit it takes well under a second."""
    raw = HUGE_SUBJECT + (FIXTURES / "gmail_reply_en.eml").read_bytes()
    assert len(bounded(raw)) < len(raw) and len(bounded(raw)) < 300_000
    started = time.monotonic()
    parsed = parse_mail(raw)
    assert time.monotonic() - started < 2
    assert parsed.from_address and parsed.reply == "The parcel was soaked and torn."
    assert parsed.subject.startswith("wörd")


@TIMED
async def test_parsing_does_not_stall_the_event_loop(rt: Runtime) -> None:
    """A big mail (attachments up to the message limit) is parsed in a worker thread: the
    loop keeps ticking meanwhile."""
    body = base64.encodebytes(random.Random(1).randbytes(12 << 20)).replace(b"\n", b"\r\n")
    raw = (
        b"From: a@example.org\r\nMessage-ID: <big@e>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain\r\n\r\nSee attached.\r\n--b\r\n"
        b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="x.pdf"\r\n\r\n' + body + b"\r\n--b--\r\n"
    )
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(0.01)
            gaps.append(loop.time() - last)
            last = loop.time()

    tick = asyncio.create_task(ticker())
    started = time.monotonic()
    items = await channel(rt).parse({"raw": base64.b64encode(raw).decode()})
    took = time.monotonic() - started
    done.set()
    await tick
    assert len(items) == 1
    assert took > 0.2, "too small a mail to show anything"
    assert max(gaps) < max(0.15, took / 3), (max(gaps), took)


# ---- fuzzing: seeded mutations of the fixtures, and hypothesis ------------------------------


def mutate(raw: bytes, rnd: random.Random) -> bytes:
    for _ in range(rnd.randint(1, 3)):
        op = rnd.choice(["poison", "cut", "flip", "dup", "fold", "nul"])
        if op == "poison":
            raw = rnd.choice(POISON) + b"\r\n" + raw
        elif op == "cut":
            raw = raw[: rnd.randint(0, len(raw))]
        elif op == "flip":
            at = rnd.randrange(max(1, len(raw)))
            raw = raw[:at] + bytes([rnd.randrange(256)]) + raw[at + 1 :]
        elif op == "dup":  # a header line repeated, or an early line dropped
            lines = raw.split(b"\r\n") if b"\r\n" in raw else raw.split(b"\n")
            i = rnd.randrange(min(len(lines), 12))
            lines.insert(i, lines[i]) if rnd.random() < 0.5 else lines.pop(i)
            raw = b"\r\n".join(lines)
        elif op == "fold":
            raw = b"Subject: " + b"\r\n =?utf-8?b?w6Q=?=" * rnd.randint(1, 800) + b"\r\n" + raw
        else:
            at = rnd.randrange(max(1, len(raw)))
            raw = raw[:at] + b"\x00" + raw[at:]
    return raw


@TIMED
def test_seeded_mutations_of_the_fixtures_parse_or_raise_quickly() -> None:
    """3,000 mutations: the inbox key never fails, the parser returns or raises (the raise
    is what becomes a dead letter) within a bounded time."""
    rnd = random.Random(2026)
    fixtures = [p.read_bytes() for p in sorted(FIXTURES.rglob("*.eml"))]
    raised: dict[str, int] = {}
    slowest = 0.0
    for _ in range(3000):
        raw = mutate(rnd.choice(fixtures), rnd)
        key, sender = mail_key(raw)
        assert key.startswith("<") and sender
        # CPU time of this thread: a runaway parse shows, other processes' load does not
        started = time.thread_time()
        try:
            parse_mail(raw, limits=Limits())
        except Exception as exc:
            raised[type(exc).__name__] = raised.get(type(exc).__name__, 0) + 1
        slowest = max(slowest, time.thread_time() - started)
    assert slowest < 3, slowest
    assert sum(raised.values()) < 30, raised  # the rest is read, not parked


async def test_every_fuzzed_mail_ends_and_the_next_is_answered(
    rt: Runtime, smtp_sink: SmtpSink
) -> None:
    """Each example: a mutated mail then a good one. The mutant ends (a message, kept
    unanswered, or a dead letter), and the good one behind it is answered."""
    loop = asyncio.get_running_loop()
    counter = iter(range(10**9))
    ch = channel(rt)

    async def one(raw: bytes) -> None:
        n = next(counter)
        mutant = f"Message-ID: <fz{n}@example.org>\r\n".encode() + raw
        good = mail(f"Good {n}", sender=f"good{n}@example.org", message_id=f"<good{n}@e>")
        await ch.accept(mutant)
        await ch.accept(good)
        await rt.inbox.drain(timeout=60)
        status, letter, _ = await outcome(rt, mail_key(mutant)[0])
        assert status in ENDED and letter == (status == InboxStatus.DEAD), (status, letter)
        assert (await outcome(rt, f"<good{n}@e>"))[2], "the mail behind it was not taken in"

    @settings(PROFILE, max_examples=40)
    @given(emails() | st.builds(mutate, st.sampled_from(list(FIXTURE_MAILS)), st.randoms()))
    def example(raw: bytes) -> None:
        asyncio.run_coroutine_threadsafe(one(raw), loop).result(120)

    await loop.run_in_executor(None, example)


FIXTURE_MAILS = [p.read_bytes() for p in sorted(FIXTURES.rglob("*.eml"))]
