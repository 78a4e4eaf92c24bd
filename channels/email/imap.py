"""Inbound mail by IMAP (aioimaplib): IDLE where the server has it, polling otherwise.

Per round: SELECT the folder (its UIDVALIDITY), `UID SEARCH UID n+1:*` from the progress
kept in the database, and per new UID in order: `UID FETCH uid BODY.PEEK[]` (the mail
stays unseen), hand the bytes to `accept` (the inbox commits it, deduped on the
Message-ID), and only then flag it \\Seen (or move it) and store the UID as progress.
A crash anywhere means the mail is fetched again and deduped, never lost. A changed
UIDVALIDITY makes the UIDs meaningless: the folder is read from the start again, and
the Message-ID dedupe keeps what was already imported from being imported twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aioimaplib

from bot.channel.records import Records
from channels.email.settings import EmailImapSettings
from channels.email.tls import tls_context

log = logging.getLogger(__name__)
Accept = Callable[[bytes], Awaitable[bool]]
UIDVALIDITY_RE = re.compile(rb"UIDVALIDITY (\d+)")
FETCH_UID_RE = re.compile(rb"UID (\d+)")


class ImapError(Exception):
    pass


async def _starttls(
    client: aioimaplib.IMAP4, context: ssl.SSLContext, host: str, timeout: float
) -> None:
    """RFC 3501 §6.2.1 STARTTLS, which aioimaplib 2.0.3 lists but does not do: the command,
    the TLS handshake on the same connection, and the capabilities asked for again (those
    from before TLS may have been forged on the way)."""
    protocol = client.protocol
    if "STARTTLS" not in protocol.capabilities:
        raise ImapError("the server offers no STARTTLS; not logging in without TLS")
    command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
    _ok(await asyncio.wait_for(protocol.execute(command), timeout), "STARTTLS")
    loop = asyncio.get_running_loop()
    protocol.transport = await asyncio.wait_for(
        loop.start_tls(protocol.transport, protocol, context, server_hostname=host), timeout
    )
    await asyncio.wait_for(protocol.capability(), timeout)


def _abort(client: aioimaplib.IMAP4) -> None:
    transport = getattr(client.protocol, "transport", None)
    if transport is not None:
        transport.close()


def _ok(response: Any, what: str) -> Any:
    if response.result != "OK":
        lines = b" ".join(x for x in response.lines if isinstance(x, bytes | bytearray))
        raise ImapError(f"IMAP {what}: {response.result} {lines[:200]!r}")
    return response


class ImapPoller:
    def __init__(
        self,
        settings: EmailImapSettings,
        password: str | None,
        records: Records,
        accept: Accept,
    ) -> None:
        self.settings = settings
        self._password = password
        self.records = records  # the core keeps how far the folder was read
        self.accept = accept
        port = settings.port or (993 if settings.ssl else 143)
        self.port = port
        self.mailbox = f"{settings.username}@{settings.host}:{port}/{settings.folder}"
        self.client: aioimaplib.IMAP4 | None = None
        self.uidvalidity: int | None = None
        self.rounds = 0  # completed fetch rounds (tests)
        self.wake = asyncio.Event()
        self._lost = asyncio.Event()  # the connection went away (reset, server restarted)

    # ---- connection --------------------------------------------------------------------

    async def connect(self) -> None:
        """Implicit TLS (`ssl`), STARTTLS (required: no plain-text fallback) or, for a test
        server only, plain; then LOGIN and SELECT."""
        s = self.settings
        assert s.host is not None
        self._lost = lost = asyncio.Event()
        tls = s.ssl or s.starttls
        context = tls_context(s.ca_file, s.verify_certificate, what="IMAP") if tls else None
        # aioimaplib.IMAP4 with an ssl_context is implicit TLS; IMAP4_SSL (2.0.3) would
        # not take conn_lost_cb, which IDLE needs to notice a dropped connection
        client = aioimaplib.IMAP4(
            host=s.host,
            port=self.port,
            timeout=s.timeout_seconds,
            conn_lost_cb=lambda _: lost.set(),
            ssl_context=context if s.ssl else None,
        )
        try:
            await client.wait_hello_from_server()
            if s.starttls and not s.ssl:
                assert context is not None
                await _starttls(client, context, s.host, s.timeout_seconds)
            _ok(await client.login(s.username or "", self._password or ""), "LOGIN")
        except BaseException:
            _abort(client)
            raise
        self.client = client
        await self.select()

    async def select(self) -> None:
        assert self.client is not None
        response = _ok(await self.client.select(self.settings.folder), "SELECT")
        for line in response.lines:
            m = UIDVALIDITY_RE.search(bytes(line))
            if m:
                self.uidvalidity = int(m.group(1))
        if self.uidvalidity is None:
            raise ImapError("SELECT gave no UIDVALIDITY")

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None and not self._lost.is_set():
            try:
                await asyncio.wait_for(client.logout(), 5)
            except Exception:  # noqa: S110 (going away anyway)
                pass

    # ---- progress ----------------------------------------------------------------------

    async def last_uid(self) -> int:
        row = await self.records.position(self.mailbox)
        if row is None or row[0] != self.uidvalidity:
            if row is not None:
                log.warning(
                    "email: UIDVALIDITY of %s changed (%s → %s): reading the folder again",
                    self.mailbox,
                    row[0],
                    self.uidvalidity,
                )
            return 0
        return row[1]

    async def save_progress(self, uid: int) -> None:
        assert self.uidvalidity is not None
        await self.records.save_position(self.mailbox, self.uidvalidity, uid)

    # ---- one round ---------------------------------------------------------------------

    async def fetch_new(self) -> int:
        """Take every mail past the stored UID into the inbox; the number taken."""
        assert self.client is not None
        last = await self.last_uid()
        _ok(await self.client.noop(), "NOOP")  # the server syncs the folder view on a command
        response = _ok(await self.client.uid_search(f"UID {last + 1}:*"), "UID SEARCH")
        uids: list[int] = []
        for line in response.lines:
            text = bytes(line).decode("ascii", "replace")
            if text.startswith("SEARCH") or text.startswith("* SEARCH"):
                uids += [int(x) for x in text.split()[1:] if x.isdigit()]
            elif text and all(x.isdigit() for x in text.split()):
                uids += [int(x) for x in text.split()]
        taken = 0
        for uid in sorted(u for u in set(uids) if u > last):
            raw = await self._fetch(uid)
            if raw is not None:
                await self.accept(raw)  # committed (or already there) before anything else
                await self._after_import(uid)
                taken += 1
            await self.save_progress(uid)
        self.rounds += 1
        return taken

    async def _fetch(self, uid: int) -> bytes | None:
        assert self.client is not None
        response = _ok(await self.client.uid("fetch", str(uid), "(UID BODY.PEEK[])"), "FETCH")
        for line in response.lines:
            if isinstance(line, bytearray):
                return bytes(line)
        log.warning("email: UID %s of %s has no body (expunged?)", uid, self.mailbox)
        return None

    async def _after_import(self, uid: int) -> None:
        assert self.client is not None
        if self.settings.after_import == "move":
            target = self.settings.processed_folder
            await self.client.create(target)  # NO when it exists: fine
            if self.client.has_capability("MOVE"):
                _ok(await self.client.uid("move", str(uid), target), "UID MOVE")
                return
            _ok(await self.client.uid("copy", str(uid), target), "UID COPY")
            _ok(await self.client.uid("store", str(uid), "+FLAGS.SILENT (\\Deleted)"), "STORE")
            if self.client.has_capability("UIDPLUS"):
                await self.client.uid("expunge", str(uid))
            else:
                await self.client.expunge()
            return
        _ok(await self.client.uid("store", str(uid), "+FLAGS.SILENT (\\Seen)"), "UID STORE")

    # ---- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                if self.client is None:
                    await self.connect()
                await self.fetch_new()
                failures = 0
                await self._wait_for_mail()
            except asyncio.CancelledError:
                await self.close()
                raise
            except Exception as exc:
                failures += 1
                delay = min(300.0, 1.0 * 2 ** min(failures - 1, 8)) * random.uniform(0.8, 1.2)
                log.warning(
                    "email: IMAP %s failed (%s: %s); again in %.1fs",
                    self.mailbox,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await self.close()
                await asyncio.sleep(delay)

    async def _idle_start(self) -> asyncio.Future[Any]:
        """IDLE begun, or ConnectionError: aioimaplib fails no pending command when the
        connection drops, so a drop before the server's "+ idling" left idle_start waiting
        for ever (and the poller with it); a server that never answers is given up on too."""
        assert self.client is not None
        start = asyncio.ensure_future(
            self.client.idle_start(timeout=self.settings.idle_timeout_seconds)
        )
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait(
                {start, lost},
                timeout=self.settings.timeout_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            lost.cancel()
        if not start.done():
            start.cancel()
            why = "the connection was lost" if self._lost.is_set() else "no acknowledgement"
            raise ConnectionError(f"IMAP IDLE did not start: {why}")
        idle: asyncio.Future[Any] = start.result()
        return idle

    async def _wait_for_mail(self) -> None:
        assert self.client is not None
        if self.settings.idle and self.client.has_capability("IDLE"):
            idle = await self._idle_start()
            try:
                waiter = asyncio.ensure_future(self.wake.wait())
                push = asyncio.ensure_future(self.client.wait_server_push())
                # a dropped connection says nothing to IDLE: without this it waits 25 min
                lost = asyncio.ensure_future(self._lost.wait())
                await asyncio.wait(
                    {waiter, push, lost},
                    timeout=self.settings.idle_timeout_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in (waiter, push, lost):
                    task.cancel()
                self.wake.clear()
            finally:
                if self._lost.is_set():
                    idle.cancel()
                else:
                    if self.client.has_pending_idle():
                        self.client.idle_done()
                    await asyncio.wait_for(idle, self.settings.timeout_seconds)
            if self._lost.is_set():
                raise ConnectionError("the IMAP server closed the connection")
            return
        try:
            await asyncio.wait_for(self.wake.wait(), self.settings.poll_interval_seconds)
        except TimeoutError:
            pass
        self.wake.clear()
