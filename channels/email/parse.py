"""Inbound mail, parsed with the standard library (`email`, `policy.default`): pure functions.

* `parse_mail(raw)` → `ParsedMail`: ids (Message-ID, or a hash of the headers where it is
  missing), threading headers, sender, subject, the text (from text/plain, or from the
  HTML part turned into text), the reply with quoted history and signature stripped,
  the HTML sanitized with nh3, attachments' metadata, and why no answer may be sent
  (`auto`) or which addresses bounced (`bounce`).
* Every charset the `email` package knows (UTF-8, ISO-8859-1, Windows-1252, ...) and the
  transfer encodings quoted-printable and base64; an unknown or lying charset falls
  back to UTF-8 with replacement, then Latin-1.
* Bounded: each header and the header block are cut (`Limits`) before parsing. A mail the
  parser still cannot read raises; the channel parks it as a dead letter. `mail_key`, the
  inbox's key, never raises.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from dataclasses import dataclass, field, fields, is_dataclass, replace
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import parseaddr
from typing import Any

import nh3

from channels.email.auth import sender_verified
from channels.email.reply import html_reply, html_to_text, strip_reply

MSGID_RE = re.compile(r"<[^<>\s]+>")
CASE_REF_RE = re.compile(r"\[(C-\d{4}-\d{6})\]")
MAX_TEXT = 200_000


@dataclass(frozen=True)
class AttachmentInfo:
    name: str | None
    mime_type: str
    size: int
    over_cap: bool = False


@dataclass(frozen=True)
class Bounce:
    """A delivery status notification: who failed, permanently or not."""

    recipients: tuple[str, ...]
    permanent: bool
    status: str
    diagnostic: str
    original_message_id: str | None = None


@dataclass(frozen=True)
class ParsedMail:
    message_id: str
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    from_address: str
    from_name: str | None
    subject: str
    text: str  # the whole body as text
    reply: str  # the new part only: quotes and signature stripped
    html: str | None  # sanitized HTML, if the mail had an HTML part
    attachments: tuple[AttachmentInfo, ...] = ()
    auto: str | None = None  # why this mail must not be answered (RFC 3834 and friends)
    bounce: Bounce | None = None
    language: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    verified: bool = False  # the receiving server vouches for the From: (email_auth.py)

    @property
    def case_reference(self) -> str | None:
        m = CASE_REF_RE.search(self.subject)
        return m.group(1) if m else None


def message_ids(value: str | None) -> tuple[str, ...]:
    return tuple(MSGID_RE.findall(value or ""))


def header_message_id(msg: Message) -> str:
    """The Message-ID, or a stable hash of the identifying headers where it is missing."""
    found = message_ids(_header(msg, "Message-ID"))
    if found:
        return found[0]
    basis = "\n".join(
        f"{k}:{_raw_header(msg, k)}" for k in ("From", "To", "Date", "Subject", "Received")
    )
    return "<sha256-" + hashlib.sha256(basis.encode("utf-8", "replace")).hexdigest() + "@cicbot>"


@dataclass(frozen=True)
class Limits:
    """Sizes cut before the `email` package sees a mail: its header parser is quadratic on
    some input (a 480 kB Subject of encoded words took 21 s)."""

    header_bytes: int = 256 << 10  # the whole header block; headers past it are dropped
    header_line_bytes: int = 16 << 10  # one header with its folded lines
    attachment_bytes: int = 10 << 20  # larger attachments are flagged over_cap


HEADER_END = re.compile(rb"\r?\n\r?\n")


def bounded(raw: bytes, limits: Limits = Limits()) -> bytes:
    """`raw` with each header cut to `header_line_bytes` and the header block to
    `header_bytes`; the body untouched."""
    end = HEADER_END.search(raw)
    head, body = (raw[: end.start()], raw[end.start() :]) if end else (raw, b"")
    if len(head) <= limits.header_line_bytes and len(head) <= limits.header_bytes:
        return raw  # nothing can be over a limit
    kept: list[bytes] = []
    total = 0
    for header in re.split(rb"\r?\n(?![ \t])", head):  # a header and its folded lines
        header = header[: limits.header_line_bytes]
        total += len(header) + 2
        if total > limits.header_bytes:
            break
        kept.append(header)
    return b"\r\n".join(kept) + (body or b"\r\n\r\n")


def parse_headers(raw: bytes, limits: Limits = Limits()) -> Message:
    """The headers as raw strings (compat32 parses no structure, so it never raises):
    for the inbox's keys, before anything else may fail."""
    return BytesParser(policy=policy.compat32).parsebytes(bounded(raw, limits), headersonly=True)


def mail_key(raw: bytes, limits: Limits = Limits()) -> tuple[str, str]:
    """(dedupe key, sender) of a fetched mail for the inbox, for any bytes at all: the
    Message-ID (or a hash of the identifying headers) and the From address or "-"."""
    try:
        headers = parse_headers(raw, limits)
        key = header_message_id(headers)
        sender = parseaddr(str(headers.get("From", "") or ""))[1].lower()
    except Exception:  # never: compat32 takes anything; the raw bytes still identify it
        return "<sha256-" + hashlib.sha256(raw).hexdigest() + "@cicbot>", "-"
    return key, (sender if "@" in sender else "-")


