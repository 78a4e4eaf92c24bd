"""A forged From: takes over nothing (issue 15, finding 1). Anyone can write any From:; an
email sender counts as verified only with dmarc=pass in the Authentication-Results of a
configured, trusted receiving server. Otherwise no case details, no opt-in, and linking is
never started from email at all. Through Dovecot and aiosmtpd on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from email.message import EmailMessage

import pytest
from sqlalchemy import func, select

from storage import queries
from storage.models import Case, Consent, IdentityLinkCode, Touchpoint, utcnow
from tests.channels.email_helpers import (  # noqa: F401
    Dovecot,
    SmtpSink,
    dovecot_fixture,
    mail,
    smtp_sink_fixture,
    tls_cert_fixture,
)
from tests.channels.test_email_flow import Mailbox

VICTIM = "Vera Opfer <vera@example.net>"
ATTACKER = "mallory@evil.example"
TRUSTED = "mx.shop.test"


def vouched(result: str = "pass", authserv_id: str = TRUSTED) -> dict[str, str]:
    """What the receiving server writes on top of a mail it checked (RFC 8601)."""
    return {
        "Authentication-Results": f"{authserv_id}; spf=pass smtp.mailfrom=example.net; "
        f"dkim=pass header.d=example.net; dmarc={result} (p=reject) header.from=example.net"
    }


@pytest.fixture
async def box(db_url: str, smtp_sink: SmtpSink, dovecot: Dovecot) -> AsyncIterator[Mailbox]:
    folder = "v" + uuid.uuid4().hex[:10]
    imap = await dovecot.client()
    await imap.create(folder)
    await imap.logout()
    b = Mailbox(db_url, smtp_sink, dovecot, folder, trusted_authserv_ids=[TRUSTED])
    yield b
    await b.rt.stop()


def text(msg: EmailMessage) -> str:
    return msg.get_body(("plain",)).get_content()  # type: ignore[union-attr,no-any-return]


async def victims_case(box: Mailbox) -> str:
    """Vera wrote to us before; she has an open case."""
    await box.round(mail("Hallo", sender=VICTIM, subject="Frage", message_id="<v0@example.net>"))
    async with box.rt.sessions() as s, s.begin():
        identity = await queries.get_identity(s, "email", "vera@example.net")
        assert identity is not None
        case = await queries.create_case(
            s,
            Case(
                contact_id=identity.contact_id,
                category="billing",
                description="Doppelt abgebucht",
                severity="normal",
                created_at=utcnow(),
                updated_at=utcnow(),
            ),
        )
        assert case.reference is not None
        return case.reference


async def test_forged_mails_take_over_nothing(box: Mailbox) -> None:
    """The attack of the finding: mails claiming to be Vera, each answering the previous
    forged one to stay in one conversation, ask to link the attacker's address, then for
    the case status and marketing opt-in. Before: the code went to the attacker, the link
    was made, and `status` from the attacker's address showed Vera's cases."""
    reference = await victims_case(box)
    forged = [
        "link my email",
        ATTACKER,
        "status",
        f"status {reference}",
        "Wie ist der Stand bei " + reference + "?",
        "start",
        "ja",
    ]
    replies: list[EmailMessage] = []
    previous: str | None = None
    for n, body in enumerate(forged):
        mid = f"<forged{n}@evil.example>"
        raw = mail(body, sender=VICTIM, subject="Konto", message_id=mid, in_reply_to=previous)
        replies += await box.round(raw)
        previous = mid
    assert replies and all(m["To"] == "vera@example.net" for m in replies)
    said = "\n".join(text(m) for m in replies)
    assert reference not in said and "Doppelt" not in said
    assert "nur aus einem Chat verknüpfen" in said or "only be linked from a chat" in said
    assert "Falldetails kann ich per E-Mail nicht zeigen" in said or "case details" in said
    async with box.rt.sessions() as s:
        assert await s.scalar(select(func.count(IdentityLinkCode.id))) == 0
        assert await queries.get_identity(s, "email", ATTACKER) is None
        granted = await s.scalar(select(func.count(Consent.id)).where(Consent.granted))
        assert granted == 0
        # agents see that these mails were not vouched for
        payloads = (
            await s.execute(
                select(Touchpoint.payload).where(Touchpoint.platform_message_id.like("<forged%"))
            )
        ).scalars()
        assert all(p.get("sender_verified") is False for p in payloads)


async def test_stop_works_for_anyone(box: Mailbox) -> None:
    """Opting out is never refused: "stop" must always work, whoever sends it."""
    await box.round(mail("stop", sender=VICTIM, message_id="<stop@example.net>"))
    async with box.rt.sessions() as s:
        rows = (await s.execute(select(Consent.granted))).scalars().all()
        assert rows == [False]


async def test_a_vouched_sender_sees_their_case_but_still_links_only_from_a_chat(
    box: Mailbox,
) -> None:
    reference = await victims_case(box)
    sent = await box.round(
        mail("status", sender=VICTIM, message_id="<s1@example.net>", headers=vouched())
    )
    assert reference in text(sent[-1])
    sent = await box.round(
        mail("link my email", sender=VICTIM, message_id="<s2@example.net>", headers=vouched())
    )
    assert "Chat" in text(sent[-1])
    async with box.rt.sessions() as s:
        assert await s.scalar(select(func.count(IdentityLinkCode.id))) == 0


@pytest.mark.parametrize(
    "headers",
    [
        vouched("fail"),
        vouched("pass", authserv_id="mx.evil.example"),  # a server we do not trust
        {},  # nothing at all
    ],
    ids=["dmarc-fail", "untrusted-server", "none"],
)
async def test_without_a_trusted_pass_no_case_details(
    box: Mailbox, headers: dict[str, str]
) -> None:
    reference = await victims_case(box)
    sent = await box.round(
        mail(f"status {reference}", sender=VICTIM, message_id="<n1@example.net>", headers=headers)
    )
    assert reference not in text(sent[-1])
