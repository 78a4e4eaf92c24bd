"""Global commands, understood in every state and in German and English.

The built-in commands are the enum; a flow's own words start it (`Command.FLOW` with the
flow's name): they are declared with the flow and read from flows/registry.py."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from flows import registry
from flows.model import normalize


class Command(StrEnum):
    HELP = "help"
    MENU = "menu"
    CANCEL = "cancel"
    HUMAN = "human"
    STOP = "stop"  # withdraw marketing consent
    OPTIN = "optin"  # grant marketing consent (asks first)
    STATUS = "status"
    LANGUAGE = "language"
    FAQ = "faq"
    FLOW = "flow"  # start the registered flow named by the argument


@dataclass(frozen=True)
class Parsed:
    command: Command
    arg: str | None = None


CASE_REF_RE = re.compile(r"\bC-\d{4}-\d{6}\b", re.IGNORECASE)

WORDS: dict[str, Command] = {
    **dict.fromkeys(["help", "hilfe", "?", "hilfe bitte"], Command.HELP),
    **dict.fromkeys(
        [
            "menu",
            "menü",
            "hauptmenü",
            "main menu",
            "hallo",
            "hello",
            "hi",
            "hey",
            "moin",
            "servus",
            "guten tag",
        ],
        Command.MENU,
    ),
    **dict.fromkeys(["cancel", "abbrechen", "abbruch", "quit"], Command.CANCEL),
    **dict.fromkeys(
        [
            "human",
            "agent",
            "mensch",
            "mitarbeiter",
            "mitarbeiterin",
            "operator",
            "person",
            "talk to a human",
            "speak to a human",
            "talk to an agent",
            "speak to an agent",
            "real person",
            "a human please",
            "mit einem menschen sprechen",
            "mit einem mitarbeiter sprechen",
            "echter mensch",
            "kundenberater",
        ],
        Command.HUMAN,
    ),
    **dict.fromkeys(
        ["stop", "stopp", "abmelden", "unsubscribe", "opt out", "optout"], Command.STOP
    ),
    **dict.fromkeys(["start", "anmelden", "subscribe", "opt in", "optin"], Command.OPTIN),
    **dict.fromkeys(
        ["status", "case status", "fallstatus", "mein fall", "my case"], Command.STATUS
    ),
    **dict.fromkeys(["language", "sprache", "lang"], Command.LANGUAGE),
    **dict.fromkeys(["deutsch", "german"], Command.LANGUAGE),
    **dict.fromkeys(["english", "englisch"], Command.LANGUAGE),
}
LANGUAGE_ARG = {
    "deutsch": "de",
    "german": "de",
    "english": "en",
    "englisch": "en",
    "de": "de",
    "en": "en",
}


def parse(text: str, payload: str | None) -> Parsed | None:
    """A command from a button payload ("c:NAME[:ARG]") or from the whole message text."""
    if payload is not None:
        if not payload.startswith("c:"):
            return None
        _, _, rest = payload.partition(":")
        name, _, arg = rest.partition(":")
        if registry.startable(name):  # "c:complaint": a flow's menu button
            return Parsed(Command.FLOW, name)
        try:
            parsed = Parsed(Command(name), arg or None)
        except ValueError:
            return None
        if parsed.command is Command.FLOW and not registry.startable(arg):
            return None
        return parsed
    raw = text.strip()
    if len(raw) > 60:
        return None
    words = normalize(raw.lstrip("/"))
    if raw.startswith("/"):
        # Telegram's /cmd@botname, maybe with an argument ("/start@bot campaign_x")
        head, sep, tail = words.partition(" ")
        words = head.split("@")[0] + sep + tail
    if raw == "?":
        return Parsed(Command.HELP)
    if raw.startswith("/") and words.split(" ")[0] == "start":
        # Telegram's /start (with an optional deep-link payload) opens the menu; a bare
        # "start" is the SMS-style opt-in keyword
        return Parsed(Command.MENU, words.partition(" ")[2] or None)
    if words in WORDS:
        cmd = WORDS[words]
        if cmd is Command.LANGUAGE and words in LANGUAGE_ARG:
            return Parsed(cmd, LANGUAGE_ARG[words])
        return Parsed(cmd)
    flow = registry.by_word(words)
    if flow is not None:
        return Parsed(Command.FLOW, flow)
    first, _, rest = words.partition(" ")
    if first in ("language", "sprache", "lang") and rest in LANGUAGE_ARG:
        return Parsed(Command.LANGUAGE, LANGUAGE_ARG[rest])
    if first == "status":
        m = CASE_REF_RE.search(raw)
        if m:
            return Parsed(Command.STATUS, m.group(0).upper())
    return None