def parse_mail(
    raw: bytes, *, limits: Limits = Limits(), trusted_authserv_ids: Collection[str] = ()
) -> ParsedMail:
    """Raises on a mail it cannot read; the channel parks that one as a dead letter.
    `verified`: see channels/email/auth.py."""
    mail = _parse_mail(bounded(raw, limits), limits.attachment_bytes, trusted_authserv_ids)
    # 8-bit bytes in headers come out as surrogate escapes, which no database stores
    return _valid_unicode(mail)  # type: ignore[no-any-return]


SURROGATE = re.compile("[\ud800-\udfff]")


def _valid_unicode(value: Any) -> Any:
    if isinstance(value, str):
        return SURROGATE.sub("\ufffd", value)
    if isinstance(value, tuple):
        return tuple(_valid_unicode(v) for v in value)
    if isinstance(value, dict):
        return {_valid_unicode(k): _valid_unicode(v) for k, v in value.items()}
    if is_dataclass(value) and not isinstance(value, type):
        return replace(
            value, **{f.name: _valid_unicode(getattr(value, f.name)) for f in fields(value)}
        )
    return value


def _parse_mail(raw: bytes, max_attachment_bytes: int, trusted: Collection[str]) -> ParsedMail:
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    name, address = _sender(msg)
    subject = _header(msg, "Subject")
    plain, html = _bodies(msg)
    text = plain if plain.strip() else (html_to_text(html) if html else "")
    # the reply is looked for in what is kept of the text anyway
    if plain.strip():
        reply = strip_reply(plain[:MAX_TEXT])
    else:
        reply = html_reply(html[: MAX_TEXT * 4]) if html else ""
    bounce = parse_bounce(msg)
    return ParsedMail(
        message_id=header_message_id(msg),
        in_reply_to=message_ids(_header(msg, "In-Reply-To")),
        references=message_ids(_header(msg, "References")),
        from_address=address,
        from_name=name,
        subject=subject,
        text=text[:MAX_TEXT],
        reply=reply[:MAX_TEXT],
        html=nh3.clean(html) if html else None,
        attachments=tuple(_attachments(msg, max_attachment_bytes)),
        auto=auto_reason(msg, address) if bounce is None else "delivery status notification",
        bounce=bounce,
        language=_language(msg) or _guess_language(subject, text),
        headers={k: _header(msg, k) for k in ("Date", "To", "Auto-Submitted") if k in msg},
        verified=sender_verified(msg, {t.lower() for t in trusted}),
    )


# ---- headers -------------------------------------------------------------------------


