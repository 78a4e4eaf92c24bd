"""Inbound mail from a real IMAP server (Dovecot): UID progress kept in the database and
checked against UIDVALIDITY, BODY.PEEK, \\Seen / move only after the commit, IDLE."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aioimaplib
import pytest
from sqlalchemy import func, select, update

from bot.runtime import Runtime
from channels.email.adapter import EmailChannel
from channels.email.imap import ImapError, ImapPoller
from storage.models import EmailMailbox, InboxUpdate
from tests.channels.email.helpers import (  # noqa: F401
    HOST,
    STARTTLS_HOST,
    Dovecot,
    SmtpSink,
    dovecot_fixture,
    email_settings,
    mail,
    smtp_sink_fixture,
    tls_cert_fixture,
)


@pytest.fixture
async def folder(dovecot: Dovecot) -> AsyncIterator[str]:
    name = "t" + uuid.uuid4().hex[:10]
    imap = await dovecot.client()
    assert (await imap.create(name)).result == "OK"
    await imap.logout()
    yield name


def runtime_for(url: str, sink: SmtpSink, server: Dovecot, folder: str, **kw: object) -> Runtime:
    return Runtime(email_settings(url, sink, server, folder=folder, **kw), channels=["email"])


def channel(rt: Runtime) -> EmailChannel:
    c = rt.channels["email"]
    assert isinstance(c, EmailChannel)
    return c


async def fetch_round(rt: Runtime) -> int:
    poller = channel(rt).poller
    assert poller is not None
    if poller.client is None:
        await poller.connect()
    return await poller.fetch_new()


@contextlib.asynccontextmanager
async def idling(
    url: str, sink: SmtpSink, server: Dovecot, folder: str, rounds: int = 1
) -> AsyncIterator[tuple[Runtime, ImapPoller]]:
    """A running bot whose poller has done `rounds` fetch rounds; polling would take a
    minute, so new mail comes through IDLE."""
    rt = runtime_for(url, sink, server, folder, imap_extra={"poll_interval_seconds": 60})
    await rt.start(dispatch=False)
    try:
        poller = channel(rt).poller
        assert poller is not None
        async with asyncio.timeout(10):
            while poller.rounds < rounds:
                await asyncio.sleep(0.02)
        yield rt, poller
    finally:
        await rt.stop()


async def mail_taken_in(rt: Runtime) -> None:
    async with asyncio.timeout(10):
        while not await inbox_keys(rt):
            await asyncio.sleep(0.05)


async def inbox_keys(rt: Runtime) -> list[str]:
    async with rt.sessions() as s:
        return list(
            (await s.execute(select(InboxUpdate.dedupe_key).order_by(InboxUpdate.id))).scalars()
        )


async def test_progress_survives_a_restart(
    sqlite_url: str,
    smtp_sink: SmtpSink,
    dovecot: Dovecot,
    folder: str,
) -> None:
    for i in range(3):
        await dovecot.append(mail(f"Mail {i}", message_id=f"<m{i}-{folder}@example.org>"), folder)
    rt = runtime_for(sqlite_url, smtp_sink, dovecot, folder)
    try:
        assert await fetch_round(rt) == 3
        assert await fetch_round(rt) == 0
    finally:
        await rt.stop()
    flags = await dovecot.flags(folder)
    assert all("\\Seen" in f for f in flags.values()) and len(flags) == 3
    await dovecot.append(mail("Mail 3", message_id=f"<m3-{folder}@example.org>"), folder)
    rt = runtime_for(sqlite_url, smtp_sink, dovecot, folder)  # a restart
    try:
        assert await fetch_round(rt) == 1
        keys = await inbox_keys(rt)
        assert keys == [f"<m{i}-{folder}@example.org>" for i in range(4)]
        async with rt.sessions() as s:
            row = await s.get(EmailMailbox, channel(rt).poller.mailbox)  # type: ignore[union-attr]
            assert row is not None and row.last_uid == 4
    finally:
        await rt.stop()


async def test_crash_before_marking_seen_neither_loses_nor_doubles(
    sqlite_url: str,
    smtp_sink: SmtpSink,
    dovecot: Dovecot,
    folder: str,
) -> None:
    await dovecot.append(mail("Hallo", message_id=f"<c-{folder}@example.org>"), folder)
    rt = runtime_for(sqlite_url, smtp_sink, dovecot, folder)
    poller = channel(rt).poller
    assert poller is not None

    async def crash(uid: int) -> None:
        raise ConnectionResetError("gone")

    poller._after_import = crash  # type: ignore[method-assign]
    try:
        with pytest.raises(ConnectionResetError):
            await fetch_round(rt)
    finally:
        await rt.stop()
    assert "\\Seen" not in (await dovecot.flags(folder))[1]  # BODY.PEEK: still unseen
    rt = runtime_for(sqlite_url, smtp_sink, dovecot, folder)
    try:
        assert await fetch_round(rt) == 1
        assert await inbox_keys(rt) == [f"<c-{folder}@example.org>"]  # once
    finally:
        await rt.stop()
    assert "\\Seen" in (await dovecot.flags(folder))[1]


async def test_changed_uidvalidity_reads_again_without_doubles(
    sqlite_url: str,
    smtp_sink: SmtpSink,
    dovecot: Dovecot,
    folder: str,
) -> None:
    await dovecot.append(mail("a", message_id=f"<u1-{folder}@example.org>"), folder)
    rt = runtime_for(sqlite_url, smtp_sink, dovecot, folder)
    try:
        await fetch_round(rt)
        async with rt.sessions() as s, s.begin():
            await s.execute(update(EmailMailbox).values(uidvalidity=1, last_uid=99))
        await dovecot.append(mail("b", message_id=f"<u2-{folder}@example.org>"), folder)
        assert await fetch_round(rt) == 2  # both fetched again...
        assert len(await inbox_keys(rt)) == 2  # ...but the first is not imported twice
        async with rt.sessions() as s:
            row = (await s.execute(select(EmailMailbox))).scalar_one()
            assert row.uidvalidity != 1 and row.last_uid == 2
    finally:
        await rt.stop()


async def test_move_to_processed_folder(
    sqlite_url: str,
    smtp_sink: SmtpSink,
    dovecot: Dovecot,
    folder: str,
) -> None:
    await dovecot.append(mail("a", message_id=f"<mv-{folder}@example.org>"), folder)
    done = folder + "-done"
    rt = runtime_for(
        sqlite_url,
        smtp_sink,
        dovecot,
        folder,
        imap_extra={"after_import": "move", "processed_folder": done},
    )
    try:
        assert await fetch_round(rt) == 1
    finally:
        await rt.stop()
    assert await dovecot.flags(folder) == {}
    assert len(await dovecot.flags(done)) == 1


async def test_idle_picks_up_new_mail(
    sqlite_url: str,
    smtp_sink: SmtpSink,
    dovecot: Dovecot,
    folder: str,
) -> None:
    async with idling(sqlite_url, smtp_sink, dovecot, folder) as (rt, poller):
        assert poller.client is not None and poller.client.has_capability("IDLE")
        await dovecot.append(mail("idle", message_id=f"<idle-{folder}@example.org>"), folder)
        await mail_taken_in(rt)
        async with rt.sessions() as s:
            assert (await s.execute(select(func.count(InboxUpdate.id)))).scalar_one() == 1


async def test_a_connection_lost_as_idle_starts_is_noticed(
    sqlite_url: str,
    smtp_sink: SmtpSink,
    dovecot: Dovecot,
    folder: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection drops between the IDLE command and the server's "+ idling": aioimaplib
    fails no pending command when a connection is lost, so idle_start waited for an answer
    that never came and the poller fetched nothing until a restart (seen as a flaky
    tests/reliability/test_db_outage.py::test_imap_poller_reconnects in the full suite,
    whose cut fell into that moment)."""
    drops = []
    start = aioimaplib.IMAP4.idle_start

    async def dropped(self: aioimaplib.IMAP4, timeout: float = 1740.0) -> Any:
        if not drops:
            drops.append(self)
            self.protocol.transport.abort()  # gone as IDLE is sent: no "+ idling" comes
        return await start(self, timeout)

    monkeypatch.setattr(aioimaplib.IMAP4, "idle_start", dropped)
    # a second round: it connected again after the drop, and waits in IDLE
    async with idling(sqlite_url, smtp_sink, dovecot, folder, rounds=2) as (rt, _):
        assert drops
        await dovecot.append(mail("after", message_id=f"<after-{folder}@example.org>"), folder)
        await mail_taken_in(rt)


