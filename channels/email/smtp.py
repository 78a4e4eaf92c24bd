"""Outbound mail: compose (text + HTML, our Message-ID, threading headers, RFC 3834
`Auto-Submitted`) and send through one reused SMTP connection (aiosmtplib).

Errors for the dispatcher: a 4xx reply, a dropped connection or a timeout is transient
(the dispatcher retries with backoff); a 5xx reply to the recipient is permanent (the
address is flagged unreachable). A 5xx to our own login or sender is a configuration
error and stays transient, so an operator can fix it without losing mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import aiosmtplib

from bot.channel import PermanentSendError, TransientSendError
from bot.channel.messages import Choice
from channels.email.settings import EmailSmtpSettings
from channels.email.tls import tls_context

log = logging.getLogger(__name__)

CHOICE_HINT = {
    "de": "Antworten Sie einfach mit der Nummer oder dem Text einer Option.",
    "en": "Just reply with the number or the text of an option.",
}


def render_text(text: str, choices: Sequence[Choice], locale: str) -> str:
    if not choices:
        return text
    lines = [f"{i}. {c.label}" for i, c in enumerate(choices, 1)]
    hint = CHOICE_HINT.get(locale[:2], CHOICE_HINT["en"])
    return f"{text}\n\n" + "\n".join(lines) + f"\n\n{hint}"


def render_html(text: str, choices: Sequence[Choice], locale: str) -> str:
    """Customer text only ever goes in escaped."""
    paragraphs = "".join(
        "<p>" + html.escape(p).replace("\n", "<br>") + "</p>" for p in text.split("\n\n") if p
    )
    if choices:
        items = "".join(f"<li>{html.escape(c.label)}</li>" for c in choices)
        hint = html.escape(CHOICE_HINT.get(locale[:2], CHOICE_HINT["en"]))
        paragraphs += f"<ol>{items}</ol><p><small>{hint}</small></p>"
    lang = html.escape(locale[:2])
    return f'<!DOCTYPE html><html lang="{lang}"><body>{paragraphs}</body></html>'


def compose(
    *,
    sender: str,
    sender_name: str | None,
    recipient: str,
    subject: str,
    text: str,
    choices: Sequence[Choice] = (),
    locale: str = "en",
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    auto_submitted: str = "auto-replied",
    extra_headers: dict[str, str] | None = None,
) -> EmailMessage:
    msg = EmailMessage()
    local, _, domain = sender.partition("@")
    msg["From"] = Address(sender_name or "", local, domain)
    msg["To"] = recipient
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = message_id or make_msgid(domain=domain)
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = " ".join(references)
    msg["Auto-Submitted"] = auto_submitted  # RFC 3834: other bots do not answer us
    msg["X-Auto-Response-Suppress"] = "All"  # Exchange: no out-of-office replies to us
    msg["Content-Language"] = locale[:2]
    for name, value in (extra_headers or {}).items():
        msg[name] = value
    msg.set_content(render_text(text, choices, locale))
    msg.add_alternative(render_html(text, choices, locale), subtype="html")
    return msg


class SmtpSender:
    """One SMTP connection, opened on demand, reused while mail keeps coming, closed after
    `idle_close_seconds` without mail."""

    def __init__(self, settings: EmailSmtpSettings, password: str | None) -> None:
        self.settings = settings
        self._password = password
        self._client: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()
        self._closer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Future[None] | None = None  # keeps the idle close referenced
        self.connections = 0  # opened so far (tests)
        tls = settings.ssl or settings.starttls
        self._tls = (
            tls_context(settings.ca_file, settings.verify_certificate, what="SMTP") if tls else None
        )

    def _port(self) -> int:
        s = self.settings
        return s.port or (465 if s.ssl else 587 if s.starttls else 25)

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        assert s.host is not None
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=self._port(),
            use_tls=s.ssl,
            start_tls=(s.starttls and not s.ssl) or False,
            timeout=s.timeout_seconds,
            tls_context=self._tls,
        )
        await client.connect()
        if s.username and self._password is not None:
            await client.login(s.username, self._password)
        self.connections += 1
        return client

    async def send(self, msg: EmailMessage, recipient: str, sender: str) -> None:
        async with self._lock:
            if self._closer:
                self._closer.cancel()
            try:
                for attempt in (1, 2):
                    if self._client is None or not self._client.is_connected:
                        self._client = await self._connect()
                    try:
                        errors, _ = await self._client.send_message(
                            msg, sender=sender, recipients=[recipient]
                        )
                        break
                    except aiosmtplib.SMTPServerDisconnected:
                        self._client = None  # the server closed an idle connection
                        if attempt == 2:
                            raise
                if errors:  # aiosmtplib raises when every recipient fails; belt and braces
                    code, text = next(iter(errors.values()))
                    raise aiosmtplib.SMTPRecipientRefused(code, text, recipient)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                await self._reset()
                first = exc.recipients[0] if exc.recipients else None
                _raise_for(first.code if first else 450, str(exc), recipient_error=True)
            except aiosmtplib.SMTPRecipientRefused as exc:
                await self._reset()
                _raise_for(exc.code, str(exc), recipient_error=True)
            except aiosmtplib.SMTPResponseException as exc:
                await self._reset()
                _raise_for(exc.code, str(exc), recipient_error=_is_data_error(exc))
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                await self._drop()
                raise TransientSendError(f"smtp: {type(exc).__name__}: {exc}") from exc
            finally:
                loop = asyncio.get_running_loop()
                self._closer = loop.call_later(self.settings.idle_close_seconds, self._close_idle)

    def _close_idle(self) -> None:
        self._closing = asyncio.ensure_future(self.aclose())

    async def _reset(self) -> None:
        if self._client is not None and self._client.is_connected:
            try:
                await self._client.rset()
            except Exception:
                await self._drop()

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.is_connected:
            with contextlib.suppress(Exception):
                await client.quit()

    async def aclose(self) -> None:
        if self._closer:
            self._closer.cancel()
        async with self._lock:
            await self.close()


def _is_data_error(exc: aiosmtplib.SMTPResponseException) -> bool:
    return isinstance(exc, aiosmtplib.SMTPDataError)


def _raise_for(code: int, text: str, *, recipient_error: bool) -> None:
    if 500 <= code < 600 and recipient_error:
        raise PermanentSendError(f"smtp {code}: {text}"[:500])
    raise TransientSendError(f"smtp {code}: {text}"[:500])
