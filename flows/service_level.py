"""Service levels, decided without I/O: who is served first and by when.

Queue priority: the reason's weight plus the customer's value. A case's priority: its
severity and the customer's value. A case's due time: its SLA hours counted in business
hours (flows/hours.py), so that the promise made to the customer ("we will answer by …")
falls when someone is at work, and agrees with "our team is back at …" said next to it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from flows.hours import BusinessHours

SEVERITY_WEIGHT = {"low": 0, "medium": 1, "high": 2, "critical": 3}
SEGMENT_WEIGHT = {"A": 2, "B": 1, "C": 0}
# how far ahead business time is looked for: holidays and a closed week or two fit
MAX_DAYS = 400


def case_priority(severity: str, segment: str | None) -> int:
    """Higher is handled first: severity and customer value both count."""
    return SEVERITY_WEIGHT.get(severity, 0) * 10 + SEGMENT_WEIGHT.get(segment or "", 0) * 5


def queue_priority(reason_weight: int, segment: str | None) -> int:
    """A conversation's place in the agents' queue: the reason's weight (0-100, from the
    flow's Escalate) plus the customer's value."""
    return reason_weight + SEGMENT_WEIGHT.get(segment or "", 0) * 5


def escalation_weight(severity: str) -> int:
    """The weight of a complaint handed to an agent, by its severity."""
    return 10 + SEVERITY_WEIGHT.get(severity, 0) * 10


def due_at(opened: datetime, hours: float, business: BusinessHours | None) -> datetime:
    """`hours` of business time after `opened` (aware), in UTC. Without business hours,
    or with none open at all within MAX_DAYS, calendar hours."""
    left = timedelta(hours=hours)
    if business is None:
        return (opened + left).astimezone(UTC)
    tz = ZoneInfo(business.timezone)
    local = opened.astimezone(tz)
    day = local.date()
    for _ in range(MAX_DAYS):
        for start, end in business.spans(day):
            span_start = max(datetime.combine(day, start, tz), local)
            span_end = datetime.combine(day, end, tz)
            if span_end <= span_start:
                continue  # this span is over already
            if left <= span_end - span_start:
                return (span_start + left).astimezone(UTC)
            left -= span_end - span_start
        day += timedelta(days=1)
    return (opened + timedelta(hours=hours)).astimezone(UTC)
