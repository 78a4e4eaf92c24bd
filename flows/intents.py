"""Built-in intents: what a customer means when it is not a question for the knowledge base.

The intents are data (flows/intents.yaml, extended by a company's `intent_files`) and are
matched together with the knowledge base's entries (flows/knowledge.py), so their
confidence is calibrated the same way. Here: loading and merging them, and what each
one leads to. A message without a letter or digit ("😀👍", "...") is noise without asking
the matcher. Noise, thanks, goodbyes and a yes or no outside a question are never a
failed question: they get a short reply and do not count toward handing over to a person.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter

from flows.commands import Command
from flows.knowledge import Match, Matcher, fold
from flows.model import Context, UserInput
from flows.options import Intent, KnowledgeEntry

BUILTIN_FILE = Path(__file__).with_name("intents.yaml")

# intents that are requests: the built-in command they stand for (an intent that asks
# for a flow, "complaint", is declared with the flow: flows/registry.py)
COMMANDS: Mapping[str, Command] = {
    "human": Command.HUMAN,
    "status": Command.STATUS,
    "stop": Command.STOP,
    "start": Command.OPTIN,
    "greeting": Command.MENU,
}
# intents that are no question at all: the catalog key of the short reply
SMALL_TALK: Mapping[str, str] = {
    "thanks": "smalltalk.thanks",
    "goodbye": "smalltalk.goodbye",
    "yes": "smalltalk.yes",
    "no": "smalltalk.no",
    "noise": "smalltalk.noise",
}


def parse_intents(data: Any, where: str) -> list[Intent]:
    """The intents of a loaded YAML document (`intents:` list). ValueError names `where`;
    pydantic's ValidationError locates a bad item by its index."""
    if not isinstance(data, dict) or set(data) != {"intents"}:
        raise ValueError(f"{where}: expected a mapping with one key, `intents:` (a list)")
    return _INTENTS.validate_python(data["intents"])


_INTENTS = TypeAdapter(list[Intent])


@cache
def builtin() -> tuple[Intent, ...]:
    text = BUILTIN_FILE.read_text("utf-8")
    # libyaml's parser where PyYAML has it: the pure-Python one takes a visible part of a second
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    data = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    return tuple(parse_intents(data, "intents.yaml"))


def merge(base: Iterable[Intent], extra: Iterable[Intent]) -> list[Intent]:
    """`extra` adds examples to the intents of `base` (or new ones); a min_confidence it
    sets replaces the base's. An example already there is not added twice."""
    merged: dict[str, Intent] = {i.id: i for i in base}
    for add in extra:
        have = merged.get(add.id)
        if have is None:
            merged[add.id] = add
            continue
        known = {fold(e) for e in have.examples}
        examples = [*have.examples, *(e for e in add.examples if fold(e) not in known)]
        floor = add.min_confidence if "min_confidence" in add.model_fields_set else None
        merged[add.id] = have.model_copy(
            update={"examples": examples, "min_confidence": floor or have.min_confidence}
        )
    return list(merged.values())


MAX_COUNTER_EXAMPLES = 3000  # bounds the intent matcher's size on a big knowledge base


def with_counter_examples(
    intents: Sequence[Intent], entries: Sequence[KnowledgeEntry], limit: int = MAX_COUNTER_EXAMPLES
) -> list[Intent]:
    """The intents the intent matcher learns: the knowledge base's examples join "other",
    so that a question the knowledge base answers is not taken for an intent. A big base
    gives at most `limit`, taken from every entry in turn."""
    taken = {fold(e) for i in intents if i.id != "other" for e in i.examples}
    columns = [[ex for ex in e.examples if fold(ex) not in taken] for e in entries]
    extra: list[str] = []
    for row in itertools.zip_longest(*columns):
        extra.extend(ex for ex in row if ex is not None)
    if not extra:
        return list(intents)
    return merge(intents, [Intent(id="other", examples=extra[:limit])])


@dataclass(frozen=True)
class Understood:
    """What a free-text message is: an intent (when sure), else the knowledge base's best
    match (None when nothing matched or the best guess was an intent below its floor)."""

    intent: str | None
    match: Match | None
    confidence: float = 0.0


def understand(inp: UserInput, ctx: Context) -> Understood:
    """The intents first, then the knowledge base, on a typed message (no button, no
    command)."""
    text = inp.text.strip()
    if inp.payload is not None or not text:
        return Understood(None, None)
    if not fold(text):  # emoji, punctuation: nothing to answer
        return Understood("noise", None, 1.0)
    if ctx.matcher is None:
        return Understood(None, None)
    hit = recognise(ctx.matcher, text, ctx.options.knowledge_base.threshold)
    if hit is not None:
        return Understood(hit.entry.id, hit, hit.confidence)
    match = ctx.matcher.best(text)
    return Understood(None, match, match.confidence if match else 0.0)


def recognise(matcher: Matcher, text: str, threshold: float) -> Match | None:
    """The intent `matcher.intents` is sure of (at the intent's floor, else `threshold`)."""
    hit = matcher.intents.best(text) if matcher.intents is not None else None
    if hit is None or not isinstance(hit.entry, Intent) or hit.entry.id == "other":
        return None
    return hit if hit.confidence >= floor(hit.entry, threshold) else None


def floor(intent: Intent, threshold: float) -> float:
    return intent.min_confidence or threshold


def reply_meta(understood: Understood) -> dict[str, Any]:
    return {"intent": understood.intent, "confidence": round(understood.confidence, 3)}
