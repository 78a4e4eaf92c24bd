"""Real mail servers for the email tests: Dovecot (Debian's dovecot-imapd, IMAP) started as a
child process with its own config, a maildir in a temporary directory and one test user;
and an aiosmtpd SMTP server that captures what the bot sends and can be told to refuse."""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import aioimaplib
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
HOST = "127.0.0.1"
# Dovecot counts a connection as secure when it comes from its own address: the STARTTLS
# listener sits on another loopback address, so that it really demands TLS first
STARTTLS_HOST = "127.0.0.2"
USER = "bot@shop.test"
PASSWORD = "imap-secret"


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the private CA's certificate: what `ca_file` names
    cert: Path  # the server's certificate for 127.0.0.1, signed by the CA
    key: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Dovecot:
    """`port` speaks implicit TLS (993's role), `starttls_port` plain IMAP that requires
    STARTTLS before a login (143's role); both with a certificate of the test's own CA."""

    port: int
    starttls_port: int  # on STARTTLS_HOST
    root: Path
    proc: subprocess.Popen[bytes]
    tls: TlsFiles
    user: str = USER
    password: str = PASSWORD

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def client(self) -> aioimaplib.IMAP4:
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        imap = aioimaplib.IMAP4(host=HOST, port=self.port, timeout=10, ssl_context=context)
        await imap.wait_hello_from_server()
        response = await imap.login(self.user, self.password)
        assert response.result == "OK", response
        return imap

    async def append(self, raw: bytes, folder: str = "INBOX") -> None:
        imap = await self.client()
        try:
            response = await imap.append(raw, mailbox=folder)
            assert response.result == "OK", response
        finally:
            await imap.logout()

    async def flags(self, folder: str = "INBOX") -> dict[int, str]:
        """UID → its FLAGS text."""
        imap = await self.client()
        try:
            await imap.select(folder)
            response = await imap.uid("fetch", "1:*", "(UID FLAGS)")
            found: dict[int, str] = {}
            for line in response.lines:
                text = bytes(line).decode(errors="replace")
                if "UID " in text and "FLAGS" in text:
                    uid = int(text.split("UID ", 1)[1].split()[0].rstrip(")"))
                    found[uid] = text.split("FLAGS", 1)[1]
            return found
        finally:
            await imap.logout()


def _config(root: Path, port: int, starttls_port: int, tls: TlsFiles) -> str:
    if os.geteuid() == 0:
        internal, login, mail_user = "dovecot", "dovenull", "dovecot"
    else:
        internal = login = mail_user = getpass.getuser()
    return f"""
protocols = imap
listen = {HOST}, {STARTTLS_HOST}
base_dir = {root}/run
state_dir = {root}/state
instance_name = cicbot-test-{port}
log_path = {root}/dovecot.log
ssl = required
ssl_cert = <{tls.cert}
ssl_key = <{tls.key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = plain login
mail_location = maildir:{root}/mail/%u
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = 1
protocol imap {{
  mail_max_userip_connections = 200
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={mail_user} gid={mail_user} home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = {STARTTLS_HOST}
    port = {starttls_port}
  }}
  inet_listener imaps {{
    address = {HOST}
    port = {port}
    ssl = yes
  }}
}}
"""


@pytest.fixture(scope="session", name="dovecot")
def dovecot_fixture(tls_cert: TlsFiles) -> Iterator[Dovecot]:
    """One Dovecot for the session; each test uses its own folder or clears INBOX."""
    if not Path(DOVECOT).exists():
        pytest.skip("dovecot is not installed (apt-get install dovecot-imapd; .ci/run does)")
    root = Path(tempfile.mkdtemp(prefix="cicbot-dovecot-"))
    root.chmod(0o755)  # the mail processes run as the dovecot user
    (root / "mail").mkdir()
    if os.geteuid() == 0:
        shutil.chown(root / "mail", "dovecot", "dovecot")
    (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    port, starttls_port = free_port(), free_port()
    conf = root / "dovecot.conf"
    conf.write_text(_config(root, port, starttls_port, tls_cert))
    proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)], start_new_session=True)
    server = Dovecot(port, starttls_port, root, proc, tls_cert)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dovecot exited: {server.log()}")
            try:
                with socket.create_connection((STARTTLS_HOST, starttls_port), timeout=1) as s:
                    if s.recv(200).startswith(b"* OK"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"dovecot did not start: {server.log()}")
            time.sleep(0.05)
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class SmtpSink:
    """What an aiosmtpd server received; `refuse` maps an address to an SMTP reply."""

    host: str
    port: int
    messages: list[tuple[Envelope, EmailMessage]] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    sessions: int = 0
    tls: TlsFiles | None = None  # STARTTLS with this CA's certificate

    def parsed(self) -> list[EmailMessage]:
        return [m for _, m in self.messages]

    async def wait_for(self, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.messages) < n:
                await asyncio.sleep(0.02)


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: Any
    ) -> Any:
        if not getattr(server, "counted", False):  # EHLO comes again after STARTTLS
            server.counted = True  # type: ignore[attr-defined]  # one SMTP per connection
            self.sink.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address.lower() in self.sink.refuse:
            return self.sink.refuse[address.lower()]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        msg = BytesParser(policy=policy.default).parsebytes(data)
        assert isinstance(msg, EmailMessage)
        self.sink.messages.append((envelope, msg))
        return "250 Message accepted"