def _header(msg: Message, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:  # a header the policy cannot parse ("Message-ID: <"): its raw text
        return " ".join(_raw_header(msg, name).split())
    return " ".join(str(value).split()) if value is not None else ""


def _raw_header(msg: Message, name: str) -> str:
    """A header's text as it came (unfolded, not decoded): the same under every policy."""
    for k, v in msg.raw_items():
        if k.lower() == name.lower():
            return str(v).replace("\r", "").replace("\n", "")
    return ""


def _sender(msg: Message) -> tuple[str | None, str]:
    try:
        header = msg.get("From")
        addresses = getattr(header, "addresses", ())
        if addresses:
            a: Address = addresses[0]
            return (a.display_name or None), a.addr_spec.lower()
    except Exception:  # noqa: S110 (a broken header: the raw fallback below)
        pass
    name, addr = parseaddr(_header(msg, "From"))
    return (name or None), addr.lower()


def _language(msg: Message) -> str | None:
    lang = _header(msg, "Content-Language").split(",")[0].strip().lower()
    return lang[:2] if lang else None


GERMAN_HINTS = re.compile(
    r"^\s*(aw|wg)\s*:|^Am\b.{0,300}\bschrieb\b|^(Von|Gesendet|Betreff)\s*:|"
    r"\b(ich|und|nicht|bitte|danke|hallo|mein|meine|ist|das|die|der|mit|freundlichen)\b",
    re.I | re.M,
)
ENGLISH_HINTS = re.compile(r"\b(i|and|not|please|thanks|hello|my|is|the|with|regards)\b", re.I)


def _guess_language(subject: str, text: str) -> str | None:
    """de or en from the mail's words when it has no Content-Language; None if unsure."""
    sample = f"{subject}\n{text[:2000]}"
    de, en = len(GERMAN_HINTS.findall(sample)), len(ENGLISH_HINTS.findall(sample))
    if de > en:
        return "de"
    if en > de:
        return "en"
    return None


AUTO_LOCALPARTS = ("mailer-daemon", "postmaster", "noreply", "no-reply", "do-not-reply")


def auto_reason(msg: Message, sender: str = "") -> str | None:
    """Why an answer would be wrong (RFC 3834 §2 and the headers mail systems really use);
    None for a person's mail."""
    # only names and values from these lists: the reason is logged, the sender chose the rest
    auto = _header(msg, "Auto-Submitted").lower()
    if auto and auto.split(";")[0].strip() != "no":
        return "Auto-Submitted"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder"):
        if name in msg:
            return name
    precedence = _header(msg, "Precedence").lower()
    if precedence in ("bulk", "list", "junk", "auto_reply"):
        return f"Precedence: {precedence}"
    if "X-Loop" in msg:
        return "X-Loop"
    if "List-Id" in msg:
        return "List-Id"
    local = sender.split("@", 1)[0].lower()
    if local in AUTO_LOCALPARTS or local.startswith("mailer-daemon"):
        return "sender address"
    if _header(msg, "Return-Path").strip() == "<>":
        return "null Return-Path"
    if msg.get_content_type() == "multipart/report":
        return "report"
    return None


# ---- bodies --------------------------------------------------------------------------


def _decoded(part: Message) -> str:
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        if isinstance(content, str):
            return content
    except (LookupError, UnicodeError, AssertionError, KeyError, ValueError):
        pass  # an unknown charset, or one with a NUL in its name
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    for cs in (charset, "utf-8"):
        try:
            return payload.decode(cs)
        except (LookupError, UnicodeDecodeError, ValueError):
            continue
    return payload.decode("latin-1")


def _is_attachment(part: Message) -> bool:
    return part.get_content_disposition() == "attachment" or (
        part.get_filename() is not None and part.get_content_maintype() != "multipart"
    )


def _bodies(msg: EmailMessage) -> tuple[str, str | None]:
    plain_part: Message | None = None
    html_part: Message | None = None
    try:
        plain_part = msg.get_body(preferencelist=("plain",))
        html_part = msg.get_body(preferencelist=("html",))
    except Exception:  # noqa: S110 (an odd structure: walked below)
        pass
    if plain_part is None and html_part is None:
        for part in msg.walk():
            if part.is_multipart() or _is_attachment(part):
                continue
            if part.get_content_type() == "text/plain" and plain_part is None:
                plain_part = part
            elif part.get_content_type() == "text/html" and html_part is None:
                html_part = part
    plain = _decoded(plain_part) if plain_part is not None else ""
    html = _decoded(html_part) if html_part is not None else None
    return plain.replace("\r\n", "\n"), html


def _attachments(msg: EmailMessage, cap: int) -> list[AttachmentInfo]:
    found = []
    for part in msg.walk():
        if part.is_multipart() or not _is_attachment(part):
            continue
        payload = part.get_payload(decode=True)
        size = len(payload) if isinstance(payload, bytes) else 0
        found.append(
            AttachmentInfo(
                name=part.get_filename(),
                mime_type=part.get_content_type(),
                size=size,
                over_cap=size > cap,
            )
        )
    return found


# ---- delivery status notifications ---------------------------------------------------


def parse_bounce(msg: Message) -> Bounce | None:
    """A DSN (RFC 3464, multipart/report; report-type=delivery-status): the recipients that
    failed (or, if none did, those delayed), and whether the failure is permanent (Action
    failed with a 5.x.x Status)."""
    if msg.get_content_type() != "multipart/report":
        return None
    found: dict[str, list[tuple[str, str, str]]] = {"failed": [], "delayed": []}
    original: str | None = None
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/delivery-status":
            blocks = part.get_payload()
            for block in blocks if isinstance(blocks, list) else []:
                if not isinstance(block, Message):
                    continue
                action = str(block.get("Action", "")).strip().lower()
                rcpt = str(block.get("Final-Recipient", "") or block.get("Original-Recipient", ""))
                if not rcpt or action not in found:
                    continue
                found[action].append(
                    (
                        rcpt.split(";", 1)[-1].strip().strip("<>").lower(),
                        str(block.get("Status", "")).strip(),
                        " ".join(str(block.get("Diagnostic-Code", "")).split()),
                    )
                )
        elif ctype in ("message/rfc822", "text/rfc822-headers") and original is None:
            original = _original_message_id(part)
    rows = found["failed"] or found["delayed"]
    if not rows:
        return Bounce((), False, "", "", original)
    status, diagnostic = rows[0][1], rows[0][2]
    return Bounce(
        tuple(r[0] for r in rows),
        bool(found["failed"]) and status.startswith("5"),
        status,
        diagnostic,
        original,
    )


def _original_message_id(part: Message) -> str | None:
    inner = part.get_payload()
    if isinstance(inner, list) and inner and isinstance(inner[0], Message):
        text = str(inner[0].get("Message-ID", ""))
    elif isinstance(inner, str):
        text = _rfc822_header(inner, "Message-ID")
    else:
        return None
    found = message_ids(text)
    return found[0] if found else None


def _rfc822_header(text: str, name: str) -> str:
    m = re.search(rf"^{re.escape(name)}:\s*(.+)$", text, re.I | re.M)
    return m.group(1) if m else ""


def summary(mail: ParsedMail) -> dict[str, Any]:
    """What goes into InboundMessage.raw (the history keeps it)."""
    return {
        "message_id": mail.message_id,
        "subject": mail.subject,
        "from": mail.from_address,
        "in_reply_to": list(mail.in_reply_to),
        "references": list(mail.references[-20:]),
        "full_text": mail.text[:20_000],
        "html": (mail.html or "")[:50_000] or None,
    }
