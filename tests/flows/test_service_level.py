"""Service levels without a database: queue and case priorities, due times in business
hours (issue 20: a promise on a Sunday next to "our team is back on Monday")."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from flows.actions import Escalate, OpenCase
from flows.hours import BusinessHours
from flows.service_level import case_priority, due_at, escalation_weight, queue_priority
from tests.flows.conftest import CtxFactory
from tests.flows.support import Chat, keys, only

BERLIN = ZoneInfo("Europe/Berlin")
# Mon-Fri 08:00-18:00 Berlin, as config.yaml ships it (without its holidays)
HOURS = BusinessHours()


def berlin(y: int, mo: int, d: int, h: int, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=BERLIN)


def test_priorities() -> None:
    assert case_priority("critical", None) > case_priority("low", "A")  # severity first
    assert case_priority("low", "A") > case_priority("low", "C")
    assert queue_priority(20, "A") == 30 and queue_priority(20, None) == 20
    assert escalation_weight("high") == 30 and escalation_weight("critical") == 40


def test_the_sunday_promise_of_issue_20_moves_into_the_working_week() -> None:
    # Saturday 05.12.2026 07:35, 24 hours: Mon 10 h + Tue 10 h + Wed 4 h = Wed 12:00
    opened = berlin(2026, 12, 5, 7, 35)
    assert due_at(opened, 24, HOURS) == berlin(2026, 12, 9, 12)
    assert due_at(opened, 24, None) == berlin(2026, 12, 6, 7, 35)  # calendar hours


def test_within_a_day_across_spans_and_holidays() -> None:
    assert due_at(berlin(2026, 12, 7, 9), 4, HOURS) == berlin(2026, 12, 7, 13)
    assert due_at(berlin(2026, 12, 7, 17), 4, HOURS) == berlin(2026, 12, 8, 11)
    assert due_at(berlin(2026, 12, 7, 19), 1, HOURS) == berlin(2026, 12, 8, 9)
    lunch = BusinessHours(weekly={"mon": ["08:00-12:00", "13:00-17:00"]})
    assert due_at(berlin(2026, 12, 7, 11), 2, lunch) == berlin(2026, 12, 7, 14)
    holiday = HOURS.model_copy(update={"holidays": [date(2026, 12, 24), date(2026, 12, 25)]})
    # Wed 23.12 17:00 + 2 h: 1 h on Wednesday, Thursday and Friday closed, Mon 28.12 09:00
    assert due_at(berlin(2026, 12, 23, 17), 2, holiday) == berlin(2026, 12, 28, 9)
    closed = BusinessHours(weekly={})
    assert due_at(berlin(2026, 12, 7, 9), 4, closed) == berlin(2026, 12, 7, 13)


@given(
    st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2028, 1, 1)),
    st.integers(min_value=1, max_value=200),
)
def test_a_due_time_is_always_within_business_hours_and_never_early(
    naive: datetime, hours: int
) -> None:
    opened = naive.replace(tzinfo=UTC)
    due = due_at(opened, hours, HOURS)
    local = due.astimezone(BERLIN)
    assert due.tzinfo is UTC
    assert due >= opened + timedelta(hours=hours)  # business hours are fewer than all hours
    # inside a span, or at its very end
    assert any(a <= local.time() <= b for a, b in HOURS.spans(local.date()))
    nxt = HOURS.next_open(opened)
    assert nxt is not None and (HOURS.is_open(opened) or due > nxt)


def test_the_complaint_flow_decides_due_time_and_escalation(ctx: CtxFactory) -> None:
    saturday = replace(ctx(segment="C"), now=berlin(2026, 12, 5, 7, 35), hours=HOURS)
    chat = Chat(saturday)
    chat.send("complaint")
    for answer in ("1", "The parcel arrived soaking wet and torn.", "skip", "high", "1"):
        chat.send(answer)
    done = chat.send("yes")
    case = only(done, OpenCase)
    assert case.due_at == berlin(2026, 12, 7, 16)  # high: 8 business hours from Monday 08:00
    assert case.priority == case_priority("high", "C")
    assert only(done, Escalate) == Escalate("complaint", escalation_weight("high"))
    assert keys(done) == ["escalation.priority"]  # after the engine's confirmation
