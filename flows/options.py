"""Options the flows read from config.yaml (validated at start by bot.config)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Severity = Literal["low", "medium", "high", "critical"]
ValueSegment = Literal["A", "B", "C"]


class Strict(BaseModel):
    """Unknown keys are errors: a typo in config.yaml must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalizedText(Strict):
    de: str
    en: str

    def get(self, locale: str) -> str:
        return self.de if locale == "de" else self.en


class Labeled(Strict):
    id: str = Field(pattern=r"^[a-z0-9_]{1,32}$")
    label: LocalizedText


class ComplaintOptions(Strict):
    categories: list[Labeled] = Field(min_length=1, max_length=10)
    resolutions: list[Labeled] = Field(min_length=1, max_length=10)
    # Field(gt=0) per value: an error names the key (complaint.sla_hours.high), not just the map
    sla_hours: dict[Severity, Annotated[int, Field(gt=0)]] = {
        "low": 120,
        "medium": 72,
        "high": 24,
        "critical": 4,
    }
    # high severity or a high-value customer goes to an agent with priority
    escalate_severities: list[Severity] = ["high", "critical"]
    escalate_segments: list[ValueSegment] = ["A"]

    @field_validator("sla_hours")
    @classmethod
    def _all_severities(cls, v: dict[str, int]) -> dict[str, int]:
        missing = {"low", "medium", "high", "critical"} - set(v)
        if missing:
            raise ValueError(f"missing severities: {', '.join(sorted(missing))}")
        return v


WinbackReason = Literal["price", "quality", "service", "competitor", "no_longer_needed", "other"]


class WinbackOffer(Strict):
    kind: Literal["factual", "emotional"]
    text: LocalizedText


class WinbackOptions(Strict):
    offers: dict[WinbackReason, WinbackOffer]


class KnowledgeEntry(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    answer: LocalizedText
    examples: list[str] = Field(min_length=1)
    link: str | None = None


class KnowledgeBaseOptions(Strict):
    threshold: float = Field(default=0.30, ge=0.0, le=1.0)
    entries: list[KnowledgeEntry] = []


class FlowOptions(Strict):
    """Everything the flows need, passed to them as one immutable object."""

    company_name: str = "cicbot"
    complaint: ComplaintOptions
    winback: WinbackOptions
    knowledge_base: KnowledgeBaseOptions = KnowledgeBaseOptions()
    max_failed_answers: int = Field(default=3, ge=1, le=10)
    max_selfservice_misses: int = Field(default=2, ge=1, le=10)