async def test_polling_without_idle(
    sqlite_url: str, smtp_sink: SmtpSink, dovecot: Dovecot, folder: str
) -> None:
    rt = runtime_for(
        sqlite_url,
        smtp_sink,
        dovecot,
        folder,
        imap_extra={"idle": False, "poll_interval_seconds": 0.1},
    )
    await rt.start(dispatch=False)
    try:
        await dovecot.append(mail("poll", message_id=f"<poll-{folder}@example.org>"), folder)
        async with asyncio.timeout(10):
            while not await inbox_keys(rt):
                await asyncio.sleep(0.05)
    finally:
        await rt.stop()


async def test_own_mail_is_not_answered(
    sqlite_url: str, smtp_sink: SmtpSink, dovecot: Dovecot, folder: str
) -> None:
    own = mail("copy", sender="service@shop.test", message_id=f"<own-{folder}@shop.test>")
    await dovecot.append(own, folder)
    rt = runtime_for(sqlite_url, smtp_sink, dovecot, folder)
    try:
        await fetch_round(rt)
        await rt.inbox.drain()
        await rt.dispatcher.drain()
        async with rt.sessions() as s:
            row = (await s.execute(select(InboxUpdate))).scalar_one()
            assert row.status == "ignored"
        assert smtp_sink.messages == []
    finally:
        await rt.stop()


