"""Message catalogs: everything the bot says, per locale, from flows/locales/*.yaml.

Templates are ours; customer text only ever fills a placeholder and is never
itself treated as a template, so "{x}" typed by a customer stays literal.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

LOCALES = ("de", "en")
LOCALE_DIR = Path(__file__).parent / "locales"


class CatalogError(Exception):
    pass


def _flatten(prefix: str, node: Any, out: dict[str, str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(node, str):
        out[prefix] = node
    else:
        raise CatalogError(f"{prefix}: expected text, got {type(node).__name__}")


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


class Catalog:
    def __init__(self, messages: Mapping[str, Mapping[str, str]], default_locale: str = "en"):
        self.messages = {loc: dict(m) for loc, m in messages.items()}
        self.default_locale = default_locale

    @classmethod
    def load(cls, directory: Path = LOCALE_DIR, default_locale: str = "en") -> Catalog:
        messages: dict[str, dict[str, str]] = {}
        for loc in LOCALES:
            flat: dict[str, str] = {}
            _flatten("", yaml.safe_load((directory / f"{loc}.yaml").read_text("utf-8")), flat)
            messages[loc] = flat
        return cls(messages, default_locale)

    def has(self, key: str) -> bool:
        return key in self.messages[self.default_locale]

    def label(self, locale: str, group: str, code: str) -> str:
        """A code's label ("reasons.callback" → "callback requested"), or the code made
        readable when the catalog has none ("new_reason" → "New reason")."""
        if self.has(f"{group}.{code}"):
            return self.text(locale, f"{group}.{code}")
        words = code.replace("_", " ")
        return words[:1].upper() + words[1:]

    def group(self, locale: str, group: str) -> dict[str, str]:
        """Every label of a group in one locale, by code (the default locale's where the
        locale has none)."""
        prefix = group + "."
        return {
            key.removeprefix(prefix): self.text(locale, key)
            for key in self.messages[self.default_locale]
            if key.startswith(prefix)
        }

    def text(self, locale: str, key: str, **params: Any) -> str:
        table = self.messages.get(locale) or self.messages[self.default_locale]
        template = table.get(key) or self.messages[self.default_locale].get(key)
        if template is None:
            raise CatalogError(f"no message {key!r}")
        # format_map substitutes values verbatim: braces inside a value are not re-parsed
        return template.format_map({k: "" if v is None else v for k, v in params.items()})


@cache
def default_catalog() -> Catalog:
    return Catalog.load()


def normalize_locale(hint: str | None, fallback: str = "en") -> str:
    """'de-DE', 'de_AT', 'DE' → 'de'; anything unsupported → fallback."""
    if not hint:
        return fallback
    base = hint.replace("_", "-").split("-")[0].lower()
    return base if base in LOCALES else fallback
