"""The campaign schedule (APScheduler 3, AsyncIOScheduler), started by `cicbot serve`.

One scheduler leads: on PostgreSQL the worker holding the session-level advisory lock
`LOCK_ID` (pg_try_advisory_lock on a dedicated connection); when that worker dies its
connection, and so the lock, goes, and the next worker to try takes over. SQLite has one
process, which leads.

The jobs live in the database (APScheduler's SQLAlchemyJobStore on `apscheduler_jobs`,
through a sync driver): textual references to this module's functions with the campaign
name, which find the leading scheduler through `_leader`. A new leader resumes from the
stored jobs (a missed run fires once if within its grace time) after syncing them with
the definitions. What a run did lives in campaign_runs / campaign_deliveries, so a new
leader firing a run again resumes it instead of sending twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import STATE_PAUSED
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import URL, create_engine, make_url, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.campaigns.definitions import CampaignSettings, crontab_weekdays
from bot.campaigns.figures import RESUME_DAYS, RESUME_MINUTES
from bot.campaigns.runs import Campaigns
from storage.models import CampaignRun, SchedulerJob, utcnow

log = logging.getLogger(__name__)
LOCK_ID = 0x43494342  # "CICB"
SYNC_DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}
# how late a missed run still fires (once: missed runs are coalesced)
GRACE_SECONDS = {"campaign": 3600, "nightly": 6 * 3600, "resume": 600}

_leader: CampaignScheduler | None = None  # the scheduler leading in this process


def sync_url(url: URL | str) -> URL:
    """The job store's sync driver for the app's async URL (aiosqlite → sqlite,
    asyncpg → psycopg); host, credentials and database stay as they are."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend not in SYNC_DRIVERS:
        raise ValueError(f"no job store driver for {u.drivername!r}")
    return u.set(drivername=SYNC_DRIVERS[backend])


def _live() -> CampaignScheduler:
    if _leader is None:
        raise RuntimeError("no campaign scheduler leads in this process")
    return _leader


async def run_campaign(name: str) -> None:
    """Job entry points: stored by reference, so they must stay module-level."""
    await _live().fire(name)


async def resume_runs() -> None:
    await _live().resume()


async def run_nightly() -> None:
    live = _live()
    if live.nightly is not None:
        await live.nightly()


def _same(a: BaseTrigger, b: BaseTrigger) -> bool:
    """Same schedule (str omits the time zone; interval start dates do not matter)."""
    return type(a) is type(b) and (str(a), str(getattr(a, "timezone", ""))) == (
        str(b),
        str(getattr(b, "timezone", "")),
    )


def job_trigger(
    c: CampaignSettings, timezone: str
) -> CronTrigger | DateTrigger | IntervalTrigger | None:
    t = c.trigger
    if t is None or not c.enabled:
        return None
    if t.cron is not None:
        minute, hour, day, month, dow = t.cron.split()
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=crontab_weekdays(dow),
            timezone=ZoneInfo(timezone),
        )
    if t.at is not None:
        return DateTrigger(run_date=t.at)
    return IntervalTrigger(minutes=t.check_minutes)


def run_key(c: CampaignSettings, now: datetime) -> str:
    """Cron: the minute it fired (two leaders firing the same minute share the run);
    once: "once"; event follow-ups: the minute (each subject is followed up once anyway)."""
    if c.trigger is not None and c.trigger.at is not None:
        return "once"
    return now.strftime("%Y-%m-%dT%H:%M")


