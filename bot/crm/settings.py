"""The `crm` section of the configuration (bot/config.py adds it to the settings)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CrmSettings(BaseModel):
    """Contact history, customer value, lifecycle and privacy (docs/crm.md)."""

    model_config = ConfigDict(extra="forbid")

    retention_days: int = Field(default=1095, ge=1)  # bot/crm/retention.py, docs/security.md
    at_risk_after_days: int = Field(default=90, ge=1)  # active → at_risk without order/contact
    lost_after_days: int = Field(default=180, ge=1)  # → lost without order or contact
    value_window_days: int = Field(default=730, ge=1)  # orders counted for RFM and CLV
    clv_horizon_years: float = Field(default=3.0, gt=0)  # the CLV estimate looks this far
    segment_a_share: float = Field(default=0.2, gt=0, lt=1)  # top share by CLV → A
    segment_b_share: float = Field(default=0.3, gt=0, lt=1)  # the next share → B; rest C
    service_need_contacts: int = Field(default=5, ge=1)  # inbound msgs + cases in 90 days → high
    import_max_rows: int = Field(default=1_000_000, ge=1)

    @model_validator(mode="after")
    def _order(self) -> CrmSettings:
        if self.lost_after_days <= self.at_risk_after_days:
            raise ValueError("lost_after_days must be greater than at_risk_after_days")
        if self.segment_a_share + self.segment_b_share >= 1:
            raise ValueError("segment_a_share + segment_b_share must be below 1")
        return self
