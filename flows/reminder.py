"""The reminder for an abandoned flow: re-ask the question the customer left open.

Pure: (flow state, context) → Decision, or None when there is nothing to remind of (no
flow running, an unknown flow or step, or this flow instance was reminded already). The
state it returns marks the flow instance as reminded; `advance` keeps the mark while the
flow runs and a new flow starts without it, so one instance is reminded at most once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flows.model import Context, Decision, Reply, prompt
from flows.registry import FLOWS

REMINDED = "reminded"


def current_prompt(state: Mapping[str, Any], ctx: Context) -> tuple[Reply, ...]:
    """The running flow's current question, as it was asked (with its buttons)."""
    flow = FLOWS.get(str(state.get("flow") or ""))
    if flow is None:
        return ()
    try:
        step = flow.step(str(state.get("step")))
    except KeyError:
        return ()
    answers = state.get("answers")
    return prompt(flow, step, answers if isinstance(answers, Mapping) else {}, ctx)


def remind(state: Mapping[str, Any], ctx: Context) -> Decision | None:
    if state.get(REMINDED):
        return None
    ask = current_prompt(state, ctx)
    if not ask:
        return None
    intro = Reply("reminder.intro", ctx.t("reminder.intro"))
    return Decision({**state, REMINDED: True}, (intro, *ask))
