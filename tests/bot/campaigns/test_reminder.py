"""The built-in reminder 24 h after a flow was abandoned: the open question re-asked once,
never while an agent has the conversation, within quiet hours, counted in the figures."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from bot.campaigns.audience import audience_query
from bot.campaigns.definitions import CampaignSettings
from bot.campaigns.scheduler import CampaignScheduler
from bot.runtime import Runtime
from storage import queries
from storage.models import CampaignDelivery, Contact, Conversation, Identity, Touchpoint
from tests.bot.conftest import Clock
from tests.conftest import RecordingChannel, inbound, make_settings, recorder


async def half_way_complaint(rt: Runtime, user: str) -> None:
    """Category and description given; the bot waits for the order reference."""
    await rt.engine.handle(inbound("complaint", user=user))
    await rt.engine.handle(inbound("1", user=user))
    result = await rt.engine.handle(inbound("The parcel arrived soaking wet.", user=user))
    assert result.replies == [rt.catalog.text("en", "complaint.ask_reference")]


async def reminder(rt: Runtime) -> dict[str, int]:
    report = await rt.campaigns.run("reminder")
    return dict(report.outcomes)


async def texts(rt: Runtime, user: str) -> list[str]:
    await rt.dispatcher.drain()
    return [m.text for m in recorder(rt).sent if m.recipient_id == user]


async def test_an_abandoned_complaint_is_reminded_once_and_then_continues(
    rt: Runtime, clock: Clock
) -> None:
    await half_way_complaint(rt, "ann")
    before = len(await texts(rt, "ann"))
    clock.advance(hours=23, minutes=59)
    assert await reminder(rt) == {}  # not 24 h yet
    clock.advance(minutes=2)
    dry = await rt.campaigns.run("reminder", dry_run=True)
    assert dict(dry.outcomes) == {"would_send": 1}
    assert await reminder(rt) == {"sent": 1}
    sent = await texts(rt, "ann")
    assert sent[before:] == [
        rt.catalog.text("en", "reminder.intro"),
        rt.catalog.text("en", "complaint.ask_reference"),
    ]
    assert [c.label for c in recorder(rt).sent[-1].choices] == ["Skip"]
    for hours in (0.25, 1, 30, 50):  # later checks: never a second reminder
        clock.advance(hours=hours)
        assert await reminder(rt) == {}
    assert len(await texts(rt, "ann")) == before + 2

    # the customer answers the re-asked question: the complaint goes on where it stopped
    result = await rt.engine.handle(inbound("ORDER-4711", user="ann"))
    assert result.replies == [rt.catalog.text("en", "complaint.ask_severity")]
    clock.advance(hours=25)
    assert await reminder(rt) == {}  # abandoned again, but this flow was reminded already
    await rt.engine.handle(inbound("1", user="ann"))  # severity
    await rt.engine.handle(inbound("1", user="ann"))  # resolution
    await rt.engine.handle(inbound("yes", user="ann"))  # confirm: the case is opened
    status = await rt.campaigns.status("reminder")
    assert (status["targeted"], status["sent"], status["responded"], status["completed"]) == (
        1,
        1,
        1,
        1,
    )
    async with rt.sessions() as s:
        delivery = (await s.execute(select(CampaignDelivery))).scalar_one()
        conv = await s.get(Conversation, delivery.conversation_id)
        reminded = await s.scalar(select(Touchpoint.id).where(Touchpoint.kind == "flow_reminded"))
    assert delivery.flow == "complaint" and delivery.channel == "test"
    assert conv is not None and conv.flow_state == {} and reminded is not None


async def test_who_is_not_reminded(rt: Runtime, clock: Clock) -> None:
    for user in ("agent", "stopped", "quick", "optout", "half", "gone"):
        await half_way_complaint(rt, user)
    await rt.engine.handle(inbound("stop", user="stopped"))  # "stop" ends the flow
    # a survey a campaign opened and nobody answered is not an abandoned flow...
    await rt.engine.handle(inbound("hello", user="survey"))
    await rt.engine.start_flow("test", "survey", "csat", extra={"campaign": "csat"})
    # ...one answered half-way is
    await rt.engine.handle(inbound("hello", user="csat"))
    await rt.engine.start_flow("test", "csat", "csat", extra={"campaign": "csat"})
    await rt.engine.handle(inbound("4", user="csat"))
    # a marketing flow answered half-way: a service reminder would be marketing by the back door
    await rt.engine.handle(inbound("hello", user="promo"))
    await rt.engine.start_flow(
        "test", "promo", "winback", campaign="t", footer_key="campaign.stop_notice"
    )
    await rt.engine.handle(inbound("1", user="promo"))
    async with rt.sessions() as s, s.begin():
        conv = await queries.open_conversation_locked(s, "test", "agent")
        assert conv is not None
        conv.status = "agent"  # a person has the conversation
        gone = await queries.get_identity(s, "test", "gone")
        assert gone is not None
        gone.reachable = False  # blocked the bot
        optout = await queries.get_identity(s, "test", "optout")
        assert optout is not None
        await queries.add_consent(
            s,
            contact_id=optout.contact_id,
            purpose="marketing",
            channel="test",
            granted=False,
            source="test",
            text_shown=None,
        )
    clock.advance(hours=24, minutes=30)
    await rt.engine.handle(inbound("1", user="quick"))  # wrote again just now
    c = await rt.campaigns.get("reminder")
    targets = await rt.campaigns.targets(c, clock.now)
    async with rt.sessions() as s:
        q = select(Identity.external_id).where(
            Identity.contact_id.in_([t.contact_id for t in targets])
        )
        names = set((await s.execute(q)).scalars())
    assert names == {"optout", "half", "gone", "csat"}
    # a service message: a marketing opt-out does not stop it (as with the CSAT survey)
    assert await reminder(rt) == {"sent": 3, "skipped:unreachable": 1}
    csat_texts = await texts(rt, "csat")
    assert csat_texts[-1] == rt.catalog.text("en", "csat.ask_comment")
    assert "stop" not in csat_texts[-2].lower()  # no marketing notice on a service reminder


async def test_an_agent_taking_over_after_the_selection_stops_the_reminder(
    rt: Runtime, clock: Clock
) -> None:
    await half_way_complaint(rt, "bea")
    clock.advance(hours=25)
    c = await rt.campaigns.get("reminder")
    (target,) = await rt.campaigns.targets(c, clock.now)
    async with rt.sessions() as s, s.begin():
        conv = await queries.open_conversation_locked(s, "test", "bea")
        assert conv is not None
        conv.status = "agent"
    report = await rt.campaigns.run("reminder", run_key="r1")
    assert dict(report.outcomes) == {}  # the audience no longer holds her
    # the race: selected while the bot had it, delivered after the agent took it
    run = await rt.campaigns.run("reminder", run_key="r2", limit=0)
    assert run.run_id is not None
    outcome = await rt.campaigns.deliver(c, run.run_id, target)
    assert outcome == "skipped:not_abandoned"
    assert len(await texts(rt, "bea")) == 4  # the complaint's messages, no reminder


async def test_quiet_hours_in_the_contacts_time_zone_defer_the_reminder(
    rt: Runtime, clock: Clock
) -> None:
    clock.now = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)  # 21:30 in Tokyo
    await half_way_complaint(rt, "kenji")
    async with rt.sessions() as s, s.begin():
        contact = (await s.execute(select(Contact))).scalar_one()
        contact.timezone = "Asia/Tokyo"
    scheduler = CampaignScheduler(rt.campaigns, rt.db, clock=clock)
    clock.advance(hours=24, minutes=15)  # 21:45 in Tokyo: quiet
    await scheduler.fire("reminder")
    assert (await rt.campaigns.status("reminder"))["deferred"] == {"quiet_hours": 1}
    clock.advance(hours=10, minutes=30)  # 08:15 in Tokyo
    await scheduler.resume()
    status = await rt.campaigns.status("reminder")
    assert status["sent"] == 1 and status["deferred"] == {}
    assert (await texts(rt, "kenji"))[-2] == rt.catalog.text("en", "reminder.intro")


async def test_the_audience_is_one_sql_query_and_the_delay_is_configurable(
    db_url: str, clock: Clock
) -> None:
    runtime = Runtime(
        make_settings(db_url, campaigns={"reminder_after_hours": 2}), channels=[], clock=clock
    )
    runtime.channels["test"] = RecordingChannel()
    await runtime.start(dispatch=False)
    try:
        await half_way_complaint(runtime, "cat")
        c = await runtime.campaigns.get("reminder")
        query = str(audience_query(c, clock.now).compile(runtime.db))
        assert "flow_state" in query and "touchpoints" in query
        clock.advance(hours=1)
        assert await runtime.campaigns.targets(c, clock.now) == []
        clock.advance(hours=1, minutes=1)
        assert len(await runtime.campaigns.targets(c, clock.now)) == 1
        only = CampaignSettings.model_validate(
            {"name": "r", "flow": "csat", "trigger": {"after": "flow_abandoned", "days": 0.05}}
        )
        assert await runtime.campaigns.targets(only, clock.now) == []  # a complaint, not csat
    finally:
        await runtime.stop()
