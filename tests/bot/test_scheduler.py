"""The campaign schedule: triggers, run keys, resuming deferred runs, the job store in
the database and a new leader resuming from it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from pydantic import ValidationError
from sqlalchemy import select

from bot.campaign_config import CampaignSettings, crontab_weekdays
from bot.runtime import Runtime
from bot.scheduler import CampaignScheduler, job_trigger, run_key, sync_url
from storage.models import CampaignRun, Contact, SchedulerJob, Touchpoint
from tests.conftest import RecordingChannel, inbound, make_settings


def _c(**trigger: object) -> CampaignSettings:
    return CampaignSettings.model_validate({"name": "x", "flow": "csat", "trigger": trigger})


def test_cron_weekdays_count_like_crontab() -> None:
    # APScheduler 3 counts 0 as Monday; a crontab's 2 is Tuesday and 0 and 7 are Sunday
    berlin = "Europe/Berlin"
    start = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)  # a Sunday
    for cron, weekday in (("0 10 * * 2", 1), ("0 10 * * 0", 6), ("0 10 * * 7", 6)):
        trig = job_trigger(_c(cron=cron), berlin)
        assert trig is not None
        fire = trig.get_next_fire_time(None, start)
        assert fire is not None and fire.weekday() == weekday and fire.hour == 10
    assert crontab_weekdays("1-5") == "mon,tue,wed,thu,fri"
    assert crontab_weekdays("*/2") == "sun,tue,thu,sat"
    assert crontab_weekdays("*") == "*"
    for bad in ("8", "5-1", "mon/x", "funday"):
        with pytest.raises(ValueError):
            crontab_weekdays(bad)
    with pytest.raises(ValidationError):
        _c(cron="0 10 * * 9")


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
            [
                "campaign-resume",
                "campaign:csat",
                "campaign:n",
                "campaign:reminder",
                "campaign:winback",
            ]
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
        assert result["purged"]["touchpoints"] == 2
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


def test_the_job_store_url_uses_a_sync_driver() -> None:
    assert str(sync_url("sqlite+aiosqlite:///var/x.db")) == "sqlite:///var/x.db"
    pg = sync_url("postgresql+asyncpg://bot:s3cret@db:5432/cicbot")
    assert pg.drivername == "postgresql+psycopg" and pg.password == "s3cret"
    assert (pg.host, pg.port, pg.database) == ("db", 5432, "cicbot")
    with pytest.raises(ValueError, match="no job store driver"):
        sync_url("mysql+aiomysql://x/y")


async def stored_jobs(rt: Runtime) -> dict[str, float | None]:
    async with rt.sessions() as s:
        rows = (await s.execute(select(SchedulerJob.id, SchedulerJob.next_run_time))).all()
    return {job_id: when for job_id, when in rows}


async def test_jobs_live_in_the_database_and_a_new_leader_fires_a_due_one_once(
    db_url: str,
) -> None:
    rt = Runtime(make_settings(db_url), channels=[])
    rt.channels["test"] = RecordingChannel()
    await rt.start(dispatch=False)
    one = CampaignScheduler(rt.campaigns, rt.db, nightly=rt.nightly)
    two = CampaignScheduler(rt.campaigns, rt.db, nightly=rt.nightly)
    try:
        await rt.engine.handle(inbound("hi", user="due"))
        at = datetime.now(UTC) + timedelta(seconds=2)
        once = {"name": "once", "flow": "consent", "quiet_hours": None, "cooldown_days": 0}
        await rt.campaigns.save(
            CampaignSettings.model_validate(
                once | {"audience": {"lifecycle_phase": ["active"]}, "trigger": {"at": at}}
            )
        )
        assert await one.try_lead()
        await one.refresh()
        stored = await stored_jobs(rt)
        assert set(stored) == {
            "campaign-resume",
            "campaign:csat",
            "campaign:once",
            "campaign:reminder",
            "campaign:winback",
            "nightly",
        }
        assert stored["campaign:once"] == pytest.approx(at.timestamp())
        await one.stop()  # the leader dies before the job is due; its jobs stay stored
        assert await stored_jobs(rt) == stored
        await asyncio.sleep(max(0.0, at.timestamp() - time.time()) + 0.2)

        assert await two.try_lead()  # a new leader resumes from the stored jobs
        await two.refresh()
        deadline = time.monotonic() + 15
        while "campaign:once" in await stored_jobs(rt) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for _ in range(50):  # the fired job's run finishes
            async with rt.sessions() as s:
                status = await s.scalar(select(CampaignRun.status))
            if status == "done":
                break
            await asyncio.sleep(0.1)
        assert status == "done"
        await two.refresh()  # syncing again does not bring a fired date job back to life
        await asyncio.sleep(0.5)
        async with rt.sessions() as s:
            started = (
                await s.execute(select(Touchpoint.id).where(Touchpoint.kind == "flow_started"))
            ).all()
            runs = (await s.execute(select(CampaignRun.run_key))).scalars().all()
        assert len(started) == 1 and runs == ["once"]
        after = await stored_jobs(rt)
        # unchanged schedules keep their stored next run times (missed runs would fire)
        for job_id in ("campaign:csat", "campaign:winback", "nightly", "campaign-resume"):
            assert after[job_id] == stored[job_id]
    finally:
        await one.stop()
        await two.stop()
        await rt.stop()


async def test_stale_jobs_are_removed_and_changed_ones_replaced(sqlite_url: str) -> None:
    rt = Runtime(make_settings(sqlite_url), channels=[])
    await rt.start(dispatch=False)
    scheduler = CampaignScheduler(rt.campaigns, rt.db)
    try:
        base = {"name": "weekly", "flow": "consent", "trigger": {"cron": "0 10 * * 2"}}
        await rt.campaigns.save(CampaignSettings.model_validate(base))
        assert await scheduler.try_lead()
        await scheduler.refresh()
        first = (await stored_jobs(rt))["campaign:weekly"]
        await rt.campaigns.save(
            CampaignSettings.model_validate(base | {"trigger": {"cron": "0 10 * * 3"}})
        )
        await scheduler.refresh()
        second = (await stored_jobs(rt))["campaign:weekly"]
        assert second is not None and second != first
        when = datetime.fromtimestamp(second, UTC)  # the scheduler's zone here
        assert (when.weekday(), when.hour, when.minute) == (2, 10, 0)  # crontab 3: Wednesday
        await rt.campaigns.save(CampaignSettings.model_validate(base | {"enabled": False}))
        await scheduler.refresh()
        assert "campaign:weekly" not in await stored_jobs(rt)
        assert "campaign:weekly" not in scheduler.jobs()
    finally:
        await scheduler.stop()
        await rt.stop()
