"""Outbound mail through a real SMTP server (aiosmtpd): headers, parts, choices, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.channel import PermanentSendError, TransientSendError
from bot.channel.messages import Choice, OutboundMessage
from bot.runtime import Runtime
from channels.email.adapter import EmailChannel
from tests.channels.email.helpers import (  # noqa: F401
    SmtpSink,
    TlsFiles,
    email_settings,
    smtp_sink_fixture,
    tls_cert_fixture,
    tls_sink,
)


@pytest.fixture
async def rt(sqlite_url: str, smtp_sink: SmtpSink) -> AsyncIterator[Runtime]:
    runtime = Runtime(email_settings(sqlite_url, smtp_sink), channels=["email"])
    await runtime.start(dispatch=False)
    yield runtime
    await runtime.stop()


def ch(rt: Runtime) -> EmailChannel:
    c = rt.channels["email"]
    assert isinstance(c, EmailChannel)
    return c


def out(
    text: str, *, to: str = "anna@example.org", thread: str = "t1", **kw: object
) -> OutboundMessage:
    return OutboundMessage(channel="email", recipient_id=to, thread_key=thread, text=text, **kw)  # type: ignore[arg-type]


async def test_mail_has_our_id_text_html_and_auto_submitted(
    rt: Runtime, smtp_sink: SmtpSink
) -> None:
    choices = (Choice("delivery", "Lieferung"), Choice("product", "Produktmangel <b>"))
    result = await ch(rt).send(out("Worum geht es?", choices=choices, locale="de", outbox_id=7))
    ((envelope, msg),) = smtp_sink.messages
    assert envelope.mail_from == "service@shop.test" and envelope.rcpt_tos == ["anna@example.org"]
    assert msg["Message-ID"] == result.platform_message_id
    assert result.platform_message_id.endswith("@shop.test>")
    assert msg["Auto-Submitted"] == "auto-replied"
    assert "Beispiel Service" in str(msg["From"])
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "1. Lieferung\n2. Produktmangel <b>" in text
    html = msg.get_body(("html",)).get_content()
    assert "<li>Produktmangel &lt;b&gt;</li>" in html


async def test_reply_threads_under_the_customer_mail(rt: Runtime, smtp_sink: SmtpSink) -> None:
    c = ch(rt)
    await c.threads.record("<first@example.org>", "t1", "anna@example.org", "in", "Paket kaputt")
    await c.threads.record("<second@example.org>", "t1", "anna@example.org", "in", "Re: Paket")
    await c.send(out("Danke", outbox_id=1))
    msg = smtp_sink.parsed()[0]
    assert msg["In-Reply-To"] == "<second@example.org>"
    assert msg["References"] == "<first@example.org> <second@example.org>"
    assert msg["Subject"] == "Re: Paket kaputt"
    await c.send(out("Noch etwas", outbox_id=2))
    second = smtp_sink.parsed()[1]
    assert str(msg["Message-ID"]) in second["References"]
    assert smtp_sink.sessions == 1  # one connection for the batch


async def test_4xx_is_transient_5xx_permanent(rt: Runtime, smtp_sink: SmtpSink) -> None:
    smtp_sink.refuse["busy@example.org"] = "451 4.3.0 try again later"
    smtp_sink.refuse["gone@example.org"] = "550 5.1.1 no such user"
    with pytest.raises(TransientSendError):
        await ch(rt).send(out("x", to="busy@example.org"))
    with pytest.raises(PermanentSendError):
        await ch(rt).send(out("x", to="gone@example.org"))
    await ch(rt).send(out("x", to="ok@example.org"))  # the connection is still good
    assert len(smtp_sink.messages) == 1


async def test_server_down_is_transient(sqlite_url: str, smtp_sink: SmtpSink) -> None:
    from tests.channels.email.helpers import free_port

    dead = SmtpSink("127.0.0.1", free_port())
    runtime = Runtime(email_settings(sqlite_url, dead), channels=["email"])
    try:
        with pytest.raises(TransientSendError):
            await ch(runtime).send(out("x"))
    finally:
        await runtime.stop()


async def test_campaign_headers(rt: Runtime) -> None:
    headers = ch(rt).campaign_headers(42)
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https, mailto = headers["List-Unsubscribe"].split(", ")
    assert https.startswith("<https://bot.shop.test/unsubscribe/42.")
    assert mailto.startswith("<mailto:service@shop.test?subject=unsubscribe%2042.")


async def test_dispatcher_flags_a_refused_address(sqlite_url: str, smtp_sink: SmtpSink) -> None:
    """A 5xx to the recipient: the outbox row fails and the identity is unreachable."""
    from storage import queries
    from tests.channels.email.helpers import mail

    smtp_sink.refuse["gone@example.org"] = "550 5.1.1 no such user"
    runtime = Runtime(email_settings(sqlite_url, smtp_sink), channels=["email"])
    try:
        channel = ch(runtime)
        await channel.accept(mail("Hello", sender="gone@example.org", message_id="<x1@e.org>"))
        await runtime.inbox.drain()
        await runtime.dispatcher.drain()
        async with runtime.sessions() as s:
            identity = await queries.get_identity(s, "email", "gone@example.org")
            assert identity is not None and identity.reachable is False
        assert smtp_sink.messages == []
    finally:
        await runtime.stop()


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "ssl"])
async def test_tls_and_login(sqlite_url: str, tls_cert: TlsFiles, implicit: bool) -> None:
    """STARTTLS (required by the server) or implicit TLS, verified against a private CA
    (`ca_file`), then AUTH (the server offers it only over TLS)."""
    from channels.email.settings import EmailSmtpSettings

    with tls_sink(tls_cert, implicit=implicit, user="bot", password="pw") as sink:
        smtp = EmailSmtpSettings(
            host=sink.host,
            port=sink.port,
            starttls=not implicit,
            ssl=implicit,
            username="bot",
            password="pw",
            ca_file=str(tls_cert.ca),
        )
        runtime = Runtime(email_settings(sqlite_url, sink, smtp=smtp), channels=["email"])
        try:
            await ch(runtime).send(out("secure"))
            assert len(sink.messages) == 1
        finally:
            await runtime.stop()


async def test_campaign_mail_carries_list_unsubscribe(rt: Runtime, smtp_sink: SmtpSink) -> None:
    """A campaign's outbox row says so; the email channel adds the one-click headers."""
    body = out("Wie zufrieden waren Sie?", campaign="csat", contact_id=42).to_json()
    assert body["campaign"] == "csat" and body["contact_id"] == 42
    message = OutboundMessage.from_row(
        channel="email", recipient_id="anna@example.org", thread_key="t9", body=body
    )
    await ch(rt).send(message)
    await ch(rt).send(out("Ihre Antwort", thread="t10"))  # an ordinary reply: no headers
    (_, campaign_mail), (_, reply) = smtp_sink.messages
    assert campaign_mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/unsubscribe/42." in campaign_mail["List-Unsubscribe"]
    assert campaign_mail["Auto-Submitted"] == "auto-generated"
    assert reply["List-Unsubscribe"] is None and reply["Auto-Submitted"] == "auto-replied"


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "ssl"])
async def test_an_unknown_certificate_is_refused(
    sqlite_url: str, tls_cert: TlsFiles, implicit: bool
) -> None:
    """Without the CA file the server's certificate is unknown: nothing is sent (and the
    password is not given away) unless verification is turned off for a test server."""
    from channels.email.settings import EmailSmtpSettings

    with tls_sink(tls_cert, implicit=implicit, user="bot", password="pw") as sink:
        for verify in (True, False):
            smtp = EmailSmtpSettings(
                host=sink.host,
                port=sink.port,
                starttls=not implicit,
                ssl=implicit,
                username="bot",
                password="pw",
                verify_certificate=verify,
            )
            runtime = Runtime(email_settings(sqlite_url, sink, smtp=smtp), channels=["email"])
            try:
                if verify:
                    with pytest.raises(TransientSendError, match="CERTIFICATE_VERIFY_FAILED"):
                        await ch(runtime).send(out("secure"))
                    assert sink.messages == []
                else:
                    await ch(runtime).send(out("insecure"))
                    assert len(sink.messages) == 1
            finally:
                await runtime.stop()
