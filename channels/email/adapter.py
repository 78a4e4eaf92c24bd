"""The email channel: IMAP in, SMTP out, threads by Message-ID (docs/email.md).

Inbound: `email_imap.ImapPoller` fetches each new mail and hands its bytes to `accept`,
which persists it in the inbox (deduped on the Message-ID, or a hash of the headers
where it is missing; partitioned by sender, so one customer's mails are handled in
order). The inbox worker calls `parse`: a delivery status notification becomes a
`ChannelEvent` (a permanent failure flags the address unreachable); an automatic mail
(RFC 3834 and friends) is kept but never answered; a person's mail is threaded and
handed to the engine with its quoted history and signature stripped.

Threading (`Threads.resolve`), only ever within the sender's own address / contact:
1. In-Reply-To / References naming a mail of a thread with this address;
2. a case reference `[C-2026-000042]` in the subject of a case of this contact;
3. otherwise a new thread (a new subject without references is a new conversation).

Outbound: every mail gets our own Message-ID (recorded before it is sent), In-Reply-To
and References from the thread, "Re: <first subject> [case reference]", a text part
with choices as a numbered list, an HTML part, and `Auto-Submitted: auto-replied`.

Unsubscribe (`/unsubscribe/{token}`, RFC 8058): GET only shows a page with a button
(link scanners must not unsubscribe anyone); POST withdraws marketing consent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import logging
import re
import uuid
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from bot.channel import ChannelAdapter, SendResult
from bot.channel.host import ChannelHost
from bot.channel.inbound import Parsed, ParseError
from bot.channel.messages import Attachment, ChannelEvent, InboundMessage, OutboundMessage
from bot.channel.records import MessageRef, Records
from channels.email.imap import ImapPoller
from channels.email.parse import Limits, ParsedMail, mail_key, parse_mail, summary
from channels.email.settings import EmailSettings
from channels.email.smtp import SmtpSender, compose

log = logging.getLogger(__name__)
CHANNEL = "email"
REPLY_PREFIX = re.compile(r"^\s*((re|aw|fw|fwd|wg|sv|antw)\s*:\s*)+", re.I)
CONSENT_PURPOSE = "marketing"
MAILTO_UNSUBSCRIBE = re.compile(r"^\s*unsubscribe\s+(\d{1,18}\.[A-Za-z0-9_=-]{8,64})\s*$", re.I)


IN, OUT = "in", "out"


class Threads:
    """The Message-ID ↔ thread map: the rules here, the rows kept by the core."""

    def __init__(self, records: Records) -> None:
        self.records = records

    async def record(
        self, message_id: str, thread_key: str, address: str, direction: str, subject: str | None
    ) -> None:
        await self.records.record(message_id, thread_key, address, direction, subject)

    async def resolve(self, mail: ParsedMail) -> str:
        sender = mail.from_address
        own = await self.records.find([mail.message_id], address=sender)
        if own is not None:  # handled before (a retry): the same thread again
            return own.thread_key
        ids = [*mail.in_reply_to, *reversed(mail.references)]
        if ids:
            row = await self.records.find(ids, address=sender)
            if row is not None:
                return row.thread_key
        if mail.case_reference:
            key = await self.records.case_thread(CHANNEL, mail.case_reference, sender)
            if key is not None:
                return key
        basis = f"{sender}\0{mail.message_id}".encode()
        return "m:" + hashlib.sha256(basis).hexdigest()[:40]

    async def sent(self, message_id: str) -> MessageRef | None:
        """Our own outgoing mail with this Message-ID, if we sent one."""
        return await self.records.sent(message_id)

    async def of_thread(self, thread_key: str) -> list[MessageRef]:
        return await self.records.of_thread(thread_key)


class EmailChannel(ChannelAdapter):
    name = CHANNEL

    def __init__(self, host: ChannelHost, settings: EmailSettings) -> None:
        super().__init__(host)
        assert settings.address is not None
        self.settings = settings
        self.address = settings.address.lower()
        self.domain = self.address.split("@", 1)[1]
        self.display_name = settings.display_name or host.company_name
        smtp_pw = settings.smtp.password.get_secret_value() if settings.smtp.password else None
        imap_pw = settings.imap.password.get_secret_value() if settings.imap.password else None
        self.smtp = SmtpSender(settings.smtp, smtp_pw)
        self.trusted = frozenset(i.lower() for i in settings.trusted_authserv_ids)
        self.limits = Limits(
            header_bytes=settings.max_header_bytes,
            header_line_bytes=settings.max_header_line_bytes,
            attachment_bytes=settings.max_attachment_bytes,
        )
        self.threads = Threads(host.records)
        self.poller: ImapPoller | None = None
        if settings.imap.host:
            self.poller = ImapPoller(settings.imap, imap_pw, host.records, self.accept)
        host.register_parser(CHANNEL, self.parse)  # the inbox also paces a flooding sender
        self._secret = (
            settings.unsubscribe_secret.get_secret_value().encode()
            if settings.unsubscribe_secret
            else None
        )
        self._router = APIRouter()
        self._router.add_api_route(
            "/unsubscribe/{token}", self.unsubscribe_page, methods=["GET"], include_in_schema=False
        )
        self._router.add_api_route(
            "/unsubscribe/{token}", self.unsubscribe, methods=["POST"], include_in_schema=False
        )
        host.add_routes(self._router)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.poller is not None:
            self._task = asyncio.create_task(self.poller.run(), name="email-imap")
            log.info("email channel started: IMAP %s", self.poller.mailbox)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.poller is not None:
            await self.poller.close()
        await self.smtp.aclose()

    # ---- inbound -----------------------------------------------------------------------

    async def accept(self, raw: bytes) -> bool:
        """Persist one fetched mail in the inbox; False if it was there already. Takes any
        bytes: nothing is parsed here that could fail, so no mail can stop the mailbox."""
        message_id, sender = mail_key(raw, self.limits)
        payload: dict[str, Any] = {"mailbox": self.poller.mailbox if self.poller else None}
        if len(raw) > self.settings.max_message_bytes:
            head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
            payload.update(raw=base64.b64encode(head + b"\r\n\r\n").decode(), truncated=len(raw))
        else:
            payload["raw"] = base64.b64encode(raw).decode()
        return await self.host.accept(CHANNEL, message_id, sender, payload)

    async def parse(self, payload: dict[str, Any]) -> Parsed:
        """What the inbox worker calls. A mail that cannot be read raises: the inbox parks
        it (its raw bytes stay in the inbox row) as a dead letter with the error."""
        raw = base64.b64decode(payload["raw"])
        # off the event loop: even bounded, a big mail takes a while to parse
        mail = await asyncio.to_thread(
            parse_mail, raw, limits=self.limits, trusted_authserv_ids=self.trusted
        )
        if mail.bounce is not None:
            if mail.bounce.original_message_id is None:
                log.info("email: a bounce quoting no message of ours is ignored")
                return []

            async def bounced() -> list[ChannelEvent]:
                return await self._bounce(mail)

            return [bounced]
        if mail.auto is not None:
            # the fact, not the header's value: whoever sent the mail chose that
            log.info("email: an automatic mail is not answered (%s)", mail.auto)
            return []
        if "@" not in mail.from_address:
            raise ParseError("the mail has no sender address that could be answered")
        if mail.from_address == self.address:
            return []  # our own mail (a copy, a loop)
        m = MAILTO_UNSUBSCRIBE.match(mail.subject)
        if m and self._contact_of(m.group(1)) is not None:
            contact_id = self._contact_of(m.group(1))
            assert contact_id is not None

            async def withdraw() -> None:
                await self._withdraw_consent(contact_id, "mailto")
                return None

            return [withdraw]

        async def deliver() -> list[InboundMessage]:
            return [await self._deliver(mail, bool(payload.get("truncated")))]

        return [deliver]

    async def _deliver(self, mail: ParsedMail, truncated: bool) -> InboundMessage:
        """The mail as a message for the engine, its thread resolved and recorded."""
        thread_key = await self.threads.resolve(mail)
        await self.threads.record(mail.message_id, thread_key, mail.from_address, IN, mail.subject)
        raw = summary(mail)
        if truncated:
            raw["truncated"] = True
        # linking starts only from a chat, and an unverified sender gets nothing that
        # reveals or changes account data (flows/trust.py): the flows decide on this flag
        # nothing new found (a reply written inside the quote, a client we do not know):
        # the whole text, so that it reaches a person rather than "you sent nothing"
        text = mail.reply or mail.text.strip()
        if not text and not mail.attachments and not mail.in_reply_to:
            text = mail.subject  # a mail that is all subject
        return InboundMessage(
            channel=CHANNEL,
            sender_id=mail.from_address,
            platform_message_id=mail.message_id[:200],
            thread_key=thread_key,
            text=text,
            attachments=tuple(
                Attachment(
                    kind="document",
                    name=a.name,
                    mime_type=a.mime_type,
                    size=a.size,
                    extra={"over_cap": True} if a.over_cap else {},
                )
                for a in mail.attachments
            ),
            sender_name=mail.from_name,
            locale_hint=mail.language,
            raw=raw,
            contact_updates={"email": mail.from_address},
            verified=mail.verified,
        )

    async def _bounce(self, mail: ParsedMail) -> list[ChannelEvent]:
        """A bounce counts only for a recipient of a message we sent: its Message-ID in our
        records, sent to that address. Anyone can mail a DSN naming anyone."""
        b = mail.bounce
        assert b is not None and b.original_message_id is not None
        ours = await self.threads.sent(b.original_message_id)
        recipients = [r for r in b.recipients if ours is not None and r == ours.address]
        if not recipients:
            log.info("email: a bounce of no message we sent to its recipient is ignored")
            return []
        return [
            ChannelEvent(
                channel=CHANNEL,
                sender_id=rcpt,
                kind="bounce",
                platform_event_id=f"{mail.message_id}:{rcpt}"[:200],
                reachable=False if b.permanent else None,
                reason=f"{b.status} {b.diagnostic}".strip()[:500],
                payload={"original_message_id": b.original_message_id},
            )
            for rcpt in recipients
        ]

    # ---- outbound ----------------------------------------------------------------------

    def new_message_id(self, message: OutboundMessage) -> str:
        """Unguessable, so nobody can claim one of our ids before we send it."""
        return f"<cicbot.{message.outbox_id or 0}.{uuid.uuid4().hex[:20]}@{self.domain}>"

    async def send(
        self, message: OutboundMessage, extra_headers: dict[str, str] | None = None
    ) -> SendResult:
        refs = await self.threads.of_thread(message.thread_key)
        ids = [r.message_id for r in refs]
        ours = self.new_message_id(message)
        if message.reply_to and message.reply_to in ids:
            in_reply_to: str | None = message.reply_to
        else:
            inbound = [r for r in refs if r.direction == IN]
            in_reply_to = inbound[-1].message_id if inbound else (ids[-1] if ids else None)
        if message.campaign is not None and message.contact_id is not None:
            # campaign mail: one-click unsubscribe (RFC 8058) besides the how-to-stop text
            extra_headers = {**self.campaign_headers(message.contact_id), **(extra_headers or {})}
        subject = await self._subject(message, refs)
        await self.threads.record(
            ours, message.thread_key, message.recipient_id.lower(), OUT, subject
        )
        mail = compose(
            sender=self.address,
            sender_name=self.display_name,
            recipient=message.recipient_id,
            subject=subject,
            text=message.text,
            choices=message.choices,
            locale=message.locale,
            message_id=ours,
            in_reply_to=in_reply_to,
            references=[i for i in ids if i != ours][-20:],
            extra_headers=extra_headers,
            # RFC 3834: a campaign's first mail answers nothing, it is auto-generated
            auto_submitted="auto-generated" if message.campaign else "auto-replied",
        )
        await self.smtp.send(mail, message.recipient_id, self.address)
        return SendResult(platform_message_id=ours)

    async def _subject(self, message: OutboundMessage, refs: list[MessageRef]) -> str:
        first = next((r.subject for r in refs if r.subject), None)
        base = REPLY_PREFIX.sub("", first).strip() if first else self.display_name
        subject = f"Re: {base}" if first else base
        reference = None
        if message.conversation_id is not None:
            reference = await self.host.records.case_reference(message.conversation_id)
        if reference and f"[{reference}]" not in subject:
            subject = f"{subject} [{reference}]"
        return subject[:900]

    # ---- unsubscribe (RFC 8058) --------------------------------------------------------

    def unsubscribe_token(self, contact_id: int) -> str:
        if self._secret is None:
            raise RuntimeError("email.unsubscribe_secret is not set")
        mac = hmac.new(self._secret, f"unsubscribe:{contact_id}".encode(), hashlib.sha256)
        sig = base64.urlsafe_b64encode(mac.digest()[:18]).decode()
        return f"{contact_id}.{sig}"

    def _contact_of(self, token: str) -> int | None:
        head, _, _sig = token.partition(".")
        if self._secret is None or not head.isdigit() or len(head) > 18:
            return None
        expected = self.unsubscribe_token(int(head))
        return int(head) if hmac.compare_digest(expected.encode(), token.encode()) else None

    def campaign_headers(self, contact_id: int) -> dict[str, str]:
        """List-Unsubscribe (https and mailto) and One-Click for campaign mail."""
        token = self.unsubscribe_token(contact_id)
        base = (self.settings.public_url or "").rstrip("/")
        mailto = f"mailto:{self.address}?subject={quote('unsubscribe ' + token)}"
        links = [f"<{base}/unsubscribe/{token}>"] if base else []
        return {
            "List-Unsubscribe": ", ".join([*links, f"<{mailto}>"]),
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }

    async def _withdraw_consent(self, contact_id: int, via: str) -> bool:
        """Marketing consent withdrawn, written by the core (with its touchpoint)."""
        return await self.host.withdraw_consent(contact_id, CHANNEL, via)

    async def unsubscribe_page(self, token: str) -> HTMLResponse:
        if self._contact_of(token) is None:
            return HTMLResponse(_page("Link not valid", "<p>This link is not valid.</p>"), 404)
        form = (
            "<p>Do you want to stop receiving our newsletters and campaign mail?</p>"
            f'<form method="post" action="/unsubscribe/{html.escape(token)}">'
            '<button type="submit">Unsubscribe</button></form>'
        )
        return HTMLResponse(_page("Unsubscribe", form))

    async def unsubscribe(self, token: str) -> HTMLResponse:
        contact_id = self._contact_of(token)
        if contact_id is None:
            return HTMLResponse(_page("Link not valid", "<p>This link is not valid.</p>"), 404)
        if not await self._withdraw_consent(contact_id, "one-click"):
            return HTMLResponse(_page("Link not valid", "<p>This link is not valid.</p>"), 404)
        return HTMLResponse(_page("Unsubscribed", "<p>You will receive no more campaign mail.</p>"))


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title>'
        '<meta name="robots" content="noindex"></head>'
        f"<body><h1>{title}</h1>{body}</body></html>"
    )


def create(host: ChannelHost) -> EmailChannel | None:
    settings = host.settings_of(CHANNEL, EmailSettings)
    if not settings.enabled:
        return None
    return EmailChannel(host, settings)
