"""What a campaign is: the `campaigns:` list in config.yaml, and the body of the API's
campaign routes. Validated at start like every other setting."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flows import registry

EVENTS = ("case_resolved", "became_lost", "flow_abandoned")
MARKETING = "marketing"
# a delivery's status: sent, skipped (with a reason), or deferred (a resumed run tries again)
SENT, DEFERRED, SKIPPED = "sent", "deferred", "skipped"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Audience(_Strict):
    """A rule over contacts, compiled to SQL (bot.campaigns.audience.audience_query). All given
    conditions must hold; `any_of` holds when at least one of its rules does."""

    lifecycle_phase: list[str] | None = None
    inactive_days: int | None = Field(default=None, ge=1)
    value_segment: list[str] | None = None
    case_resolved_days_ago: float | None = Field(default=None, ge=0)  # at least that long ago
    reachable_on: list[str] | None = None  # some reachable identity on one of these channels
    attributes: dict[str, str | int | bool] | None = None  # equality on contact attributes
    any_of: list[Audience] | None = None


class Trigger(_Strict):
    """Exactly one of: `cron` (five fields, company time zone), `at` (once), or `after`
    (an event: the campaign is checked every `check_minutes` for contacts whose event
    happened `days` ago; each event is followed up once). `flow_abandoned`: a flow still
    running in a conversation with the bot whose customer has not written for `days`."""

    cron: str | None = None
    at: datetime | None = None
    after: Literal["case_resolved", "became_lost", "flow_abandoned"] | None = None
    days: float = Field(default=0, ge=0)
    check_minutes: int = Field(default=60, ge=1, le=24 * 60)
    lookback_days: float = Field(default=7, gt=0)  # how late a missed event is still followed up

    @model_validator(mode="after")
    def _one(self) -> Trigger:
        given = [k for k in ("cron", "at", "after") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of cron, at, after")
        if self.cron is not None:
            if len(self.cron.split()) != 5:
                raise ValueError(
                    f"cron {self.cron!r} must have five fields: min hour day month dow"
                )
            crontab_weekdays(self.cron.split()[4])
        if self.at is not None and self.at.tzinfo is None:
            self.at = self.at.replace(tzinfo=UTC)
        return self


class CampaignSettings(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    description: str = ""
    enabled: bool = True
    purpose: Literal["service", "marketing"] = "service"
    # the flow to start; for a flow_abandoned reminder: only reminders of this flow (None: any)
    flow: str | None = None
    audience: Audience = Audience()
    trigger: Trigger | None = None  # None: only run by hand (CLI, API)
    # the last channel the customer used and can be reached on, then these in order
    channels: list[str] = ["last_used"]
    rate_per_second: float = Field(default=10.0, gt=0)
    quiet_hours: str | None = "21:00-08:00"  # in the contact's time zone; None = none
    frequency_cap: int = Field(default=4, ge=1)  # campaign messages per contact in 30 days
    cooldown_days: float = Field(default=30, ge=0)  # this campaign again for the same contact
    # consent: a granted marketing consent. existing_customer: email only, no consent needed
    # but no opt-out recorded (the opt-out notice goes with every message). service: a
    # service message (a survey about the customer's own case); opt-outs are still honoured
    legal_basis: Literal["consent", "existing_customer", "service"] = "service"

    @field_validator("flow")
    @classmethod
    def _flow(cls, v: str | None) -> str | None:
        if v is None:
            return v
        name = registry.campaign_flow(v)  # a flow's alias ("csat_survey") resolved
        if name is None:
            known = ", ".join(sorted(registry.FLOWS))
            raise ValueError(f"unknown flow {v!r} (known: {known})")
        return name

    @field_validator("quiet_hours")
    @classmethod
    def _quiet(cls, v: str | None) -> str | None:
        if v is not None:
            quiet_span(v)
        return v

    @property
    def reminder(self) -> bool:
        """Re-asks a running flow's question instead of starting a flow."""
        return self.trigger is not None and self.trigger.after == "flow_abandoned"

    @model_validator(mode="after")
    def _basis(self) -> CampaignSettings:
        if self.reminder and self.purpose != "service":
            raise ValueError("a flow_abandoned reminder is a service message: purpose service")
        if self.flow is None and not self.reminder:
            raise ValueError("flow is required (only a flow_abandoned reminder may omit it)")
        if (
            self.flow is not None
            and not self.reminder
            and self.flow not in registry.campaign_flows()
        ):
            # a reminder only filters by the flow; a campaign starts it
            allowed = ", ".join(registry.campaign_flows())
            raise ValueError(
                f"flow {self.flow!r} is not started by campaigns (they start: {allowed})"
            )
        if self.purpose == "marketing" and self.legal_basis == "service":
            raise ValueError("a marketing campaign needs legal_basis consent or existing_customer")
        if self.legal_basis == "existing_customer" and self.channels != ["email"]:
            raise ValueError(
                "legal_basis existing_customer is allowed on email only: channels: [email]"
            )
        return self

    def definition(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def crontab_weekdays(field: str) -> str:
    """A crontab day-of-week field (0 or 7 = Sunday, names, ranges, lists, steps) as day
    names: APScheduler 3 counts 0 as Monday, so "0 10 * * 2" would run on Wednesdays."""
    if field == "*":
        return field

    def day(token: str) -> int:
        token = token.strip().lower()
        if token[:3] in WEEKDAYS and len(token) >= 3:
            return WEEKDAYS.index(token[:3])
        if token.isdecimal() and 0 <= int(token) <= 7:
            return int(token) % 7
        raise ValueError(f"day of week {token!r} must be 0-7 or sun..sat")

    days: set[int] = set()
    for part in field.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdecimal() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"bad step in day of week {part!r}")
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            a, b = base.split("-", 1)
            first, last = day(a), day(b)
            if b.strip() == "7":
                last = 7
            if last < first:
                raise ValueError(f"day of week range {base!r} runs backwards")
        else:
            first = last = day(base)
            if step is not None:
                last = 6
        days.update(d % 7 for d in range(first, last + 1, step or 1))
    return ",".join(WEEKDAYS[d] for d in sorted(days))


