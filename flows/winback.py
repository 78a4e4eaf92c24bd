"""Win-back survey (recovery phase): why the customer left, how satisfied they were,
what would bring them back, then a reason-specific offer from config.yaml."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flows.actions import Escalate, RecordSurvey, SetLifecycle
from flows.model import (
    Analytics,
    Answer,
    ChoiceStep,
    Context,
    Decision,
    Flow,
    Option,
    RatingStep,
    Reply,
    TextStep,
    Trigger,
    YesNoStep,
)

REASONS = ("price", "quality", "service", "competitor", "no_longer_needed", "other")


def _offer_text(answers: Mapping[str, Answer], ctx: Context) -> Mapping[str, Any]:
    reason = answers.get("reason") or "other"
    offer = ctx.options.winback.offers.get(reason)  # type: ignore[call-overload]
    return {"offer": offer.text.get(ctx.locale) if offer else ""}


def _after_reason(answers: Mapping[str, Answer]) -> str:
    return "reason_other" if answers.get("reason") == "other" else "rating"


def _finish(answers: Mapping[str, Answer], ctx: Context, extra: Mapping[str, Any]) -> Decision:
    wants_offer = answers.get("offer") == "yes"
    record = RecordSurvey("winback", dict(answers), extra.get("case_reference"))
    if wants_offer:
        return Decision(
            {},
            (Reply("winback.offer_accepted", ctx.t("winback.offer_accepted")),),
            (
                record,
                SetLifecycle("at_risk", "winback_offer_accepted"),
                Escalate("winback_offer", priority=20),
            ),
        )
    if answers.get("reason") == "no_longer_needed":
        return Decision(
            {},
            (Reply("winback.goodbye", ctx.t("winback.goodbye")),),
            (record, SetLifecycle("terminated", "winback_no_longer_needed")),
        )
    return Decision(
        {},
        (Reply("winback.thanks", ctx.t("winback.thanks")),),
        (record, SetLifecycle("lost", "winback_declined")),
    )


FLOW = Flow(
    name="winback",
    intro="winback.intro",
    steps=(
        ChoiceStep(
            "reason",
            "winback.ask_reason",
            next=_after_reason,
            choices=tuple(Option(r, f"winback.reason_{r}") for r in REASONS),
        ),
        TextStep("reason_other", "winback.ask_reason_other", next="rating", max_length=1000),
        RatingStep("rating", "winback.ask_rating", next="comeback"),
        TextStep("comeback", "winback.ask_comeback", next="offer", optional=True, max_length=2000),
        YesNoStep("offer", "winback.offer"),
    ),
    finish=_finish,
    prompt_params=_offer_text,
    trigger=Trigger(
        campaign=True, aliases=("winback_survey",), analytics=Analytics("winback", "recovery")
    ),
)
