"""Who a web-chat visitor is: a random id the server made, carried in a signed HttpOnly
cookie. The page never sees or chooses it (no URL parameter, no script access), another
site's page cannot use it (the socket checks Origin), and without the key nobody can make
one: the visitor id alone, which agents see as the identity's external id, opens nothing.

The key is `webchat.secret` (CICBOT_WEBCHAT__SECRET). Without it a key is generated once
and kept in `webchat.key_file` (mode 0600), like Rails' development secret: visitors keep
their sessions across restarts, and every process on the machine shares the file. Several
machines need the environment variable, or each signs its own visitors out of the others.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
from pathlib import Path

from itsdangerous import BadSignature, Signer

from channels.webchat.settings import WebChatSettings

log = logging.getLogger(__name__)
SALT = "cicbot.webchat.visitor"
COOKIE = "cicbot_chat"
SECURE_COOKIE = "__Host-cicbot_chat"  # https: only this host, only Secure, only Path=/
MAX_AGE = 365 * 24 * 3600  # renewed on every visit to the page
KEY_BYTES = 32


class Sessions:
    """Issues and checks visitors' session tokens (`<visitor id>.<signature>`)."""

    def __init__(self, key: str | bytes) -> None:
        self._signer = Signer(key, salt=SALT, key_derivation="hmac", digest_method=hashlib.sha256)

    def issue(self) -> tuple[str, str]:
        """A new visitor: (visitor id, token)."""
        visitor = secrets.token_urlsafe(18)
        return visitor, self._signer.sign(visitor).decode("ascii")

    def visitor(self, token: str | None) -> str | None:
        """The visitor id a token was issued for, or None for a missing or forged one."""
        if not token or len(token) > 200:
            return None
        try:
            return self._signer.unsign(token).decode("ascii")
        except (BadSignature, UnicodeError):
            return None


def cookie_name(secure: bool) -> str:
    return SECURE_COOKIE if secure else COOKIE


def load_key(settings: WebChatSettings) -> str:
    """The signing key: the configured secret, else the key file's (made on first use)."""
    if settings.secret is not None and settings.secret.get_secret_value():
        return settings.secret.get_secret_value()
    return _key_file(Path(settings.key_file))


def _key_file(path: Path) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(KEY_BYTES) + "\n")
        try:
            os.link(tmp, path)  # atomic, and never over a key another process made first
            log.warning(
                "web chat: generated a signing key in %s; set CICBOT_WEBCHAT__SECRET when "
                "several machines serve the chat",
                path,
            )
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("web chat: %s is readable by others; chmod 600 it", path)
    key = path.read_text("ascii").strip()
    if len(key) < 32:
        raise ValueError(f"{path} holds no usable key (delete it to have a new one made)")
    return key
