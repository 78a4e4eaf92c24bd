"""Campaigns: audience in SQL, send-time checks, idempotent delivery, the CSAT follow-up,
quiet hours, the schedule's leader."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from bot.campaigns.audience import audience_query
from bot.campaigns.definitions import Audience, CampaignSettings, Trigger, in_quiet_hours
from bot.campaigns.runs import Pace, Target
from bot.campaigns.scheduler import CampaignScheduler
from bot.runtime import Runtime
from storage import queries
from storage.models import (
    CampaignDelivery,
    Case,
    CaseStatus,
    Contact,
    Direction,
    Identity,
    OutboxMessage,
    SurveyAnswer,
    Touchpoint,
)
from tests.bot.conftest import Clock
from tests.conftest import RecordingChannel, inbound, recorder


async def customer(rt: Runtime, user: str, **fields: Any) -> int:
    """A contact who wrote once (so has a reachable identity on "test"), then `fields`."""
    result = await rt.engine.handle(inbound("hello", user=user))
    assert result.contact_id is not None
    async with rt.sessions() as s, s.begin():
        contact = await s.get(Contact, result.contact_id)
        assert contact is not None
        for key, value in fields.items():
            setattr(contact, key, value)
    return result.contact_id


async def consent(rt: Runtime, contact_id: int, granted: bool) -> None:
    async with rt.sessions() as s, s.begin():
        await queries.add_consent(
            s,
            contact_id=contact_id,
            purpose="marketing",
            channel="test",
            granted=granted,
            source="test",
            text_shown=None,
        )


async def started_per_contact(rt: Runtime) -> Counter[int]:
    async with rt.sessions() as s:
        rows = (
            await s.execute(select(Touchpoint.contact_id).where(Touchpoint.kind == "flow_started"))
        ).all()
    return Counter(r[0] for r in rows)


def campaign(**kw: Any) -> CampaignSettings:
    base: dict[str, Any] = {
        "name": "t",
        "flow": "winback",
        "audience": {"lifecycle_phase": ["active"]},
        "rate_per_second": 1000,
        "quiet_hours": None,
    }
    return CampaignSettings.model_validate(base | kw)


# ---- the CSAT follow-up, end to end ---------------------------------------------------


async def test_case_resolved_gets_csat_two_days_later_on_the_customers_channel(
    rt: Runtime, clock: Clock
) -> None:
    contact_id = await customer(rt, "anna")
    async with rt.sessions() as s, s.begin():
        case = await queries.create_case(
            s,
            Case(
                contact_id=contact_id,
                category="delivery",
                description="wet parcel",
                severity="medium",
                status=CaseStatus.RESOLVED,
                resolved_at=clock.now,
            ),
        )
        ref = case.reference
    scheduler = CampaignScheduler(rt.campaigns, rt.db, clock=clock)
    assert await scheduler.try_lead()
    await scheduler.refresh()
    assert "campaign:csat" in scheduler.jobs() and "campaign:winback" in scheduler.jobs()
    try:
        clock.advance(days=1, hours=23)
        await scheduler.fire("csat")
        assert await started_per_contact(rt) == Counter()
        clock.advance(hours=2)  # two days after the resolution
        await scheduler.fire("csat")
        clock.advance(hours=1)
        await scheduler.fire("csat")  # the next check: the case is followed up once
    finally:
        await scheduler.stop()
    assert await started_per_contact(rt) == Counter({contact_id: 1})
    await rt.dispatcher.drain()
    texts = " ".join(recorder(rt).texts("anna"))
    assert texts.count("Your case has been resolved") == 1
    async with rt.sessions() as s:
        tp = (
            await s.execute(select(Touchpoint).where(Touchpoint.kind == "flow_started"))
        ).scalar_one()
    assert tp.payload == {"flow": "csat", "campaign": "csat", "run_id": 2, "case_reference": ref}
    assert 'Reply "stop"' not in texts  # a service message: no marketing notice
    # the campaign's messages say whose they are (email adds List-Unsubscribe from this)
    assert {(m.campaign, m.contact_id) for m in recorder(rt).sent if "resolved" in m.text} == {
        ("csat", contact_id)
    }
    # the reply continues the survey in the customer's conversation, linked to the campaign
    await rt.engine.handle(inbound("5", user="anna"))
    await rt.engine.handle(inbound("great", user="anna"))
    async with rt.sessions() as s:
        answers = (await s.execute(select(SurveyAnswer))).scalars().all()
        delivery = (await s.execute(select(CampaignDelivery))).scalar_one()
    assert {a.answer for a in answers} == {"5", "great"}
    assert all(a.case_id == case.id for a in answers)
    assert delivery.subject == ref and delivery.conversation_id == answers[0].conversation_id
    status = await rt.campaigns.status("csat")
    assert status["sent"] == 1 and status["responded"] == 1 and status["completed"] == 1
    assert status["failed"] == 0 and status["skipped"] == {}


# ---- idempotence ----------------------------------------------------------------------


async def test_a_run_killed_midway_and_run_again_sends_nobody_twice(rt: Runtime) -> None:
    ids = [await customer(rt, f"k{i}") for i in range(12)]
    await rt.campaigns.save(campaign())
    first = await rt.campaigns.run("t", run_key="r1", limit=5)  # "killed" after five
    assert first.outcomes == Counter(sent=5)
    # the same run again, and the scheduler firing it twice at once
    again = await asyncio.gather(
        rt.campaigns.run("t", run_key="r1"), rt.campaigns.run("t", run_key="r1")
    )
    total = Counter[str]()
    for report in again:
        total.update(report.outcomes)
    assert total["sent"] == 7 and set(total) <= {"sent", "already"}
    # a later run of the campaign: everyone is in the cooldown
    later = await rt.campaigns.run("t", run_key="r2")
    assert later.targeted == 0
    assert await started_per_contact(rt) == Counter(dict.fromkeys(ids, 1))
    await rt.dispatcher.drain()
    per_recipient = Counter(m.recipient_id for m in recorder(rt).sent)
    assert set(per_recipient.values()) == {per_recipient["k0"]}  # hello reply + survey, each


async def test_a_crash_inside_a_delivery_transaction_leaves_nothing_half_sent(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(6):
        await customer(rt, f"c{i}")
    await rt.campaigns.save(campaign())
    real_judge = rt.campaigns.judge
    calls = 0

    def dying_judge(*args: Any) -> str | None:
        nonlocal calls
        calls += 1
        if calls == 4:  # the process dies after three flows' messages were queued
            raise RuntimeError("killed")
        return real_judge(*args)

    monkeypatch.setattr(rt.campaigns, "judge", dying_judge)
    with pytest.raises(RuntimeError, match="killed"):
        await rt.campaigns.run("t", run_key="x")
    # the six are one batch, one transaction: the three started before are undone too
    before = sum((await started_per_contact(rt)).values())
    assert before == 0
    async with rt.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(CampaignDelivery))).scalar() == 0
    monkeypatch.setattr(rt.campaigns, "judge", real_judge)
    report = await rt.campaigns.run("t", run_key="x")
    assert report.outcomes == Counter(sent=6 - before)  # those sent are in the cooldown
    assert set((await started_per_contact(rt)).values()) == {1}
    assert sum((await started_per_contact(rt)).values()) == 6
    async with rt.sessions() as s:
        outbox = (await s.execute(select(func.count()).select_from(OutboxMessage))).scalar()
    assert outbox == 6 * 2 + 6  # six hello replies and six two-message surveys


# ---- send-time checks ------------------------------------------------------------------


async def test_marketing_needs_consent_and_carries_the_stop_notice(rt: Runtime) -> None:
    yes = await customer(rt, "yes")
    no = await customer(rt, "no")
    gone = await customer(rt, "gone")
    await customer(rt, "never")
    await consent(rt, yes, True)
    await consent(rt, no, True)
    await consent(rt, no, False)  # the newest record wins: opted out
    await consent(rt, gone, True)
    async with rt.sessions() as s, s.begin():
        identity = await queries.get_identity(s, "test", "gone")
        assert identity is not None
        identity.reachable = False
    await rt.campaigns.save(campaign(purpose="marketing", legal_basis="consent"))
    preview = await rt.campaigns.preview("t")
    assert preview["audience"] == 4
    dry = await rt.campaigns.run("t", dry_run=True)
    assert dry.outcomes == Counter(
        {"would_send": 1, "skipped:opted_out": 1, "skipped:unreachable": 1, "skipped:no_consent": 1}
    )
    assert await started_per_contact(rt) == Counter()  # a dry run sends nothing
    report = await rt.campaigns.run("t")
    assert report.outcomes == Counter(
        {"sent": 1, "skipped:opted_out": 1, "skipped:unreachable": 1, "skipped:no_consent": 1}
    )
    await rt.dispatcher.drain()
    survey = [m for m in recorder(rt).sent if m.recipient_id == "yes"][-1]
    assert 'Reply "stop"' in survey.text
    status = await rt.campaigns.status("t")
    assert status["sent"] == 1
    assert status["skipped"] == {"opted_out": 1, "unreachable": 1, "no_consent": 1}


async def test_the_stop_notice_goes_once_with_the_opening_message_the_mark_with_every_one(
    rt: Runtime,
) -> None:
    """Every bot reply inside the campaign's flow carries the campaign's mark (email: the
    List-Unsubscribe header); the stop notice comes once, with the opening message.
    Regression (issue 21): it appeared twice in the win-back survey's first message (its
    intro said it too) and again on every turn of a survey the customer chose to answer."""
    for user in ("yes", "quitter"):
        await consent(rt, await customer(rt, user), True)
    await rt.campaigns.save(campaign(purpose="marketing", legal_basis="consent"))
    assert (await rt.campaigns.run("t")).outcomes == Counter({"sent": 2})
    notice = rt.catalog.text("en", "campaign.stop_notice")

    async def to(user: str) -> list[Any]:
        await rt.dispatcher.drain()
        return [m for m in recorder(rt).sent if m.recipient_id == user]

    hello = len(await to("yes")) - 1  # the answers to "hello", then the opening message
    opening = (await to("yes"))[hello:]
    assert sum(m.text.count('"stop"') for m in opening) == 1, [m.text for m in opening]
    assert opening[-1].text.endswith(notice)
    for answer in ("1", "4", "skip", "no"):  # reason, rating, comment, offer → the end
        result = await rt.engine.handle(inbound(answer, user="yes"))
        assert result.replies and not any(notice in r for r in result.replies), answer
    flow = (await to("yes"))[hello:]
    assert len(flow) >= 5 and all(m.campaign == "t" for m in flow)
    assert all(m.contact_id is not None for m in flow)  # email adds List-Unsubscribe
    await rt.engine.handle(inbound("hello again", user="yes"))  # the flow is over: no mark
    after = (await to("yes"))[hello + len(flow) :]
    assert after and all(m.campaign is None and notice not in m.text for m in after)
    # "stop" inside the flow: the confirmation neither carries the mark nor asks to "stop"
    stopped = await rt.engine.handle(inbound("stop", user="quitter"))
    assert stopped.replies == [rt.catalog.text("en", "consent.optout_done")]
    quitter = (await to("quitter"))[-1]
    assert quitter.campaign is None and notice not in quitter.text


async def test_a_service_flows_later_replies_carry_no_campaign_mark(rt: Runtime) -> None:
    await customer(rt, "svc")
    await rt.campaigns.save(campaign(flow="csat"))
    assert (await rt.campaigns.run("t")).outcomes == Counter({"sent": 1})
    result = await rt.engine.handle(inbound("5", user="svc"))
    await rt.dispatcher.drain()
    last = recorder(rt).sent[-1]
    assert result.replies == [last.text] and last.campaign is None
    assert rt.catalog.text("en", "campaign.stop_notice") not in last.text


async def test_frequency_cap_counts_every_campaign(rt: Runtime) -> None:
    await customer(rt, "f")
    await rt.campaigns.save(campaign(name="a", flow="consent", frequency_cap=2, cooldown_days=0))
    await rt.campaigns.save(campaign(name="b", flow="consent", frequency_cap=2, cooldown_days=0))
    outcomes = []
    for i, name in enumerate(["a", "b", "a"]):
        report = await rt.campaigns.run(name, run_key=f"k{i}")
        outcomes.append(dict(report.outcomes))
        await rt.engine.handle(inbound("cancel", user="f"))  # end the flow: not busy
    assert outcomes == [{"sent": 1}, {"sent": 1}, {"skipped:capped": 1}]


async def test_quiet_hours_in_each_contacts_time_zone(rt: Runtime, clock: Clock) -> None:
    clock.now = datetime(2026, 11, 20, 20, 30, tzinfo=UTC)
    berlin = await customer(rt, "berlin", timezone="Europe/Berlin")  # 21:30: quiet
    york = await customer(rt, "york", timezone="America/New_York")  # 15:30
    tokyo = await customer(rt, "tokyo", timezone="Asia/Tokyo")  # 05:30: quiet
    await rt.campaigns.save(campaign(quiet_hours="21:00-08:00"))
    report = await rt.campaigns.run("t", run_key="q")
    assert report.outcomes == Counter({"sent": 1, "deferred:quiet_hours": 2})
    assert set(await started_per_contact(rt)) == {york}
    clock.now = datetime(2026, 11, 21, 8, 30, tzinfo=UTC)  # Berlin 09:30, Tokyo 17:30
    resumed = await rt.campaigns.run("t", run_key="q")
    assert resumed.outcomes == Counter({"sent": 2})
    assert await started_per_contact(rt) == Counter({berlin: 1, york: 1, tokyo: 1})


def test_quiet_hours_spans() -> None:
    at = datetime(2026, 7, 1, 22, 0, tzinfo=UTC)  # summer: Berlin 00:00, LA 15:00
    assert in_quiet_hours("21:00-08:00", at, "Europe/Berlin", "UTC")
    assert not in_quiet_hours("21:00-08:00", at, "America/Los_Angeles", "UTC")
    assert in_quiet_hours("21:00-08:00", at, None, "Europe/Berlin")  # the company's zone
    assert in_quiet_hours("21:00-08:00", at, "Not/AZone", "Europe/Berlin")
    assert not in_quiet_hours("12:00-13:00", at, "UTC", "UTC")
    assert not in_quiet_hours(None, at, "UTC", "UTC")


async def test_channel_policy_last_used_then_fallbacks(rt: Runtime, clock: Clock) -> None:
    rt.channels["other"] = other = RecordingChannel()
    contact_id = await customer(rt, "multi")
    async with rt.sessions() as s, s.begin():
        s.add(
            Identity(
                contact_id=contact_id,
                channel="other",
                external_id="multi-o",
                reachable=True,
                last_seen_at=clock.now + timedelta(minutes=1),  # used last
            )
        )
    await rt.campaigns.save(campaign(channels=["last_used"], cooldown_days=0))
    assert (await rt.campaigns.run("t", run_key="1")).outcomes == Counter(sent=1)
    await rt.dispatcher.drain()
    assert {m.recipient_id for m in other.sent} == {"multi-o"}
    # "other" becomes unreachable: the flow continues on... the next reachable channel
    async with rt.sessions() as s, s.begin():
        o = await queries.get_identity(s, "other", "multi-o")
        assert o is not None
        o.reachable = False
    await rt.campaigns.save(campaign(name="u", channels=["other", "test"], flow="consent"))
    assert (await rt.campaigns.run("u", run_key="1")).outcomes == Counter(sent=1)
    await rt.dispatcher.drain()
    assert recorder(rt).sent[-1].recipient_id == "multi"


# ---- the audience is SQL ----------------------------------------------------------------


async def test_audience_rules_compile_to_sql(rt: Runtime, clock: Clock) -> None:
    old = clock.now - timedelta(days=120)
    a = await customer(rt, "a", value_segment="A", last_contact_at=old, attributes={"plan": "pro"})
    b = await customer(rt, "b", value_segment="B", lifecycle_phase="lost")
    c = await customer(rt, "c", value_segment="A", attributes={"plan": "free", "vip": True})

    async def ids(**rule: Any) -> set[int]:
        c_ = campaign(audience=rule, cooldown_days=0)
        async with rt.sessions() as s:
            return {r[0] for r in (await s.execute(audience_query(c_, clock.now))).all()}

    assert await ids(value_segment=["A"]) == {a, c}
    assert await ids(inactive_days=90) == {a}
    assert await ids(attributes={"plan": "pro"}) == {a}
    assert await ids(attributes={"vip": True}) == {c}
    assert await ids(lifecycle_phase=["lost"]) == {b}
    assert await ids(any_of=[{"inactive_days": 90}, {"lifecycle_phase": ["lost"]}]) == {a, b}
    assert await ids(reachable_on=["test"]) == {a, b, c}
    assert await ids(reachable_on=["email"]) == set()
    sql = str(audience_query(campaign(audience={"inactive_days": 90}), clock.now))
    assert "coalesce" in sql.lower() and "campaign_deliveries" in sql


# ---- configuration and the schedule ---------------------------------------------------------


def test_campaign_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="unknown flow 'nope'"):
        campaign(flow="nope")
    # a flow a customer starts is no campaign's (flows/registry.py: Trigger.campaign)
    with pytest.raises(ValidationError, match="'complaint' is not started by campaigns"):
        campaign(flow="complaint")
    with pytest.raises(ValidationError, match="marketing campaign needs legal_basis"):
        campaign(purpose="marketing")
    with pytest.raises(ValidationError, match="email only"):
        campaign(purpose="marketing", legal_basis="existing_customer", channels=["test"])
    with pytest.raises(ValidationError, match="exactly one of"):
        Trigger(cron="0 10 * * *", after="case_resolved")
    with pytest.raises(ValidationError, match="quiet_hours"):
        campaign(quiet_hours="late")
    assert campaign(flow="winback_survey").flow == "winback"
    assert Audience(any_of=[Audience(inactive_days=3)]).any_of


async def test_only_one_scheduler_leads_and_another_takes_over(rt: Runtime) -> None:
    one = CampaignScheduler(rt.campaigns, rt.db)
    two = CampaignScheduler(rt.campaigns, rt.db)
    try:
        assert await one.try_lead()
        if rt.db.dialect.name == "postgresql":
            assert not await two.try_lead()
            await one.stop()  # the leader dies: its lock goes with its connection
            assert await two.try_lead()
            assert not await one.try_lead()
        else:  # SQLite: one process, which leads
            assert await two.try_lead()
    finally:
        await one.stop()
        await two.stop()


async def test_deliveries_are_unique_per_run_and_contact_in_the_database(rt: Runtime) -> None:
    from sqlalchemy.exc import IntegrityError

    contact_id = await customer(rt, "u")
    await rt.campaigns.save(campaign())
    await rt.campaigns.run("t", run_key="r")
    async with rt.sessions() as s:
        row = (await s.execute(select(CampaignDelivery))).scalar_one()
    async with rt.sessions() as s:
        with pytest.raises(IntegrityError):
            async with s.begin():
                s.add(
                    CampaignDelivery(
                        run_id=row.run_id, campaign="t", contact_id=contact_id, status="sent"
                    )
                )
    async with rt.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(CampaignDelivery))).scalar() == 1


@pytest.mark.filterwarnings("error::sqlalchemy.exc.SAWarning")
async def test_a_batch_where_one_contact_was_delivered_by_another_run_sends_the_others(
    rt: Runtime,
) -> None:
    """A batch shares one transaction; a unique constraint met half-way undoes it, and the
    batch is done again with a savepoint per contact: that one is `already_sent`, the
    others get their message once. Without SQLAlchemy's "transaction already deassociated
    from connection" warning (an error here): the undo rolled back a transaction that a
    session joined to the batch's connection had rolled back already."""
    ids = [await customer(rt, f"b{i}") for i in range(4)]
    await rt.campaigns.save(campaign(cooldown_days=0))
    c = await rt.campaigns.get("t")
    first, _ = await rt.campaigns._open_run("t", "first", [])
    assert await rt.campaigns.deliver_batch(c, first, [Target(ids[0], subject="S1")]) == ["sent"]
    second, _ = await rt.campaigns._open_run("t", "second", [])
    batch = [Target(ids[1]), Target(ids[2], subject="S1"), Target(ids[3])]
    outcomes = await rt.campaigns.deliver_batch(c, second, batch)
    assert outcomes == ["sent", "skipped:already_sent", "sent"]
    assert await started_per_contact(rt) == Counter({ids[0]: 1, ids[1]: 1, ids[3]: 1})
    async with rt.sessions() as s:
        rows = (await s.execute(select(CampaignDelivery).order_by(CampaignDelivery.id))).scalars()
        assert [(r.contact_id, r.status) for r in rows] == [
            (ids[0], "sent"),
            (ids[1], "sent"),
            (ids[3], "sent"),
            (ids[2], "skipped"),
        ]


