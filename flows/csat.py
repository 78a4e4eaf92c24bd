"""Satisfaction survey (CSAT 1–5 and a comment) about a resolved case."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flows.actions import Escalate, RecordSurvey
from flows.model import (
    Analytics,
    Answer,
    Context,
    Decision,
    Flow,
    RatingStep,
    Reply,
    TextStep,
    Trigger,
)


def _params(answers: Mapping[str, Answer], ctx: Context) -> Mapping[str, Any]:
    return {}


def _finish(answers: Mapping[str, Answer], ctx: Context, extra: Mapping[str, Any]) -> Decision:
    rating = int(answers["rating"] or 0)
    record = RecordSurvey("csat", dict(answers), extra.get("case_reference"))
    if rating <= 2:
        # service recovery: an unhappy customer hears from a person, not a form letter
        return Decision(
            {},
            (Reply("csat.sorry", ctx.t("csat.sorry")),),
            (record, Escalate("low_csat", priority=30)),
        )
    return Decision({}, (Reply("csat.thanks", ctx.t("csat.thanks")),), (record,))


FLOW = Flow(
    name="csat",
    intro="csat.intro",
    steps=(
        RatingStep("rating", "csat.ask_rating", next="comment"),
        TextStep("comment", "csat.ask_comment", optional=True, max_length=2000),
    ),
    finish=_finish,
    prompt_params=_params,
    trigger=Trigger(
        campaign=True, aliases=("csat_survey",), analytics=Analytics("csat", "satisfaction")
    ),
)