class CampaignScheduler:
    def __init__(
        self,
        campaigns: Campaigns,
        db: AsyncEngine,
        *,
        timezone: str = "UTC",
        retry_seconds: float = 15.0,
        clock: Callable[[], datetime] = utcnow,
        nightly: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.nightly = nightly  # housekeeping the leader runs once a night (CRM jobs)
        self.campaigns = campaigns
        self.db = db
        self.timezone = timezone
        self.retry_seconds = retry_seconds
        self.clock = clock
        self.scheduler: AsyncIOScheduler | None = None
        self.leader = False
        self._conn: AsyncConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: set[tuple[str, str]] = set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._lead(), name="campaign-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self._step_down()

    # ---- leadership ----------------------------------------------------------------

    async def try_lead(self) -> bool:
        """Become leader if nobody is; True if this worker leads (now or already)."""
        if self.leader:
            return True
        if self.db.dialect.name != "postgresql":
            self.leader = True
            return True
        conn = await self.db.connect()
        try:
            got = (
                await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_ID})
            ).scalar_one()
            await conn.commit()
        except Exception:
            await conn.close()
            raise
        if not got:
            await conn.close()
            return False
        self._conn = conn
        self.leader = True
        return True

    async def _still_leading(self) -> bool:
        if self._conn is None:
            return self.leader
        try:
            await self._conn.execute(text("SELECT 1"))
            await self._conn.commit()
            return True
        except Exception:
            log.warning("scheduler: lost the leader connection")
            return False

    async def _step_down(self) -> None:
        global _leader
        if _leader is self:
            _leader = None
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        if self._conn is not None:
            try:
                await self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_ID})
                await self._conn.commit()
            except Exception:
                log.debug("scheduler: unlock failed (the connection is gone)", exc_info=True)
            try:
                await self._conn.close()
            except Exception:
                log.debug("scheduler: close failed", exc_info=True)
            self._conn = None
        self.leader = False

    async def _lead(self) -> None:
        while True:
            try:
                if not self.leader and await self.try_lead():
                    log.info("scheduler: this worker leads")
                    try:
                        await self.refresh()
                    except Exception:
                        await self._step_down()  # lead with synced jobs or not at all
                        raise
                elif self.leader and not await self._still_leading():
                    await self._step_down()
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler: leader election failed; trying again")
            await asyncio.sleep(self.retry_seconds)

    # ---- jobs ----------------------------------------------------------------------

    async def refresh(self) -> None:
        """Sync the stored jobs with the campaign definitions (only the leader has jobs).
        A job whose schedule did not change keeps its stored next run time, so a run the
        old leader missed still fires; stale jobs are removed."""
        global _leader
        if not self.leader:
            return
        if self.scheduler is None:
            url = sync_url(self.db.url)
            # APScheduler 3 calls its job store synchronously in the event loop: bound how
            # long an unreachable database can hold the loop
            connect = (
                {"timeout": 5} if url.get_backend_name() == "sqlite" else {"connect_timeout": 5}
            )
            store = SQLAlchemyJobStore(
                engine=create_engine(url, pool_pre_ping=True, connect_args=connect),
                tablename=SchedulerJob.__tablename__,
            )
            self.scheduler = AsyncIOScheduler(
                timezone=ZoneInfo(self.timezone), jobstores={"default": store}
            )
            self.scheduler.start(paused=True)  # nothing fires before the jobs are synced
        _leader = self
        wanted: dict[str, tuple[str, BaseTrigger, list[str], int]] = {}
        for c in (await self.campaigns.all()).values():
            trig = job_trigger(c, self.timezone)
            if trig is not None:
                ref = "bot.campaigns.scheduler:run_campaign"
                wanted[f"campaign:{c.name}"] = (ref, trig, [c.name], GRACE_SECONDS["campaign"])
        if self.nightly is not None:
            nightly = CronTrigger(hour=3, minute=17, timezone=ZoneInfo(self.timezone))
            wanted["nightly"] = (
                "bot.campaigns.scheduler:run_nightly",
                nightly,
                [],
                GRACE_SECONDS["nightly"],
            )
        every = IntervalTrigger(minutes=RESUME_MINUTES)
        wanted["campaign-resume"] = (
            "bot.campaigns.scheduler:resume_runs",
            every,
            [],
            GRACE_SECONDS["resume"],
        )
        stored = {j.id: j for j in self.scheduler.get_jobs()}
        for job_id, (ref, trig, args, grace) in wanted.items():
            old = stored.get(job_id)
            keep: dict[str, datetime] = {}
            if old is not None and old.next_run_time is not None and _same(old.trigger, trig):
                keep["next_run_time"] = old.next_run_time
            self.scheduler.add_job(
                ref,
                trig,
                args=args,
                id=job_id,
                name=job_id,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=grace,
                replace_existing=True,
                **keep,
            )
        for job_id in stored.keys() - wanted.keys():
            self.scheduler.remove_job(job_id)
        if self.scheduler.state == STATE_PAUSED:
            self.scheduler.resume()

    def jobs(self) -> list[str]:
        return sorted(j.id for j in self.scheduler.get_jobs()) if self.scheduler else []

    async def fire(self, name: str, key: str | None = None) -> None:
        c = await self.campaigns.get(name)
        key = key or run_key(c, self.clock())
        if (name, key) in self._running or await self._done_once(c, key):
            return
        self._running.add((name, key))
        try:
            report = await self.campaigns.run(name, run_key=key)
            log.info("campaign %s run %s: %s", name, key, dict(report.outcomes))
        except Exception:
            log.exception("campaign %s run %s failed", name, key)
        finally:
            self._running.discard((name, key))

    async def _done_once(self, c: CampaignSettings, key: str) -> bool:
        """A once-campaign that ran to the end is not run again (a new leader syncing a
        date job whose time passed would otherwise add it anew)."""
        if c.trigger is None or c.trigger.at is None:
            return False
        async with self.campaigns.sessions() as s:
            status = await s.scalar(
                select(CampaignRun.status).where(
                    CampaignRun.campaign == c.name, CampaignRun.run_key == key
                )
            )
        return status == "done"

    async def resume(self) -> None:
        """Runs a crash left half-done, or that deferred contacts for quiet hours."""
        since = self.clock().timestamp() - RESUME_DAYS * 86400
        async with self.campaigns.sessions() as s:
            runs = (
                await s.execute(
                    select(CampaignRun.campaign, CampaignRun.run_key, CampaignRun.started_at).where(
                        CampaignRun.status.in_(["running", "deferred"])
                    )
                )
            ).all()
        for name, key, started in runs:
            if started.timestamp() >= since and (name, key) not in self._running:
                await self.fire(name, key)
