"""The email channel end to end: a real IMAP server (Dovecot) in, a real SMTP server
(aiosmtpd) out, the real engine and flows in between."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from email.message import EmailMessage

import httpx
import pytest
from sqlalchemy import func, select

from bot.app import create_app
from bot.runtime import Runtime
from channels.email import EmailChannel
from storage import queries
from storage.models import Case, Consent, Conversation, Identity, InboxUpdate, Touchpoint
from tests.channels.email_helpers import (  # noqa: F401
    Dovecot,
    SmtpSink,
    dovecot_fixture,
    email_settings,
    mail,
    smtp_sink_fixture,
    tls_cert_fixture,
)

QUOTE = "\n\nOn Mon, Nov 16, 2026 at 10:00 AM Beispiel Service <service@shop.test> wrote:\n> {}\n"
BOB = "Bob Kunde <bob@example.com>"


def channel(rt: Runtime) -> EmailChannel:
    c = rt.channels["email"]
    assert isinstance(c, EmailChannel)
    return c


def reply_to(last: EmailMessage, text: str, n: str, sender: str = BOB) -> bytes:
    """The customer answers a mail of ours with their client's quote below."""
    refs = f"{last.get('References', '')} {last['Message-ID']}".strip()
    body = last.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    return mail(
        text + QUOTE.format(body.replace("\n", "\n> ")),
        sender=sender,
        subject="Re: " + str(last["Subject"]),
        message_id=f"<{n}@example.com>",
        in_reply_to=str(last["Message-ID"]),
        references=refs,
    )


class Mailbox:
    """Drives a runtime round by round (fetch, process, send), restartable."""

    def __init__(
        self, url: str, sink: SmtpSink, server: Dovecot, folder: str, **email: object
    ) -> None:
        self.url, self.sink, self.server, self.folder = url, sink, server, folder
        self.email = email  # EmailSettings overrides
        self.rt = self._runtime()

    def _runtime(self) -> Runtime:
        return Runtime(
            email_settings(self.url, self.sink, self.server, folder=self.folder, **self.email),
            channels=["email"],
        )

    async def restart(self) -> None:
        await self.rt.stop()
        self.rt = self._runtime()

    async def fetch(self) -> int:
        poller = channel(self.rt).poller
        assert poller is not None
        if poller.client is None:
            await poller.connect()
        return await poller.fetch_new()

    async def process(self) -> None:
        await self.rt.inbox.drain()
        await self.rt.dispatcher.drain()

    async def round(self, raw: bytes) -> list[EmailMessage]:
        before = len(self.sink.messages)
        await self.server.append(raw, self.folder)
        assert await self.fetch() == 1
        await self.process()
        return self.sink.parsed()[before:]


@pytest.fixture
async def box(
    db_url: str,
    smtp_sink: SmtpSink,
    dovecot: Dovecot,
) -> AsyncIterator[Mailbox]:
    folder = "e" + uuid.uuid4().hex[:10]
    imap = await dovecot.client()
    await imap.create(folder)
    await imap.logout()
    b = Mailbox(db_url, smtp_sink, dovecot, folder)
    yield b
    await b.rt.stop()


async def test_complaint_by_mail_with_a_restart_in_the_middle(box: Mailbox) -> None:
    first = mail(
        "I want to complain: my parcel arrived damaged.\n\n-- \nBob",
        sender=BOB,
        subject="Damaged parcel",
        message_id="<p0@example.com>",
    )
    sent = await box.round(first)
    question = sent[-1]
    assert question["In-Reply-To"] == "<p0@example.com>"
    assert str(question["References"]).startswith("<p0@example.com>")
    assert question["Subject"] == "Re: Damaged parcel"
    assert "1. Delivery" in question.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    last = (await box.round(reply_to(question, "1", "p1")))[-1]
    last = (await box.round(reply_to(last, "The parcel was soaked and torn.", "p2")))[-1]

    # a restart after the mail is committed to the inbox, before it is processed
    before = len(box.sink.messages)
    await box.server.append(reply_to(last, "A-12345", "p3"), box.folder)
    assert await box.fetch() == 1
    await box.restart()
    assert await box.fetch() == 0  # not imported again
    await box.process()
    assert len(box.sink.messages) == before + 1  # answered once
    last = box.sink.parsed()[-1]
    # a restart before the next mail is fetched at all
    await box.server.append(reply_to(last, "Serious", "p4"), box.folder)
    await box.restart()
    assert await box.fetch() == 1
    await box.process()
    last = box.sink.parsed()[-1]
    last = (await box.round(reply_to(last, "2", "p5")))[-1]
    assert "Shall I submit it?" in last.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    confirmation = await box.round(reply_to(last, "yes", "p6"))
    assert confirmation
    for m in confirmation:
        assert re.search(r"Re: Damaged parcel \[C-\d{4}-\d{6}\]", str(m["Subject"]))
        assert m["In-Reply-To"] == "<p6@example.com>"
        assert str(m["References"]).startswith("<p0@example.com>")  # under the first mail
        assert m["Auto-Submitted"] == "auto-replied"

    async with box.rt.sessions() as s:
        conv = (await s.execute(select(Conversation))).scalars().all()
        assert len(conv) == 1
        case = (await s.execute(select(Case))).scalar_one()
        assert case.description == "The parcel was soaked and torn."
        assert case.order_reference == "A-12345"
        texts = (
            (
                await s.execute(
                    select(Touchpoint.text).where(
                        Touchpoint.direction == "in", Touchpoint.channel == "email"
                    )
                )
            )
            .scalars()
            .all()
        )
        assert len(texts) == 7 and not any("wrote:" in (t or "") for t in texts)
        assert texts[0] == "I want to complain: my parcel arrived damaged."
        outs = (
            await s.execute(
                select(func.count()).select_from(Touchpoint).where(Touchpoint.direction == "out")
            )
        ).scalar_one()
        assert outs == len(box.sink.messages)  # nothing sent twice

    # the customer writes again quoting the case in a new mail: the same conversation
    follow = mail(
        "Any news?",
        sender=BOB,
        subject=f"Question about {case.reference} [{case.reference}]",
        message_id="<p7@example.com>",
    )
    await box.round(follow)
    async with box.rt.sessions() as s:
        assert (await s.execute(select(func.count(Conversation.id)))).scalar_one() == 1
    # a stranger quoting the reference gets a conversation of their own
    await box.round(
        mail(
            "Me too",
            sender="eve@example.net",
            subject=f"[{case.reference}]",
            message_id="<e1@x.net>",
        )
    )
    async with box.rt.sessions() as s:
        convs = (await s.execute(select(Conversation).order_by(Conversation.id))).scalars().all()
        assert len(convs) == 2 and convs[1].contact_id != convs[0].contact_id


