"""The reply-extraction table (tests/fixtures/email/replies.yaml) and how a fixture is read
and compared: shared by tests/channels/test_email_replies.py and bench/email_replies.py."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import yaml

from channels.email_reply import html_reply, strip_reply

FIXTURES = Path(__file__).parent.parent / "fixtures" / "email"
CASES: dict[str, str] = yaml.safe_load((FIXTURES / "replies.yaml").read_text("utf-8"))


def body(name: str) -> tuple[str, str]:
    """("text" | "html", the body) of a fixture: an .eml's text part as its client sent it
    (the HTML part where it has none), a .txt or .html file as it is."""
    path = FIXTURES / name
    if path.suffix == ".eml":
        msg = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        assert isinstance(msg, EmailMessage)
        part = msg.get_body(("plain", "html"))
        assert part is not None
        kind = "html" if part.get_content_type() == "text/html" else "text"
        return kind, part.get_content()  # type: ignore[no-any-return]
    text = path.read_text("utf-8")
    return ("html" if path.suffix == ".html" else "text"), text


def same(got: str | None, expected: str) -> bool:
    return " ".join((got or "").split()) == " ".join(expected.split())


def cicbot(kind: str, text: str) -> str:
    return html_reply(text) if kind == "html" else strip_reply(text)
