"""Every flow the bot knows, and how each is started.

A flow declares its own `Trigger` (flows/model.py): a menu entry, command words, word
hints, an intent, a help line, a gate, whether campaigns may start it, what the report
counts. The dialogue router, the menu, the command parser, the campaign definitions and
the analytics ask this module; none of them names a flow. Adding a flow: its module, its
catalog entries, its tests, and its line in `FLOWS` below (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping

from flows import callback, complaint, consent, csat, language, link, winback
from flows.model import Analytics, Flow, MenuEntry, normalize

FLOWS: Mapping[str, Flow] = {
    f.name: f
    for f in (
        complaint.FLOW,
        winback.FLOW,
        csat.FLOW,
        consent.FLOW,
        language.FLOW,
        link.FLOW,
        link.CODE_FLOW,
        callback.FLOW,
    )
}

_WORDS: Mapping[str, str] = {
    normalize(word): f.name for f in FLOWS.values() for word in f.trigger.words
}
_ALIASES: Mapping[str, str] = {alias: f.name for f in FLOWS.values() for alias in f.trigger.aliases}


def get(name: str) -> Flow | None:
    return FLOWS.get(name)


def startable(name: str) -> bool:
    """A customer can ask for it (a menu entry, words, an intent or hints): "c:<name>"."""
    t = FLOWS[name].trigger if name in FLOWS else None
    return t is not None and bool(t.menu or t.words or t.intent or t.hints)


def by_word(words: str) -> str | None:
    """The flow a whole (normalized) message asks for: "beschwerde" → "complaint"."""
    return _WORDS.get(words)


def by_intent(intent: str) -> str | None:
    return next((f.name for f in FLOWS.values() if f.trigger.intent == intent), None)


def intents() -> tuple[str, ...]:
    """The intents that ask for a flow (they interrupt another flow's question too)."""
    return tuple(f.trigger.intent for f in FLOWS.values() if f.trigger.intent)


def hinted(text: str) -> str | None:
    """The first flow a word part of the free text points to ("kaputt" → "complaint")."""
    folded = text.casefold()
    for f in FLOWS.values():
        if any(h in folded for h in f.trigger.hints):
            return f.name
    return None


def menu_entries() -> list[tuple[str, MenuEntry]]:
    return [(f.name, f.trigger.menu) for f in FLOWS.values() if f.trigger.menu is not None]


def campaign_flow(name: str) -> str | None:
    """The flow a campaign's `flow:` names (an alias resolved), None if unknown."""
    name = _ALIASES.get(name, name)
    return name if name in FLOWS else None


def campaign_flows() -> tuple[str, ...]:
    return tuple(f.name for f in FLOWS.values() if f.trigger.campaign)


def surveys() -> Mapping[str, Analytics]:
    """The report's survey sections, by the survey name the flows record."""
    return {
        f.trigger.analytics.survey: f.trigger.analytics
        for f in FLOWS.values()
        if f.trigger.analytics is not None
    }
