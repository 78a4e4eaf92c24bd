"""Parsing, reply stripping and loop protection on recorded mails (tests/fixtures/email)."""

from __future__ import annotations

from pathlib import Path

import pytest

from channels.email_parse import Limits, html_to_text, parse_mail, strip_reply

FIXTURES = Path(__file__).parent.parent / "fixtures" / "email"


def load(name: str, **kw: object) -> object:
    return parse_mail((FIXTURES / name).read_bytes(), **kw)  # type: ignore[arg-type]


def test_multipart_alternative_prefers_text_and_sanitizes_html() -> None:
    m = load("multipart_alternative.eml")
    assert m.message_id == "<first-1@example.org>"
    assert m.from_address == "anna@example.org" and m.from_name == "Anna Kunde"
    assert m.subject == "Paket beschädigt"
    assert m.reply == "Hallo, mein Paket kam beschädigt an. Ich möchte mich beschweren."
    assert m.html is not None and "<script>" not in m.html and "<b>beschädigt</b>" in m.html
    assert m.auto is None and m.bounce is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("quoted_printable.eml", "Grüße aus Köln – das Gerät ist defekt."),
        ("base64_body.eml", "Hello, my order never arrived. Where is it? ✉️"),
        ("iso_8859_1.eml", "die Rechnung für März ist zu hoch. Grüße"),
        ("windows_1252.eml", "„Schnell“ geliefert? Nein – es hat 3 Wochen gedauert. Preis: 20 €."),
    ],
)
def test_charsets_and_transfer_encodings(name: str, expected: str) -> None:
    assert expected in load(name).reply


def test_encoded_headers() -> None:
    m = load("quoted_printable.eml")
    assert m.from_name == "Jürgen Müller" and m.subject == "Gerät defekt"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("outlook_html_only_de.eml", "2\n\nDas ist meine Antwort."),
        ("outlook_html_only_en.eml", "My answer is: Faulty product"),
        ("gmail_reply_en.eml", "The parcel was soaked and torn."),
        ("gmail_reply_de.eml", "Lieferung"),
        ("apple_mail_reply_en.eml", "3"),
        ("apple_mail_reply_de.eml", "Das Paket war nass."),
        ("thunderbird_reply_de.eml", "Erstattung, bitte."),
        ("thunderbird_reply_en.eml", "A refund please."),
        ("outlook_plain_original_message.eml", "Yes"),
        ("outlook_plain_von_gesendet.eml", "Ja, das stimmt."),
    ],
)
def test_quoted_history_and_signature_are_stripped(name: str, expected: str) -> None:
    m = load(name)
    assert m.reply == expected
    assert m.auto is None


def test_threading_headers() -> None:
    m = load("gmail_reply_de.eml")
    assert m.in_reply_to == ("<bot-1@shop.test>",)
    assert m.references == ("<first-1@example.org>", "<bot-1@shop.test>")
    assert load("outlook_html_only_de.eml").subject == "AW: Paket beschädigt"


def test_attachments_recorded_with_cap() -> None:
    m = load("attachments.eml", limits=Limits(attachment_bytes=1500))
    assert m.reply == "See the invoice attached."
    pdf, jpg = m.attachments
    assert (pdf.name, pdf.mime_type, pdf.over_cap) == ("invoice.pdf", "application/pdf", True)
    assert pdf.size > 2000
    assert (jpg.name, jpg.mime_type, jpg.size, jpg.over_cap) == (
        "schäden.jpg",
        "image/jpeg",
        1024,
        False,
    )


def test_dsn_bounce_is_parsed_as_permanent() -> None:
    m = load("dsn_bounce.eml")
    assert m.auto is not None
    assert m.bounce is not None and m.bounce.permanent
    assert m.bounce.recipients == ("gone@example.net",)
    assert m.bounce.status == "5.1.1" and "User unknown" in m.bounce.diagnostic
    assert m.bounce.original_message_id == "<bot-99@shop.test>"


