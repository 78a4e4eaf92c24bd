"""Randomized: whatever the consents, opt-outs, reachability, caps, lifecycle and local
time, a campaign messages exactly the contacts who may receive it — nobody else."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from bot.campaigns.definitions import CampaignSettings, in_quiet_hours
from bot.runtime import Runtime
from storage import queries
from storage.models import CampaignDelivery, CampaignRun, Contact, Touchpoint
from tests.conftest import RecordingChannel, inbound, make_settings

ZONES = ["Europe/Berlin", "America/New_York", "Asia/Tokyo", None]
_batch = itertools.count()


@dataclass
class Spec:
    consents: list[bool]  # oldest first; the newest is in force
    reachable: bool
    prior_sent: int  # campaign messages in the last 30 days
    phase: str
    zone: str | None


specs = st.builds(
    Spec,
    consents=st.lists(st.booleans(), max_size=3),
    reachable=st.booleans(),
    prior_sent=st.integers(0, 3),
    phase=st.sampled_from(["active", "lost", "terminated"]),
    zone=st.sampled_from(ZONES),
)


def may_receive(spec: Spec, marketing: bool, cap: int, quiet: str | None, now: datetime) -> bool:
    if not spec.reachable or spec.prior_sent >= cap:
        return False
    if marketing and (not spec.consents or not spec.consents[-1] or spec.phase == "terminated"):
        return False
    return not in_quiet_hours(quiet, now, spec.zone, "Europe/Berlin")


async def scenario(
    rt: Runtime,
    clock: list[datetime],
    people: list[Spec],
    marketing: bool,
    cap: int,
    quiet: str | None,
    hour: int,
) -> None:
    batch = next(_batch)
    now = clock[0] = datetime(2026, 11, 20, hour, 17, tzinfo=UTC) + timedelta(days=batch)
    ids: dict[int, Spec] = {}
    for n, spec in enumerate(people):
        user = f"b{batch}-{n}"
        result = await rt.engine.handle(inbound("hi", user=user))
        assert result.contact_id is not None
        ids[result.contact_id] = spec
        async with rt.sessions() as s, s.begin():
            contact = await s.get(Contact, result.contact_id)
            assert contact is not None
            contact.lifecycle_phase = spec.phase
            contact.timezone = spec.zone
            contact.attributes = {"batch": batch}
            for granted in spec.consents:
                await queries.add_consent(
                    s,
                    contact_id=contact.id,
                    purpose="marketing",
                    channel="test",
                    granted=granted,
                    source="t",
                    text_shown=None,
                )
            identity = await queries.get_identity(s, "test", user)
            assert identity is not None
            identity.reachable = spec.reachable
    # prior deliveries: one run each (a run holds one delivery per contact)
    async with rt.sessions() as s, s.begin():
        for contact_id, spec in ids.items():
            for k in range(spec.prior_sent):
                run = CampaignRun(campaign=f"prior{k}", run_key=f"p{batch}-{contact_id}")
                s.add(run)
                await s.flush()
                s.add(
                    CampaignDelivery(
                        run_id=run.id,
                        campaign=f"prior{k}",
                        contact_id=contact_id,
                        status="sent",
                        sent_at=now - timedelta(days=3),
                    )
                )
    name = f"p{batch}"
    await rt.campaigns.save(
        CampaignSettings(
            name=name,
            flow="winback",
            purpose="marketing" if marketing else "service",
            legal_basis="consent" if marketing else "service",
            audience={"attributes": {"batch": batch}},
            frequency_cap=cap,
            quiet_hours=quiet,
            rate_per_second=10_000,
        )
    )
    await rt.campaigns.run(name)
    async with rt.sessions() as s:
        got = {
            r[0]
            for r in (
                await s.execute(
                    select(Touchpoint.contact_id).where(
                        Touchpoint.kind == "flow_started",
                        Touchpoint.contact_id.in_(list(ids)),
                    )
                )
            ).all()
        }
    allowed = {c for c, spec in ids.items() if may_receive(spec, marketing, cap, quiet, now)}
    assert got == allowed


def test_nobody_who_may_not_receive_a_campaign_gets_one(sqlite_url: str) -> None:
    loop = asyncio.new_event_loop()
    clock = [datetime(2026, 11, 20, 12, tzinfo=UTC)]
    rt = Runtime(make_settings(sqlite_url), channels=[], clock=lambda: clock[0])
    rt.channels["test"] = RecordingChannel()
    loop.run_until_complete(rt.start(dispatch=False))

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        people=st.lists(specs, min_size=1, max_size=5),
        marketing=st.booleans(),
        cap=st.integers(1, 3),
        quiet=st.sampled_from([None, "21:00-08:00", "12:00-14:00"]),
        hour=st.integers(0, 23),
    )
    def check(people: list[Spec], marketing: bool, cap: int, quiet: str | None, hour: int) -> None:
        loop.run_until_complete(scenario(rt, clock, people, marketing, cap, quiet, hour))

    try:
        check()
    finally:
        loop.run_until_complete(rt.stop())
        loop.close()
