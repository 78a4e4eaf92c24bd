"""Sender verification from Authentication-Results (RFC 8601): only a trusted receiving
server's dmarc=pass for the From: domain counts, and only its topmost header."""

from __future__ import annotations

from email import policy
from email.message import Message
from email.parser import BytesParser

import pytest

from channels.email_auth import sender_verified

TRUSTED = {"mx.shop.test"}
PASS = "mx.shop.test; dkim=pass header.d=example.net; dmarc=pass (p=reject) header.from=example.net"


def msg(*auth: str, sender: str = "Anna <anna@example.net>") -> Message:
    head = "".join(f"Authentication-Results: {a}\r\n" for a in auth)
    raw = f"{head}From: {sender}\r\nTo: service@shop.test\r\nSubject: x\r\n\r\nHi\r\n"
    return BytesParser(policy=policy.default).parsebytes(raw.encode())


def test_a_trusted_pass_for_the_from_domain_verifies() -> None:
    assert sender_verified(msg(PASS), TRUSTED)
    # comments, folding, case: as servers write them
    folded = "MX.Shop.Test (rspamd);\r\n\tdmarc=pass (policy=reject)\r\n header.from=Example.NET"
    assert sender_verified(msg(folded), TRUSTED)


@pytest.mark.parametrize(
    ("headers", "sender"),
    [
        ((PASS,), "Anna <anna@example.net>, Eve <eve@evil.example>"),  # two From: addresses
        ((PASS,), "anna@other.example"),  # the pass was for another domain
        ((PASS.replace("dmarc=pass", "dmarc=fail"),), "anna@example.net"),
        ((PASS.replace("dmarc=pass", "dmarc=none"),), "anna@example.net"),
        ((PASS.replace("mx.shop.test", "mx.evil.example"),), "anna@example.net"),
        ((PASS.replace("; dmarc=pass (p=reject) header.from=example.net", ""),), "a@example.net"),
        (("mx.shop.test; dmarc=pass header.from=",), "anna@example.net"),  # unreadable
        ((), "anna@example.net"),
    ],
    ids=["two-from", "other-domain", "fail", "none", "untrusted", "dkim-only", "broken", "no-ar"],
)
def test_everything_else_does_not(headers: tuple[str, ...], sender: str) -> None:
    assert not sender_verified(msg(*headers, sender=sender), TRUSTED)


def test_a_forged_header_below_the_servers_own_is_not_read() -> None:
    """The server adds its verdict on top; one with its name further down came with the
    mail (a server that does not remove such headers would otherwise be quoted)."""
    own = PASS.replace("dmarc=pass", "dmarc=fail")
    assert not sender_verified(msg(own, PASS), TRUSTED)
    assert sender_verified(msg(PASS, own), TRUSTED)


def test_nothing_is_trusted_unless_configured() -> None:
    assert not sender_verified(msg(PASS), set())
