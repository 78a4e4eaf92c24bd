"""Request a callback: a phone number and a time window in business hours, confirmed;
the conversation then waits in the agents' queue (reason "callback"), where whoever
claims it finds the number and the window in the history and calls.

Added by following the flow registry (docs/architecture.md, "Add a flow"): this module,
its `callback:` catalog entries, its tests and its line in flows/registry.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flows.actions import Escalate
from flows.hours import BusinessHours
from flows.model import (
    Answer,
    ChoiceStep,
    Context,
    Decision,
    Flow,
    Invalid,
    MenuEntry,
    Option,
    Reply,
    Step,
    Trigger,
    UserInput,
    YesNoStep,
)
from flows.options import LocalizedText

WINDOWS = 4  # time windows offered
NOON = 12  # a day's opening span is offered as a morning and an afternoon window
PRIORITY = 20  # as a customer asking for a person
PHONE_RE = re.compile(r"\+?[0-9]{6,15}")


@dataclass(frozen=True)
class PhoneStep(Step):
    def parse(self, inp: UserInput, ctx: Context) -> Answer:
        # "+49 (30) 1234-567", "030/1234567": what people type; kept as digits and a "+"
        phone = re.sub(r"[\s()./-]+", "", inp.text)
        if not PHONE_RE.fullmatch(phone):
            raise Invalid("callback.phone_format")
        return phone


def windows(hours: BusinessHours, now: datetime) -> list[tuple[datetime, datetime]]:
    """The next business-hours windows that have not ended: each opening span, split at
    noon, in the business time zone."""
    tz = ZoneInfo(hours.timezone)
    local = now.astimezone(tz)
    found: list[tuple[datetime, datetime]] = []
    for offset in range(30):
        day = local.date() + timedelta(days=offset)
        for a, b in hours.spans(day):
            start, end = datetime.combine(day, a, tz), datetime.combine(day, b, tz)
            noon = datetime.combine(day, time(NOON), tz)
            halves = [(start, noon), (noon, end)] if start < noon < end else [(start, end)]
            found += [(s, e) for s, e in halves if e > local]
            if len(found) >= WINDOWS:
                return found[:WINDOWS]
    return found


def _label(start: datetime, end: datetime, locale: str, ctx: Context) -> str:
    day = ctx.catalog.text(locale, "callback.weekdays").split()[start.weekday()]
    date = start.strftime("%d.%m." if locale == "de" else "%d/%m")
    return ctx.catalog.text(
        locale, "callback.window", day=day, date=date, start=f"{start:%H:%M}", end=f"{end:%H:%M}"
    )


def _windows(ctx: Context) -> Sequence[Option]:
    # without configured business hours: the usual ones (Mon-Fri 08:00-18:00)
    spans = windows(ctx.hours or BusinessHours(), ctx.now)
    return tuple(
        Option(
            f"{s:%Y%m%d%H%M}-{e:%H%M}",
            label=LocalizedText(de=_label(s, e, "de", ctx), en=_label(s, e, "en", ctx)),
        )
        for s, e in spans
    )


def _chosen(answers: Mapping[str, Answer], ctx: Context) -> Mapping[str, Any]:
    when = next((o.text(ctx) for o in _windows(ctx) if o.value == answers.get("when")), "")
    return {"phone": answers.get("phone") or "", "when": when}


def _finish(answers: Mapping[str, Answer], ctx: Context, extra: Mapping[str, Any]) -> Decision:
    if answers.get("confirm") != "yes":
        return Decision({}, (Reply("callback.discarded", ctx.t("callback.discarded")),))
    text = ctx.t("callback.confirmed", **_chosen(answers, ctx))
    return Decision({}, (Reply("callback.confirmed", text),), (Escalate("callback", PRIORITY),))


FLOW = Flow(
    name="callback",
    intro="callback.intro",
    steps=(
        PhoneStep("phone", "callback.ask_phone", next="when"),
        ChoiceStep("when", "callback.ask_when", next="confirm", choices=_windows),
        YesNoStep("confirm", "callback.confirm"),
    ),
    finish=_finish,
    prompt_params=_chosen,
    trigger=Trigger(
        menu=MenuEntry("callback.menu", order=60),
        words=("callback", "call back", "call me back", "rückruf", "rückruf bitte"),
        help="callback.help",
    ),
)
