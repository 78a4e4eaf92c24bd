"""Global commands from typed words (German and English) and button payloads."""

from __future__ import annotations

import pytest

from flows.commands import Command, Parsed, parse


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("help", Command.HELP),
        ("Hilfe", Command.HELP),
        ("?", Command.HELP),
        ("/help", Command.HELP),
        ("HELP!", Command.HELP),
        ("menu", Command.MENU),
        ("Menü", Command.MENU),
        ("Hauptmenü", Command.MENU),
        ("hello", Command.MENU),
        ("Hallo", Command.MENU),
        ("Guten Tag", Command.MENU),
        ("cancel", Command.CANCEL),
        ("abbrechen", Command.CANCEL),
        ("/cancel", Command.CANCEL),
        ("human", Command.HUMAN),
        ("Mensch", Command.HUMAN),
        ("Mitarbeiter", Command.HUMAN),
        ("talk to a human", Command.HUMAN),
        ("mit einem Mitarbeiter sprechen", Command.HUMAN),
        ("stop", Command.STOP),
        ("STOP", Command.STOP),
        ("Stopp", Command.STOP),
        ("abmelden", Command.STOP),
        ("unsubscribe", Command.STOP),
        ("opt out", Command.STOP),
        ("start", Command.OPTIN),
        ("anmelden", Command.OPTIN),
        ("subscribe", Command.OPTIN),
        ("status", Command.STATUS),
        ("Fallstatus", Command.STATUS),
        ("mein Fall", Command.STATUS),
        ("language", Command.LANGUAGE),
        ("Sprache", Command.LANGUAGE),
    ],
)
def test_command_words_in_both_languages(text: str, command: Command) -> None:
    parsed = parse(text, None)
    assert parsed is not None and parsed.command is command


@pytest.mark.parametrize(
    ("text", "flow"),
    [("complaint", "complaint"), ("Beschwerde", "complaint"), ("Reklamation", "complaint")],
)
def test_a_flows_own_words_in_both_languages(text: str, flow: str) -> None:
    # declared with the flow (flows/complaint.py), read through flows/registry.py
    assert parse(text, None) == Parsed(Command.FLOW, flow)


@pytest.mark.parametrize(
    ("text", "arg"),
    [
        ("language de", "de"),
        ("Sprache Deutsch", "de"),
        ("deutsch", "de"),
        ("German", "de"),
        ("lang en", "en"),
        ("English", "en"),
        ("Englisch", "en"),
        ("sprache englisch", "en"),
    ],
)
def test_language_with_argument(text: str, arg: str) -> None:
    assert parse(text, None) == Parsed(Command.LANGUAGE, arg)


def test_language_without_or_with_unknown_argument() -> None:
    assert parse("Sprache", None) == Parsed(Command.LANGUAGE, None)
    assert parse("language fr", None) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/start", Parsed(Command.MENU)),
        ("/start campaign_x", Parsed(Command.MENU, "campaign_x")),
        ("/START campaign_x", Parsed(Command.MENU, "campaign_x")),
        # regression: "@botname" cut off everything after it, the argument too
        ("/start@MyBot campaign_x", Parsed(Command.MENU, "campaign_x")),
        ("/start@MyBot", Parsed(Command.MENU)),
        ("/help@MyBot", Parsed(Command.HELP)),
        ("/stop@MyBot", Parsed(Command.STOP)),
        ("/status@MyBot C-2026-000001", Parsed(Command.STATUS, "C-2026-000001")),
    ],
)
def test_telegram_slash_commands(text: str, expected: Parsed) -> None:
    assert parse(text, None) == expected


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("status C-2026-000001", "C-2026-000001"),
        ("Status c-2026-000042", "C-2026-000042"),
        ("status: C-2026-123456", "C-2026-123456"),
    ],
)
def test_status_with_reference(text: str, ref: str) -> None:
    assert parse(text, None) == Parsed(Command.STATUS, ref)


def test_status_with_something_else_is_no_command() -> None:
    assert parse("status of my order please", None) is None
    assert parse("status C-26-1", None) is None


@pytest.mark.parametrize(
    "text",
    [
        "I want to stop smoking because my doctor told me",
        "please stop",
        "stop it",
        "can you help me with my order",
        "hello, my parcel never arrived",
        "start over",
        "",
        "   ",
        "Where is my case C-2026-000042?",
    ],
)
def test_sentences_are_not_commands(text: str) -> None:
    assert parse(text, None) is None


def test_long_texts_are_never_commands() -> None:
    assert parse("stop" + " " * 57 + "x", None) is None
    padded = " " * 30 + "help" + " " * 30  # short once stripped
    assert parse(padded, None) == Parsed(Command.HELP)
    assert parse("human " + "please " * 10, None) is None
    assert len("status C-2026-000001 " + "x" * 50) > 60
    assert parse("status C-2026-000001 " + "x" * 50, None) is None


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("c:help", Parsed(Command.HELP)),
        ("c:human", Parsed(Command.HUMAN)),
        ("c:language:de", Parsed(Command.LANGUAGE, "de")),
        ("c:status:C-2026-000001", Parsed(Command.STATUS, "C-2026-000001")),
        ("c:stop", Parsed(Command.STOP)),
        ("c:complaint", Parsed(Command.FLOW, "complaint")),
        ("c:flow:complaint", Parsed(Command.FLOW, "complaint")),
        ("c:flow:link_code", None),  # started by another flow, never by a button
        ("c:flow", None),
        ("c:bogus", None),
        ("c:", None),
        ("f:complaint:category:delivery", None),
        ("help", None),
    ],
)
def test_button_payloads(payload: str, expected: Parsed | None) -> None:
    assert parse("ignored text: stop", payload) == expected


def test_payload_wins_over_text() -> None:
    assert parse("stop", "f:csat:rating:5") is None
    assert parse("help", "c:human") == Parsed(Command.HUMAN)
