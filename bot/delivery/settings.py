"""The `dispatcher` section of the configuration (bot/config.py adds it to the settings)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

# rows the inbox has in flight at once (bot/delivery/inbox.py), and so the replies the
# dispatcher takes born leased (bot/delivery/dispatcher.py): every chat active under load
IN_FLIGHT = 256


class DispatcherSettings(BaseModel):
    """The outbox dispatcher and the inbox worker (bot/delivery/)."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=8, ge=1, le=100)
    base_backoff_seconds: float = Field(default=1.0, gt=0)
    max_backoff_seconds: float = Field(default=300.0, gt=0)
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    concurrency: int = Field(default=16, ge=1, le=1000)
    # an outbox or inbox row's lease (bot/delivery/leases.py): a live worker renews it every
    # heartbeat, a dead worker's runs out after lease_seconds
    lease_seconds: float = Field(default=10.0, gt=0)
    heartbeat_seconds: float = Field(default=2.0, gt=0)
    # inbox: attempts for a row whose processing raised, and in all once a process died
    # while handling it (an update that kills the process is parked, not retried forever)
    inbox_max_attempts: int = Field(default=5, ge=1, le=100)
    inbox_max_crashes: int = Field(default=3, ge=1, le=100)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> DispatcherSettings:
        if self.heartbeat_seconds * 3 > self.lease_seconds:
            raise ValueError("heartbeat_seconds must be at most a third of lease_seconds")
        return self