async def test_new_subject_is_a_new_conversation(box: Mailbox) -> None:
    await box.round(mail("Hello", sender=BOB, subject="One", message_id="<n1@example.com>"))
    await box.round(mail("Hello again", sender=BOB, subject="Two", message_id="<n2@example.com>"))
    async with box.rt.sessions() as s:
        assert (await s.execute(select(func.count(Conversation.id)))).scalar_one() == 2


async def test_auto_reply_gets_no_answer(box: Mailbox) -> None:
    ooo = mail(
        "I am out of office.",
        sender=BOB,
        subject="Automatic reply: Damaged parcel",
        message_id="<ooo@example.com>",
        headers={"Auto-Submitted": "auto-replied"},
    )
    assert await box.round(ooo) == []
    async with box.rt.sessions() as s:
        row = (await s.execute(select(InboxUpdate))).scalar_one()
        assert row.status == "ignored"  # kept, not answered
    bulk = mail(
        "News", sender="news@example.com", message_id="<b@x.com>", headers={"Precedence": "bulk"}
    )
    assert await box.round(bulk) == []


def dsn(recipient: str, quoted_id: str | None, n: int = 9) -> bytes:
    """A delivery status notification as Postfix writes it: the failed recipient, and the
    headers of the mail that bounced (with its Message-ID) when `quoted_id` is given."""
    quoted = (
        b"--r\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        b"From: service@shop.test\r\nTo: " + recipient.encode() + b"\r\n"
        b"Message-ID: " + quoted_id.encode() + b"\r\n\r\n"
        if quoted_id
        else b""
    )
    return (
        b"From: MAILER-DAEMON@mx.shop.test\r\nTo: service@shop.test\r\n"
        b"Subject: Undelivered Mail\r\nMessage-ID: <dsn-" + str(n).encode() + b"@mx.shop.test>\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="r"\r\n\r\n'
        b"--r\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
        b"--r\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.shop.test\r\n\r\n"
        b"Final-Recipient: rfc822; " + recipient.encode() + b"\r\nAction: failed\r\n"
        b"Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n"
        + quoted
        + b"--r--\r\n"
    )


async def reachable(box: Mailbox, address: str) -> tuple[bool, int]:
    """(the identity is reachable, bounce touchpoints in the history)."""
    async with box.rt.sessions() as s:
        identity = await queries.get_identity(s, "email", address)
        assert identity is not None
        bounces = await s.scalar(
            select(func.count(Touchpoint.id)).where(Touchpoint.kind == "bounce")
        )
        return identity.reachable, int(bounces or 0)


async def test_bounce_flags_the_address(box: Mailbox) -> None:
    sent = await box.round(
        mail("Hello", sender="gone@example.net", subject="Hi", message_id="<g1@x.net>")
    )
    assert await box.round(dsn("gone@example.net", str(sent[-1]["Message-ID"]))) == []
    async with box.rt.sessions() as s:
        identity = await queries.get_identity(s, "email", "gone@example.net")
        assert identity is not None and identity.reachable is False
        assert "5.1.1" in (identity.unreachable_reason or "")


