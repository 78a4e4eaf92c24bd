"""The campaign schedule: triggers, run keys, resuming deferred runs."""

from __future__ import annotations

from datetime import UTC, datetime

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import select

from bot.campaign_config import CampaignSettings
from bot.runtime import Runtime
from bot.scheduler import CampaignScheduler, job_trigger, run_key
from storage.models import CampaignRun, Contact
from tests.conftest import RecordingChannel, inbound, make_settings


def _c(**trigger: object) -> CampaignSettings:
    return CampaignSettings.model_validate({"name": "x", "flow": "csat", "trigger": trigger})


def test_triggers_and_run_keys() -> None:
    now = datetime(2026, 11, 22, 10, 0, 31, tzinfo=UTC)
    assert isinstance(job_trigger(_c(cron="0 10 * * 2"), "Europe/Berlin"), CronTrigger)
    once = _c(at="2026-12-01T09:00:00+01:00")
    assert isinstance(job_trigger(once, "UTC"), DateTrigger) and run_key(once, now) == "once"
    after = _c(after="case_resolved", days=2)
    assert isinstance(job_trigger(after, "UTC"), IntervalTrigger)
    assert run_key(after, now) == "2026-11-22T10:00"
    manual = CampaignSettings(name="m", flow="csat")
    assert job_trigger(manual, "UTC") is None
    assert job_trigger(_c(cron="0 10 * * 2").model_copy(update={"enabled": False}), "UTC") is None


async def test_resume_finishes_a_run_deferred_by_quiet_hours(sqlite_url: str) -> None:
    clock = [datetime(2026, 11, 20, 22, 0, tzinfo=UTC)]  # 23:00 in Berlin
    rt = Runtime(make_settings(sqlite_url), channels=[], clock=lambda: clock[0])
    rt.channels["test"] = RecordingChannel()
    await rt.start(dispatch=False)
    scheduler = CampaignScheduler(rt.campaigns, rt.db, clock=lambda: clock[0])
    try:
        await rt.engine.handle(inbound("hi", user="night"))
        async with rt.sessions() as s, s.begin():
            contact = (await s.execute(select(Contact))).scalar_one()
            contact.timezone = "Europe/Berlin"
        await rt.campaigns.save(
            CampaignSettings.model_validate(
                {
                    "name": "n",
                    "flow": "consent",
                    "audience": {"lifecycle_phase": ["active"]},
                    "trigger": {"cron": "0 22 * * *"},
                }
            )
        )
        assert await scheduler.try_lead()
        await scheduler.refresh()
        assert scheduler.jobs() == sorted(
            ["campaign-resume", "campaign:csat", "campaign:n", "campaign:winback"]
        )
        await scheduler.fire("n")
        async with rt.sessions() as s:
            run = (await s.execute(select(CampaignRun))).scalar_one()
        assert run.status == "deferred"
        clock[0] = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)  # 09:00 in Berlin
        await scheduler.resume()
        async with rt.sessions() as s:
            run = (
                await s.execute(select(CampaignRun).execution_options(populate_existing=True))
            ).scalar_one()
        assert run.status == "done"
        assert (await rt.campaigns.status("n"))["sent"] == 1
    finally:
        await scheduler.stop()
        await rt.stop()


async def test_the_leader_runs_the_nightly_crm_housekeeping(db_url: str) -> None:
    from datetime import timedelta

    from sqlalchemy import func, update

    from storage.models import Touchpoint

    rt = Runtime(make_settings(db_url), channels=[])
    rt.channels["test"] = RecordingChannel()
    await rt.start(dispatch=False)
    scheduler = CampaignScheduler(rt.campaigns, rt.db, nightly=rt.nightly)
    try:
        await rt.engine.handle(inbound("hi", user="quiet"))
        long_ago = datetime.now(UTC) - timedelta(days=rt.settings.crm.retention_days + 400)
        async with rt.sessions() as s, s.begin():
            # the customer went quiet long ago: their history is past the retention period
            await s.execute(update(Contact).values(last_contact_at=long_ago, created_at=long_ago))
            await s.execute(update(Touchpoint).values(created_at=long_ago))
        assert await scheduler.try_lead()
        await scheduler.refresh()
        assert "nightly" in scheduler.jobs()
        result = await rt.nightly()
        assert result["purged"] == 2
        async with rt.sessions() as s:
            contact = (await s.execute(select(Contact))).scalar_one()
            left = await s.scalar(
                select(func.count())
                .select_from(Touchpoint)
                .where(Touchpoint.created_at < long_ago + timedelta(days=1))
            )
        assert contact.lifecycle_phase == "lost" and left == 0
    finally:
        await scheduler.stop()
        await rt.stop()
