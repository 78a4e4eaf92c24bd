"""Complaint intake (Beschwerdemanagement): category, description, reference,
severity, desired resolution, confirmation → a case with a reference number."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flows import service_level
from flows.actions import Escalate, OpenCase
from flows.model import (
    Answer,
    ChoiceStep,
    Context,
    Decision,
    Flow,
    MenuEntry,
    Option,
    Reply,
    TextStep,
    Trigger,
    YesNoStep,
    start,
)

SEVERITIES = ("low", "medium", "high", "critical")


def _categories(ctx: Context) -> Sequence[Option]:
    return tuple(Option(c.id, label=c.label) for c in ctx.options.complaint.categories)


def _resolutions(ctx: Context) -> Sequence[Option]:
    return tuple(Option(r.id, label=r.label) for r in ctx.options.complaint.resolutions)


def _label(options: Sequence[Option], value: Answer, ctx: Context) -> str:
    for o in options:
        if o.value == value:
            return o.text(ctx)
    return value or "–"


def _summary(answers: Mapping[str, Answer], ctx: Context) -> Mapping[str, Any]:
    return {
        "category": _label(_categories(ctx), answers.get("category"), ctx),
        "description": answers.get("description") or "",
        "reference": answers.get("reference") or "–",
        "severity": ctx.t(f"complaint.severity_{answers.get('severity', 'low')}"),
        "resolution": _label(_resolutions(ctx), answers.get("resolution"), ctx),
    }


def _finish(answers: Mapping[str, Answer], ctx: Context, extra: Mapping[str, Any]) -> Decision:
    if answers.get("confirm") != "yes":
        return Decision({}, (Reply("complaint.discarded", ctx.t("complaint.discarded")),))
    severity = str(answers["severity"])
    opts = ctx.options.complaint
    escalate = (
        severity in opts.escalate_severities or ctx.contact.value_segment in opts.escalate_segments
    )
    action = OpenCase(
        category=str(answers["category"]),
        description=str(answers["description"]),
        severity=severity,
        order_reference=answers.get("reference"),
        desired_resolution=answers.get("resolution"),
        escalate=escalate,
        priority=service_level.case_priority(severity, ctx.contact.value_segment),
        due_at=service_level.due_at(ctx.now, opts.sla_hours[severity], ctx.hours),  # type: ignore[index]
    )
    # the confirmation with the case reference (and the due time) is said by the engine
    # once the case exists, before what is said here
    if not escalate:
        return Decision({}, (), (action,))
    urgent = Escalate("complaint", service_level.escalation_weight(severity))
    return Decision(
        {}, (Reply("escalation.priority", ctx.t("escalation.priority")),), (action, urgent)
    )


FLOW = Flow(
    name="complaint",
    intro="complaint.intro",
    steps=(
        ChoiceStep("category", "complaint.ask_category", next="description", choices=_categories),
        TextStep("description", "complaint.ask_description", next="reference", min_length=10),
        TextStep(
            "reference", "complaint.ask_reference", next="severity", optional=True, max_length=200
        ),
        ChoiceStep(
            "severity",
            "complaint.ask_severity",
            next="resolution",
            choices=tuple(Option(s, f"complaint.severity_{s}") for s in SEVERITIES),
        ),
        ChoiceStep("resolution", "complaint.ask_resolution", next="confirm", choices=_resolutions),
        YesNoStep("confirm", "complaint.confirm"),
    ),
    finish=_finish,
    prompt_params=_summary,
    trigger=Trigger(
        menu=MenuEntry("menu.complaint", order=20),
        words=("complaint", "beschwerde", "reklamation", "complain"),
        hints=("beschwer", "reklamation", "complain", "kaputt", "defekt", "broken", "damaged"),
        intent="complaint",
        leaves_queue=True,
    ),
)


def begin(ctx: Context) -> Decision:
    return start(FLOW, ctx)