# ---- TLS ---------------------------------------------------------------------------------


async def test_implicit_tls_through_the_real_loop(
    sqlite_url: str, smtp_sink: SmtpSink, dovecot: Dovecot, folder: str
) -> None:
    """The defaults (ssl: true, verified against the CA file) through `run`, the loop a
    deployment runs: aioimaplib 2.0.3's IMAP4_SSL refused conn_lost_cb, so this never
    connected and retried forever."""
    await dovecot.append(mail("tls", message_id=f"<tls-{folder}@example.org>"), folder)
    rt = runtime_for(sqlite_url, smtp_sink, dovecot, folder)
    assert rt.settings.email.imap.ssl and rt.settings.email.imap.verify_certificate
    await rt.start(dispatch=False)
    try:
        async with asyncio.timeout(10):
            while not await inbox_keys(rt):
                await asyncio.sleep(0.05)
        poller = channel(rt).poller
        assert poller is not None and poller.client is not None
        transport = poller.client.protocol.transport
        assert transport.get_extra_info("ssl_object") is not None  # on TLS
    finally:
        await rt.stop()


async def test_starttls(
    sqlite_url: str, smtp_sink: SmtpSink, dovecot: Dovecot, folder: str
) -> None:
    await dovecot.append(mail("starttls", message_id=f"<st-{folder}@example.org>"), folder)
    extra = {"ssl": False, "starttls": True, "port": dovecot.starttls_port, "host": STARTTLS_HOST}
    rt = runtime_for(sqlite_url, smtp_sink, dovecot, folder, imap_extra=extra)
    try:
        assert await fetch_round(rt) == 1
        poller = channel(rt).poller
        assert poller is not None and poller.client is not None
        ssl_object = poller.client.protocol.transport.get_extra_info("ssl_object")
        assert ssl_object is not None and ssl_object.version() in ("TLSv1.2", "TLSv1.3")
        assert "STARTTLS" not in poller.client.protocol.capabilities  # asked again on TLS
    finally:
        await rt.stop()


async def test_the_server_refuses_a_login_without_tls(
    sqlite_url: str, smtp_sink: SmtpSink, dovecot: Dovecot, folder: str
) -> None:
    """What makes the STARTTLS test mean something: this Dovecot takes no password in
    plain text, so the login above went over TLS."""
    extra = {"ssl": False, "starttls": False, "port": dovecot.starttls_port, "host": STARTTLS_HOST}
    rt = runtime_for(sqlite_url, smtp_sink, dovecot, folder, imap_extra=extra)
    try:
        with pytest.raises(ImapError, match="LOGIN"):
            await fetch_round(rt)
    finally:
        await rt.stop()


@pytest.mark.parametrize("mode", ["ssl", "starttls"])
async def test_an_unknown_certificate_is_refused(
    sqlite_url: str, smtp_sink: SmtpSink, dovecot: Dovecot, folder: str, mode: str
) -> None:
    """Verification is on by default: without the CA file the test CA is unknown; only
    `verify_certificate: false` (a test server) connects then."""
    port, host = (dovecot.port, HOST) if mode == "ssl" else (dovecot.starttls_port, STARTTLS_HOST)
    extra = {"ssl": mode == "ssl", "starttls": mode != "ssl", "port": port, "host": host}
    extra["ca_file"] = None
    rt = runtime_for(sqlite_url, smtp_sink, dovecot, folder, imap_extra=extra)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await fetch_round(rt)
    finally:
        await rt.stop()
    extra["verify_certificate"] = False
    rt = runtime_for(sqlite_url, smtp_sink, dovecot, folder, imap_extra=extra)
    try:
        assert await fetch_round(rt) == 0
    finally:
        await rt.stop()
