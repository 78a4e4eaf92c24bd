"""Business hours: when humans answer. Outside them the customer is told honestly."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class BusinessHours(BaseModel):
    """`weekly` maps a weekday to opening spans like "08:00-18:00" (none = closed)."""

    model_config = ConfigDict(extra="forbid")

    timezone: str = "Europe/Berlin"
    weekly: dict[str, list[str]] = Field(
        default_factory=lambda: {d: ["08:00-18:00"] for d in DAYS[:5]}
    )
    holidays: list[date] = []

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        ZoneInfo(v)  # raises for an unknown zone
        return v

    @field_validator("weekly")
    @classmethod
    def _weekly(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for day, spans in v.items():
            if day not in DAYS:
                raise ValueError(f"unknown day {day!r} (use {', '.join(DAYS)})")
            for span in spans:
                start, end = _span(span)
                if start >= end:
                    raise ValueError(f"{day}: {span!r} ends before it starts")
        return v

    def spans(self, day: date) -> list[tuple[time, time]]:
        if day in self.holidays:
            return []
        return sorted(_span(s) for s in self.weekly.get(DAYS[day.weekday()], []))

    def is_open(self, now: datetime) -> bool:
        local = now.astimezone(ZoneInfo(self.timezone))
        return any(a <= local.time() < b for a, b in self.spans(local.date()))

    def next_open(self, now: datetime) -> datetime | None:
        """The next opening time after `now` (aware, in the business time zone)."""
        tz = ZoneInfo(self.timezone)
        local = now.astimezone(tz)
        for offset in range(0, 15):
            day = local.date() + timedelta(days=offset)
            for start, _ in self.spans(day):
                opening = datetime.combine(day, start, tz)
                if opening > local:
                    return opening
        return None


def _span(text: str) -> tuple[time, time]:
    try:
        a, b = text.split("-")
        return time.fromisoformat(a.strip()), time.fromisoformat(b.strip())
    except ValueError:
        raise ValueError(f"opening span {text!r} must look like 08:00-18:00") from None