def test_out_of_office_is_automatic() -> None:
    assert load("out_of_office.eml").auto == "Auto-Submitted"  # the fact, not the value


@pytest.mark.parametrize(
    "header",
    [
        "Auto-Submitted: auto-generated",
        "X-Autoreply: yes",
        "Precedence: bulk",
        "Precedence: list",
        "Precedence: junk",
        "X-Loop: service@shop.test",
    ],
)
def test_loop_headers(header: str) -> None:
    raw = f"From: x@example.com\r\n{header}\r\nSubject: s\r\n\r\nbody\r\n".encode()
    assert parse_mail(raw).auto is not None


def test_person_and_auto_submitted_no() -> None:
    raw = b"From: x@example.com\r\nAuto-Submitted: no\r\nSubject: s\r\n\r\nbody\r\n"
    assert parse_mail(raw).auto is None
    daemon = b"From: MAILER-DAEMON@example.com\r\nSubject: s\r\n\r\nbody\r\n"
    assert parse_mail(daemon).auto is not None


def test_missing_message_id_is_a_stable_header_hash() -> None:
    a, b = load("no_message_id.eml"), load("no_message_id.eml")
    assert a.message_id == b.message_id and a.message_id.startswith("<sha256-")


def test_case_reference_in_subject() -> None:
    raw = b"From: x@example.com\r\nSubject: Re: Ihr Fall [C-2026-000042]\r\n\r\nok\r\n"
    assert parse_mail(raw).case_reference == "C-2026-000042"


def test_broken_charset_does_not_crash() -> None:
    raw = (
        b"From: x@example.com\r\nContent-Type: text/plain; charset=x-nonsense\r\n\r\n"
        b"Gr\xfc\xdfe\r\n"
    )
    assert "Gr" in parse_mail(raw).reply


def test_strip_reply_and_html_helpers() -> None:
    assert strip_reply("ok\n> quoted\nmore") == "ok\n\nmore"  # inline: two blocks of theirs
    assert html_to_text("<p>a<br>b</p><style>x</style>") == "a\nb"


def test_delayed_dsn_is_not_permanent() -> None:
    raw = (FIXTURES / "dsn_bounce.eml").read_bytes()
    raw = raw.replace(b"Action: failed", b"Action: delayed").replace(
        b"Status: 5.1.1", b"Status: 4.4.1"
    )
    m = parse_mail(raw)
    assert m.bounce is not None and m.bounce.recipients == ("gone@example.net",)
    assert not m.bounce.permanent and m.bounce.status == "4.4.1"


@pytest.mark.parametrize(
    ("name", "lang"),
    [
        ("multipart_alternative.eml", "de"),
        ("outlook_plain_von_gesendet.eml", "de"),
        ("gmail_reply_en.eml", "en"),
        ("base64_body.eml", "en"),
    ],
)
def test_language_guessed_without_content_language(name: str, lang: str) -> None:
    assert load(name).language == lang


def test_content_language_wins() -> None:
    raw = b"From: x@example.com\r\nContent-Language: de-DE\r\nSubject: s\r\n\r\nhello the\r\n"
    assert parse_mail(raw).language == "de"


def test_eight_bit_header_bytes_become_valid_text() -> None:
    """Found by tests/reliability/test_fuzz.py: raw 8-bit bytes in headers came out as
    surrogate escapes, which PostgreSQL refused when the mail was looked up and stored."""
    raw = (
        b'From: "bobb\x9c\xe4" <bob@example.com>\r\nSubject: Gr\xfc\xdfe\r\n'
        b"Message-ID: <a\xff@x>\r\nContent-Type: text/plain\r\n\r\nHallo\r\n"
    )
    mail = parse_mail(raw)
    for text in (mail.from_name or "", mail.subject, mail.message_id, mail.reply):
        text.encode("utf-8")  # raises on a surrogate
    assert mail.from_name == "bobb\ufffd\ufffd" and mail.from_address == "bob@example.com"