async def test_became_lost_is_followed_up_once_per_event(rt: Runtime, clock: Clock) -> None:
    contact_id = await customer(rt, "lost", lifecycle_phase="lost")
    async with rt.sessions() as s, s.begin():
        queries.add_touchpoint(
            s,
            contact_id=contact_id,
            conversation_id=None,
            channel="test",
            direction=Direction.INTERNAL,
            kind="lifecycle_changed",
            actor="bot",
            payload={"old": "active", "new": "lost"},
            created_at=clock.now,
        )
    await rt.campaigns.save(
        campaign(
            name="lost",
            audience={},
            trigger={"after": "became_lost", "days": 14},
            cooldown_days=0,
        )
    )
    assert (await rt.campaigns.run("lost", run_key="1")).targeted == 0
    clock.advance(days=15)
    assert (await rt.campaigns.run("lost", run_key="2")).outcomes == Counter(sent=1)
    assert (await rt.campaigns.run("lost", run_key="3")).targeted == 0


# ---- pacing of the deliveries in flight ------------------------------------------------


async def test_the_pace_holds_the_rate_across_deliveries_in_flight() -> None:
    """Lower bounds only (a sleep never ends early): 21 turns at 20/s, taken by tasks
    running at once, span at least a second."""
    pace = Pace(20)
    started = time.monotonic()
    at: list[float] = []

    async def deliver() -> None:
        await pace.turn()
        at.append(time.monotonic() - started)

    await asyncio.gather(*(deliver() for _ in range(21)))
    assert all(t >= k * 0.05 - 0.001 for k, t in enumerate(sorted(at)))  # the k-th turn


