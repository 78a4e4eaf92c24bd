"""Switch the language the bot speaks with this customer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flows.actions import SetLocale
from flows.model import Answer, ChoiceStep, Context, Decision, Flow, Option, Reply
from flows.options import LocalizedText

OPTIONS = (
    Option("de", label=LocalizedText(de="Deutsch", en="Deutsch"), aliases=("german", "deutsch")),
    Option("en", label=LocalizedText(de="English", en="English"), aliases=("englisch", "english")),
)


def switch(ctx: Context, locale: str) -> Decision:
    # confirm in the new language
    return Decision(
        {},
        (Reply("language.switched", ctx.catalog.text(locale, "language.switched")),),
        (SetLocale(locale),),
    )


def _finish(answers: Mapping[str, Answer], ctx: Context, extra: Mapping[str, Any]) -> Decision:
    return switch(ctx, str(answers["locale"]))


FLOW = Flow(
    name="language",
    steps=(ChoiceStep("locale", "language.ask", choices=OPTIONS),),
    finish=_finish,
)
