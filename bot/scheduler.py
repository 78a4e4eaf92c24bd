"""The campaign schedule (APScheduler 3, AsyncIOScheduler), started by `cicbot serve`.

One scheduler leads: on PostgreSQL the worker holding the session-level advisory lock
`LOCK_ID` (pg_try_advisory_lock on a dedicated connection); when that worker dies its
connection, and so the lock, goes, and the next worker to try takes over. SQLite has one
process, which leads. Jobs are built from the campaign definitions whenever a worker
becomes leader; what a run did lives in campaign_runs / campaign_deliveries, so a new
leader firing a run again resumes it instead of sending twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.campaign_config import CampaignSettings
from bot.campaigns import Campaigns
from storage.models import CampaignRun, utcnow

log = logging.getLogger(__name__)
LOCK_ID = 0x43494342  # "CICB"
RESUME_MINUTES = 15


def job_trigger(
    c: CampaignSettings, timezone: str
) -> CronTrigger | DateTrigger | IntervalTrigger | None:
    t = c.trigger
    if t is None or not c.enabled:
        return None
    if t.cron is not None:
        return CronTrigger.from_crontab(t.cron, timezone=ZoneInfo(timezone))
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
                    await self.refresh()
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
        """(Re)build the jobs from the campaign definitions; only the leader has jobs."""
        if not self.leader:
            return
        if self.scheduler is None:
            self.scheduler = AsyncIOScheduler(timezone=ZoneInfo(self.timezone))
            self.scheduler.start()
        self.scheduler.remove_all_jobs()
        for c in (await self.campaigns.all()).values():
            trig = job_trigger(c, self.timezone)
            if trig is None:
                continue
            self.scheduler.add_job(
                self.fire,
                trig,
                args=[c.name],
                id=f"campaign:{c.name}",
                coalesce=True,
                max_instances=1,
                misfire_grace_time=3600,
            )
        if self.nightly is not None:
            self.scheduler.add_job(
                self.nightly,
                CronTrigger(hour=3, minute=17),
                id="nightly",
                coalesce=True,
                max_instances=1,
                misfire_grace_time=6 * 3600,
            )
        self.scheduler.add_job(
            self.resume,
            IntervalTrigger(minutes=RESUME_MINUTES),
            id="campaign-resume",
            coalesce=True,
            max_instances=1,
        )

    def jobs(self) -> list[str]:
        return sorted(j.id for j in self.scheduler.get_jobs()) if self.scheduler else []

    async def fire(self, name: str, key: str | None = None) -> None:
        c = await self.campaigns.get(name)
        key = key or run_key(c, self.clock())
        if (name, key) in self._running:
            return
        self._running.add((name, key))
        try:
            report = await self.campaigns.run(name, run_key=key)
            log.info("campaign %s run %s: %s", name, key, dict(report.outcomes))
        except Exception:
            log.exception("campaign %s run %s failed", name, key)
        finally:
            self._running.discard((name, key))

    async def resume(self) -> None:
        """Runs a crash left half-done, or that deferred contacts for quiet hours."""
        since = self.clock().timestamp() - 2 * 86400
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