def quiet_span(text: str) -> tuple[time, time]:
    m = re.fullmatch(r"\s*(\d{1,2}:\d{2})\s*-\s*(\d{1,2}:\d{2})\s*", text)
    if not m:
        raise ValueError(f"quiet_hours {text!r} must look like 21:00-08:00")
    return time.fromisoformat(m.group(1).zfill(5)), time.fromisoformat(m.group(2).zfill(5))


def in_quiet_hours(span: str | None, now: datetime, tz: str | None, default_tz: str) -> bool:
    """Whether `now` falls in the quiet span in the contact's time zone (spans may wrap
    midnight: 21:00-08:00)."""
    if span is None:
        return False
    start, end = quiet_span(span)
    try:
        zone = ZoneInfo(tz or default_tz)
    except (KeyError, ValueError):
        zone = ZoneInfo(default_tz)
    local = now.astimezone(zone).time()
    if start <= end:
        return start <= local < end
    return local >= start or local < end


def builtin_campaigns(reminder_after_hours: float = 24) -> list[CampaignSettings]:
    """The follow-ups every installation has unless config.yaml redefines or disables them."""
    return [
        CampaignSettings(
            name="csat",
            description="satisfaction survey two days after a case is resolved",
            flow="csat",
            trigger=Trigger(after="case_resolved", days=2),
            audience=Audience(case_resolved_days_ago=2),
            cooldown_days=0,
        ),
        CampaignSettings(
            name="winback",
            description="win-back survey for contacts inactive 90 days or lost",
            purpose="marketing",
            legal_basis="consent",
            flow="winback",
            trigger=Trigger(cron="0 10 * * 2"),
            audience=Audience(
                lifecycle_phase=["active", "at_risk", "lost"],
                any_of=[Audience(inactive_days=90), Audience(lifecycle_phase=["lost"])],
            ),
            cooldown_days=90,
        ),
        CampaignSettings(
            name="reminder",
            description="re-ask the open question of a flow the customer abandoned",
            trigger=Trigger(
                after="flow_abandoned",
                days=reminder_after_hours / 24,
                check_minutes=15,
                lookback_days=3,  # older abandoned flows are left alone (no flood at start)
            ),
            cooldown_days=0,  # one reminder per flow instance, however often they abandon
        ),
    ]