@pytest.fixture(name="smtp_sink")
def smtp_sink_fixture(tls_cert: TlsFiles) -> Iterator[SmtpSink]:
    """What the bot sends, over STARTTLS (required by the server, as on port 587)."""
    port = free_port()
    sink = SmtpSink(HOST, port, tls=tls_cert)
    controller = Controller(
        _Handler(sink),
        hostname=HOST,
        port=port,
        tls_context=server_context(tls_cert),
        require_starttls=True,
    )
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


def email_settings(
    db_url: str,
    sink: SmtpSink,
    server: Dovecot | None = None,
    *,
    folder: str = "INBOX",
    imap_extra: dict[str, Any] | None = None,
    **email: Any,
) -> Any:
    from channels.email.settings import EmailImapSettings, EmailSettings, EmailSmtpSettings
    from tests.conftest import make_settings

    imap = EmailImapSettings()
    if server is not None:
        imap_options: dict[str, Any] = {
            "host": HOST,
            "port": server.port,
            "username": server.user,
            "password": server.password,
            "ca_file": str(server.tls.ca),  # implicit TLS, verified: the defaults
            "folder": folder,
            "poll_interval_seconds": 0.2,
            "timeout_seconds": 10,
        }
        imap_options.update(imap_extra or {})
        imap = EmailImapSettings(**imap_options)
    smtp = EmailSmtpSettings(
        host=sink.host,
        port=sink.port,
        starttls=sink.tls is not None,
        ca_file=str(sink.tls.ca) if sink.tls else None,
    )
    options: dict[str, Any] = {
        "address": "service@shop.test",
        "display_name": "Beispiel Service",
        "imap": imap,
        "smtp": smtp,
        "public_url": "https://bot.shop.test",
        "unsubscribe_secret": "test-unsubscribe-secret",
    }
    options.update(email)
    return make_settings(db_url, email=EmailSettings(**options))


def mail(
    text: str,
    *,
    sender: str = "Anna Kunde <anna@example.org>",
    subject: str = "Beschwerde",
    message_id: str,
    in_reply_to: str | None = None,
    references: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "service@shop.test"
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(text)
    return msg.as_bytes(policy=policy.SMTP)


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    subprocess.run([openssl, *args], check=True, capture_output=True)


@pytest.fixture(scope="session", name="tls_cert")
def tls_cert_fixture(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A private CA and a server certificate for 127.0.0.1 signed by it (openssl CLI): the
    clients verify against the CA file, as with a company's own CA."""
    root = tmp_path_factory.mktemp("tls")
    ca, ca_key = root / "ca.pem", root / "ca-key.pem"
    cert, key, csr = root / "cert.pem", root / "key.pem", root / "cert.csr"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
             "-subj", "/CN=cicbot test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    _openssl("req", "-new", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={HOST}")
    ext = root / "leaf.ext"
    ext.write_text(
        f"subjectAltName=IP:{HOST},IP:{STARTTLS_HOST},DNS:localhost\nextendedKeyUsage=serverAuth\n"
    )
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    for path in (cert, key, ca):
        path.chmod(0o644)  # Dovecot's login processes read them as another user
    return TlsFiles(ca, cert, key)


def server_context(tls: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls.cert), str(tls.key))
    return context


def tls_sink(tls: TlsFiles, *, implicit: bool, user: str, password: str) -> Any:
    """An aiosmtpd server with STARTTLS required (or implicit TLS) and AUTH; a context
    manager yielding its SmtpSink."""
    from contextlib import contextmanager

    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticator(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            user.encode(),
            password.encode(),
        )
        return AuthResult(success=ok)

    @contextmanager
    def serve() -> Iterator[SmtpSink]:
        ctx = server_context(tls)
        port = free_port()
        sink = SmtpSink(HOST, port)
        kwargs: dict[str, Any] = {"authenticator": authenticator, "auth_require_tls": True}
        if implicit:  # the session cannot tell it is on TLS then
            kwargs.update(ssl_context=ctx, auth_require_tls=False)
        else:
            kwargs.update(tls_context=ctx, require_starttls=True)
        controller = Controller(_Handler(sink), hostname=HOST, port=port, **kwargs)
        controller.start()
        try:
            yield sink
        finally:
            controller.stop()

    return serve()
