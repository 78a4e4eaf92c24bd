"""Lifecycle transitions by inactivity, on SQLite and PostgreSQL; each change a touchpoint."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from bot.config import CrmSettings
from bot.crm import lifecycle
from bot.runtime import Runtime
from storage.models import Contact, Order, Touchpoint, utcnow

S = CrmSettings(at_risk_after_days=30, lost_after_days=60)
NOW = utcnow()


def days(n: int) -> object:
    return NOW - timedelta(days=n)


@pytest.mark.parametrize(
    ("phase", "last", "since", "expected"),
    [
        ("active", 10, None, None),
        ("active", 31, None, "at_risk"),
        ("active", 61, None, "lost"),
        ("at_risk", 45, None, None),
        ("at_risk", 61, None, "lost"),
        ("at_risk", 5, 20, "active"),
        ("lost", 5, 20, "active"),
        ("lost", 5, 2, None),  # the activity was before it was marked lost
        ("lost", 90, None, None),
        ("prospect", 5, None, "active"),
        ("prospect", 100, None, None),
        ("terminated", 1, None, None),
    ],
)
def test_rules(phase: str, last: int, since: int | None, expected: str | None) -> None:
    change = lifecycle.next_phase(
        phase,
        days(last),
        days(since) if since is not None else None,
        NOW,
        S,  # type: ignore[arg-type]
    )
    assert (change[0] if change else None) == expected


async def test_run_records_each_change(runtime: Runtime) -> None:
    async with runtime.sessions() as s, s.begin():
        quiet = Contact(name="quiet", attributes={}, last_contact_at=NOW - timedelta(days=40))
        gone = Contact(name="gone", attributes={}, last_contact_at=NOW - timedelta(days=100))
        back = Contact(
            name="back",
            attributes={},
            lifecycle_phase="lost",
            last_contact_at=NOW - timedelta(days=300),
        )
        bye = Contact(name="bye", attributes={}, lifecycle_phase="terminated")
        s.add_all([quiet, gone, back, bye])
        await s.flush()
        s.add(
            Order(
                external_id="B1",
                contact_id=back.id,
                amount_cents=100,
                ordered_at=NOW - timedelta(days=1),
            )
        )
    async with runtime.sessions() as s, s.begin():
        counts = await lifecycle.run(s, S, now=NOW)
    assert counts == {"active->at_risk": 1, "active->lost": 1, "lost->active": 1}
    async with runtime.sessions() as s:
        phases = {c.name: c.lifecycle_phase for c in (await s.execute(select(Contact))).scalars()}
        tps = (await s.execute(select(Touchpoint).order_by(Touchpoint.id))).scalars().all()
    assert phases == {"quiet": "at_risk", "gone": "lost", "back": "active", "bye": "terminated"}
    assert len(tps) == 3 and {t.kind for t in tps} == {"lifecycle_changed"}
    assert {(t.payload["old"], t.payload["new"]) for t in tps} == {
        ("active", "at_risk"),
        ("active", "lost"),
        ("lost", "active"),
    }
    async with runtime.sessions() as s, s.begin():
        assert await lifecycle.run(s, S, now=NOW) == {}  # stable