async def test_a_forged_bounce_marks_nobody_unreachable(box: Mailbox) -> None:
    """Issue 15, finding 4: a multipart/report naming the victim set reachable=False
    although the Message-ID it quotes was never sent by us. Now a bounce counts only for
    the recipient of a mail we sent: not for a made-up id, not for an id of ours that went
    to someone else (the attacker's own answer), not without any id."""
    await box.round(mail("Hallo", sender="victim@example.net", message_id="<v1@x.net>"))
    theirs = await box.round(
        mail("Hi", sender="attacker@example.org", subject="Hi", message_id="<a1@x.org>")
    )
    forged = [
        dsn("victim@example.net", "<cicbot.1.deadbeefdeadbeefdead@shop.test>", n=1),
        dsn("victim@example.net", str(theirs[-1]["Message-ID"]), n=2),
        dsn("victim@example.net", None, n=3),
    ]
    for raw in forged:
        assert await box.round(raw) == []
    assert await reachable(box, "victim@example.net") == (True, 0)
    assert (await reachable(box, "attacker@example.org"))[0] is True


async def test_automatic_mail_is_logged_without_its_header_values(
    box: Mailbox, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15, finding 14: the Auto-Submitted reason was logged as the sender wrote it
    (with the Message-ID): the log says that a mail was automatic, not what it said."""
    caplog.set_level("DEBUG", logger="channels")
    secret = "SECRETVALUE<script>"
    auto = mail(
        "Out of office",
        sender="mailer-daemon-SECRETVALUE@example.com",
        message_id="<SECRETVALUE-1@example.com>",
        headers={"Auto-Submitted": f"auto-replied; {secret}"},
    )
    daemon = mail("x", sender="mailer-daemonSECRETVALUE@example.com", message_id="<SECRETVALUE@e>")
    assert await box.round(auto) == [] and await box.round(daemon) == []
    logged = [r.getMessage() for r in caplog.records]
    assert any("automatic mail is not answered" in m for m in logged), logged
    assert not [m for m in logged if "SECRETVALUE" in m]


async def test_one_click_unsubscribe(box: Mailbox) -> None:
    await box.round(mail("Hello", sender=BOB, subject="Hi", message_id="<u1@example.com>"))
    async with box.rt.sessions() as s:
        identity = (await s.execute(select(Identity))).scalar_one()
        contact_id = identity.contact_id
    token = channel(box.rt).unsubscribe_token(contact_id)
    transport = httpx.ASGITransport(app=create_app(box.rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:
        page = await client.get(f"/unsubscribe/{token}")  # a link scanner
        assert page.status_code == 200 and 'method="post"' in page.text
        async with box.rt.sessions() as s:
            assert (await s.execute(select(func.count(Consent.id)))).scalar_one() == 0
        assert (await client.post(f"/unsubscribe/{contact_id}.forged")).status_code == 404
        assert (
            await client.post(f"/unsubscribe/{contact_id + 1}.{token.split('.')[1]}")
        ).status_code == 404
        done = await client.post(
            f"/unsubscribe/{token}",
            content="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert done.status_code == 200
    async with box.rt.sessions() as s:
        consent = (await s.execute(select(Consent))).scalar_one()
        assert (consent.contact_id, consent.purpose, consent.granted) == (
            contact_id,
            "marketing",
            False,
        )
        assert not await queries.consent_granted(s, contact_id, "marketing")


async def test_mailto_unsubscribe(box: Mailbox) -> None:
    await box.round(mail("Hello", sender=BOB, subject="Hi", message_id="<mu1@example.com>"))
    async with box.rt.sessions() as s:
        contact_id = (await s.execute(select(Identity))).scalar_one().contact_id
    token = channel(box.rt).unsubscribe_token(contact_id)
    sent = await box.round(
        mail("", sender=BOB, subject=f"unsubscribe {token}", message_id="<mu2@example.com>")
    )
    assert sent == []  # no answer to the unsubscribe mail
    async with box.rt.sessions() as s:
        assert not await queries.consent_granted(s, contact_id, "marketing")
        consent = (await s.execute(select(Consent))).scalar_one()
        assert consent.granted is False and consent.channel == "email"


async def test_a_reply_with_nothing_new_keeps_the_whole_text(box: Mailbox) -> None:
    """A reply whose new words cannot be told from the quote used to reach the flows as ""
    and the customer heard "I didn't receive any text". Now the whole text goes on: in the
    history for the agent, and to the flows."""
    question = (await box.round(mail("Hallo", sender=BOB, message_id="<n0@example.com>")))[-1]
    body = "On Mon, Nov 16, 2026 at 10:00 AM Beispiel Service <service@shop.test> wrote:\n"
    body += "> Ich habe eine Frage zu meiner Rechnung 4711\n"
    raw = mail(
        body,
        sender=BOB,
        subject="Re: " + str(question["Subject"]),
        message_id="<n1@example.com>",
        in_reply_to=str(question["Message-ID"]),
    )
    sent = await box.round(raw)
    assert sent and all(
        "didn't receive any text" not in m.get_body(("plain",)).get_content() for m in sent
    )  # type: ignore[union-attr]
    assert all("keinen Text erhalten" not in m.get_body(("plain",)).get_content() for m in sent)  # type: ignore[union-attr]
    async with box.rt.sessions() as s:
        text = await s.scalar(
            select(Touchpoint.text).where(Touchpoint.platform_message_id == "<n1@example.com>")
        )
    assert text is not None and "Rechnung 4711" in text
