"""Hypothesis strategies for Telegram updates, generated from the Bot API's machine-readable
spec (tests/fixtures/telegram/spec/api.json).

An update has `update_id` and exactly one of the other fields (the spec: "at most one of
the optional fields can be present"); an object has its required fields always and its
optional ones sometimes, fewer the deeper it sits; a type with subtypes is one of them;
a field the spec fixes (`always "bold"`) or enumerates (`can be either "private", ...`)
takes those values. Rich text (Bot API 10's `rich_message`) gets its own strategy with
formatting nested up to `deep` levels, the shape that once froze the bot.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

SPEC = json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures/telegram/spec/api.json").read_text("utf-8")
)
TYPES: dict[str, Any] = SPEC["types"]
ALWAYS = re.compile(r'always [“"]([^”"]+)[”"]')
CHOICES = re.compile(r"(?:can be|one of|either)[^.]*")
QUOTED = re.compile(r'[“"]([^”"]+)[”"]')
OPTIONAL_UNTIL = 3  # objects nested deeper than this get their required fields only
LEAF_FROM = 6  # from here on, a union takes a primitive member where it has one

PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "Integer": st.integers(-(2**40), 2**40),
    "String": st.text(max_size=12),
    "Boolean": st.booleans(),
    "True": st.just(True),
    "Float": st.floats(-1e6, 1e6, allow_nan=False),
}


def _field(field: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
    fixed = ALWAYS.search(field["description"])
    if fixed and field["types"] == ["String"]:
        return st.just(fixed.group(1))
    choices = CHOICES.search(field["description"])
    if choices and field["types"] == ["String"]:
        values = QUOTED.findall(choices.group(0))
        if len(values) > 1:
            return st.sampled_from(values)
    return st.one_of([of_type(t, depth) for t in field["types"]])


@cache
def of_type(name: str, depth: int = 0) -> st.SearchStrategy[Any]:
    """A value of the spec's type `name` ("Message", "Array of PhotoSize", "Integer")."""
    if name.startswith("Array of "):
        return st.lists(of_type(name.removeprefix("Array of "), depth + 1), max_size=2)
    if name in PRIMITIVES:
        return PRIMITIVES[name]
    spec = TYPES[name]
    if spec.get("subtypes"):
        members = spec["subtypes"]
        if depth >= LEAF_FROM and any(m in PRIMITIVES for m in members):
            members = [m for m in members if m in PRIMITIVES]
        return st.deferred(lambda: st.one_of([of_type(m, depth + 1) for m in members]))
    fields = spec.get("fields", [])
    required = {f["name"]: _field(f, depth + 1) for f in fields if f["required"]}
    optional = (
        {f["name"]: _field(f, depth + 1) for f in fields if not f["required"]}
        if depth < OPTIONAL_UNTIL
        else {}
    )
    return st.deferred(lambda: st.fixed_dictionaries(required, optional=optional))


def updates() -> st.SearchStrategy[dict[str, Any]]:
    """Any update the spec describes."""
    kinds = [f for f in TYPES["Update"]["fields"] if f["name"] != "update_id"]
    return st.one_of(
        [
            st.fixed_dictionaries(
                {"update_id": st.integers(1, 2**31), f["name"]: of_type(f["types"][0], 1)}
            )
            for f in kinds
        ]
    )


CUSTOMER_KINDS = ("message", "edited_message", "callback_query", "my_chat_member")


@st.composite
def customer_updates(draw: st.DrawFn) -> dict[str, Any]:
    """An update of a kind the bot answers, from the spec, in a private chat with a person
    (most spec-drawn chats are groups or channels, which the bot only records)."""
    kind = draw(st.sampled_from(CUSTOMER_KINDS))
    field = next(f for f in TYPES["Update"]["fields"] if f["name"] == kind)
    event = draw(of_type(field["types"][0], 1))
    user = draw(of_type("User", 2))
    user["is_bot"] = False
    event["from"] = user
    message = event if kind != "callback_query" else event.get("message")
    if isinstance(message, dict) and isinstance(message.get("chat"), dict):
        message["chat"] = {**message["chat"], "id": user["id"], "type": "private"}
        if "from" in message and kind == "callback_query":
            message["from"] = {**message["from"], "is_bot": True}  # the bot's own message
    return {"update_id": draw(st.integers(1, 2**31)), kind: event}


def weighted(*strategies: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One of the strategies, each as likely (st.one_of would flatten nested unions)."""
    return st.integers(0, len(strategies) - 1).flatmap(lambda i: strategies[i])


FORMATS = [
    t
    for t in TYPES["RichText"]["subtypes"]
    if t.startswith("RichText") and any(f["name"] == "text" for f in TYPES[t]["fields"])
]


@st.composite
def rich_text(draw: st.DrawFn, deep: int) -> Any:
    """RichText with formatting nested `deep` levels on one path (and branches beside it)."""
    node: Any = draw(st.text(min_size=1, max_size=8))
    for _ in range(deep):
        kind = TYPES[draw(st.sampled_from(FORMATS))]
        fields = {f["name"]: f for f in kind["fields"]}
        obj = {"type": ALWAYS.search(fields["type"]["description"]).group(1), "text": node}  # type: ignore[union-attr]
        for name, f in fields.items():
            if f["required"] and name not in obj:
                obj[name] = draw(_field(f, LEAF_FROM))
        node = [obj, draw(st.text(max_size=5))] if draw(st.booleans()) else obj
    return node


@st.composite
def rich_updates(draw: st.DrawFn, template: dict[str, Any], max_deep: int = 20) -> dict[str, Any]:
    """A customer's private message (from `template`, a captured update) or a guest message
    carrying a rich_message whose formatting is nested up to `max_deep` levels."""
    update = json.loads(json.dumps(template))
    message = update.pop("message")
    deep = draw(st.integers(1, max_deep))
    paragraphs = draw(st.integers(1, 3))
    message["rich_message"] = {
        "blocks": [{"type": "paragraph", "text": draw(rich_text(deep))} for _ in range(paragraphs)]
    }
    update[draw(st.sampled_from(["message", "guest_message"]))] = message
    return update
