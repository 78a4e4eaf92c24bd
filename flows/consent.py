"""Marketing consent: opt-in asks first and stores the exact text the customer saw;
opt-out ("stop", "abmelden", "unsubscribe") works at once, in every state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flows.actions import SetConsent
from flows.model import Answer, Context, Decision, Flow, Reply, Trigger, YesNoStep

PURPOSE = "marketing"


def _params(answers: Mapping[str, Answer], ctx: Context) -> Mapping[str, Any]:
    return {"company": ctx.options.company_name}


def _finish(answers: Mapping[str, Answer], ctx: Context, extra: Mapping[str, Any]) -> Decision:
    if answers.get("agree") != "yes":
        return Decision({}, (Reply("consent.optin_declined", ctx.t("consent.optin_declined")),))
    shown = ctx.t("consent.optin_question", company=ctx.options.company_name)
    return Decision(
        {},
        (Reply("consent.optin_done", ctx.t("consent.optin_done")),),
        (SetConsent(PURPOSE, True, "chat_optin", shown),),
    )


FLOW = Flow(
    name="consent",
    steps=(YesNoStep("agree", "consent.optin_question"),),
    finish=_finish,
    prompt_params=_params,
    # a customer asks with "start" / "anmelden" (Command.OPTIN, next to "stop"); an opt-in
    # campaign may ask too
    trigger=Trigger(campaign=True),
)


def opt_out(ctx: Context) -> Decision:
    shown = ctx.t("consent.optout_done")
    return Decision(
        {},
        (Reply("consent.optout_done", shown),),
        (SetConsent(PURPOSE, False, "chat_optout", shown),),
    )