# ---- preview = dry run = run; figures that add up (issue 21) ---------------------------


async def test_preview_dry_run_and_run_agree_and_the_figures_add_up(rt: Runtime) -> None:
    """Regression: the preview said "1000 contacts" and the dry run then skipped all of
    them as unreachable; the dry run said 4 no_consent, the run 3 no_consent + 1 busy;
    `status` showed targeted 5 but skipped 5 + deferred 1 + sent 1."""
    ids = {u: await customer(rt, u) for u in ("ok", "nocons", "nocons_busy", "busy", "gone", "tg")}
    for u in ("ok", "busy", "gone", "tg"):
        await consent(rt, ids[u], True)
    async with rt.sessions() as s, s.begin():
        gone = await queries.get_identity(s, "test", "gone")
        tg = await queries.get_identity(s, "test", "tg")
        assert gone is not None and tg is not None
        gone.reachable = False
        tg.channel = "telegram"  # a channel this runtime does not have
    for u in ("nocons_busy", "busy"):  # another flow is running in their conversation
        assert await rt.engine.start_flow("test", u, "consent") is not None
    await rt.campaigns.save(campaign(purpose="marketing", legal_basis="consent"))

    expected = {
        "sent": 1,
        "skipped:no_consent": 2,  # with or without a busy conversation: no consent first
        "deferred:busy": 1,
        "skipped:unreachable": 2,  # no reachable identity; only on an absent channel
    }

    def as_run(outcomes: dict[str, int]) -> dict[str, int]:
        return {("sent" if k == "would_send" else k): n for k, n in outcomes.items()}

    preview = await rt.campaigns.preview("t", sample=3)
    assert preview["audience"] == 6 and preview["would_send"] == 1
    assert as_run(preview["outcomes"]) == expected
    assert len(preview["sample"]) == 3 and all(r["outcome"] for r in preview["sample"])
    dry = await rt.campaigns.run("t", dry_run=True)
    assert as_run(dict(dry.outcomes)) == expected
    report = await rt.campaigns.run("t", run_key="k")
    assert dict(report.outcomes) == expected

    def adds_up(f: dict[str, Any]) -> int:
        return f["sent"] + sum(f["skipped"].values()) + sum(f["deferred"].values()) + f["pending"]

    status = await rt.campaigns.status("t")
    assert status["targeted"] == 6 == adds_up(status)
    [run] = status["runs"]
    assert run["status"] == "deferred" and run["started_at"] and run["finished_at"]
    assert run["retry_until"] and run["deferred"] == 1
    assert run["sent"] + run["skipped"] + run["deferred"] + run["pending"] == run["targeted"]

    # the busy one's flow ends; the run resumed (as the scheduler does) sends to them
    await rt.engine.handle(inbound("cancel", user="busy"))
    again = await rt.campaigns.run("t", run_key="k")
    assert again.outcomes["sent"] == 1 and again.targeted == 6
    status = await rt.campaigns.status("t")
    assert status["targeted"] == 6 == adds_up(status)
    assert status["sent"] == 2 and status["deferred"] == {}
    assert status["runs"][0]["status"] == "done" and status["runs"][0]["retry_until"] is None


async def test_a_resumed_run_counts_new_audience_members_once(rt: Runtime) -> None:
    """A contact who joined the audience between a run and its resumption is targeted
    once, in addition: targeted stays the sum of the outcomes."""
    await customer(rt, "first")
    await rt.campaigns.save(campaign(flow="consent"))
    assert (await rt.campaigns.run("t", run_key="k")).targeted == 1
    await customer(rt, "second")
    resumed = await rt.campaigns.run("t", run_key="k")
    assert resumed.targeted == 2
    assert resumed.outcomes == Counter({"sent": 1})  # the first has it: not in the audience
    status = await rt.campaigns.status("t")
    assert status["targeted"] == 2 == status["sent"]
