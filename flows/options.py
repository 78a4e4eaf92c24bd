"""Options the flows read from config.yaml (validated at start by bot.config)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    # business hours until a case is due (flows/service_level.py); Field(gt=0) per value:
    # an error names the key (complaint.sla_hours.high), not just the map
    sla_hours: dict[Severity, Annotated[int, Field(gt=0)]] = {
        "low": 40,
        "medium": 20,
        "high": 8,
        "critical": 2,
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


FollowUp = Literal["complaint", "status", "human"]


class KnowledgeEntry(Strict):
    """One answer of the knowledge base and the questions it answers (docs/knowledge-base.md)."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    answer: LocalizedText
    examples: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(min_length=1)
    link: str | None = None
    flow: FollowUp | None = None  # offered with the answer as a button
    tags: list[str] = []


IntentName = Literal[
    "human",
    "complaint",
    "status",
    "stop",
    "start",
    "greeting",
    "thanks",
    "goodbye",
    "yes",
    "no",
    "noise",
    "other",  # not an intent: ordinary questions, the counter-examples
]


class Intent(Strict):
    """A built-in intent (flows/intents.yaml): understood without a knowledge base, matched
    together with its entries; each leads to a command or a short reply (flows/intents.py)."""

    id: IntentName
    examples: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(min_length=1)
    # taken at this confidence or more; 0: at the knowledge base's threshold
    min_confidence: float = Field(default=0.0, ge=0.0, le=1.0)


class KnowledgeBaseOptions(Strict):
    # the calibrated confidence below which the bot says it is not sure; 0.45 keeps nine
    # answers in ten right on a base with a dozen examples per entry (docs/knowledge-base.md)
    threshold: float = Field(default=0.45, ge=0.0, le=1.0)
    files: list[str] = []  # YAML files, relative to config.yaml's folder (or the working dir)
    encoder: Literal["none", "e5"] = "none"  # "e5": the optional sentence encoder extra
    entries: list[KnowledgeEntry] = []
    # the built-in intents (flows/intents.yaml), and files that add examples to them
    builtin_intents: bool = True
    intent_files: list[str] = []
    intents: list[Intent] = []  # filled from the two above when config.yaml is read
    # fitted matchers and sentence encodings are kept here, keyed by content hash, so a
    # restart with an unchanged base takes a second; "" keeps nothing
    cache_dir: str = "~/.cache/cicbot"

    @model_validator(mode="after")
    def _unique_ids(self) -> KnowledgeBaseOptions:
        ids = [e.id for e in self.entries]
        dupes = {i for i in ids if ids.count(i) > 1}
        if dupes:
            raise ValueError(f"duplicate entry ids: {', '.join(sorted(set(dupes)))}")
        return self


class IdentityLinkOptions(Strict):
    """Verified email links (bot/conversation/linking.py): a code's lifetime and the limits."""

    code_minutes: int = Field(default=15, ge=1, le=1440)
    max_attempts: int = Field(default=5, ge=1, le=20)  # wrong codes before it dies
    codes_per_identity_hour: int = Field(default=3, ge=1, le=100)  # requests per chat identity
    codes_per_address_hour: int = Field(default=5, ge=1, le=100)  # mails per address, anyone
    # wrong codes in a row for one address, by any identity, before it is locked for linking
    # until a person unlocks it (NIST SP 800-63B 5.2.2: at most 100)
    max_failures_per_address: int = Field(default=100, ge=1, le=100)


class FlowOptions(Strict):
    """Everything the flows need, passed to them as one immutable object."""

    company_name: str = "cicbot"
    complaint: ComplaintOptions
    winback: WinbackOptions
    knowledge_base: KnowledgeBaseOptions = KnowledgeBaseOptions()
    identity_link: IdentityLinkOptions = IdentityLinkOptions()
    # codes can be mailed (the email channel is configured): offer linking in the menu
    email_linking: bool = True
    max_failed_answers: int = Field(default=3, ge=1, le=10)
    max_selfservice_misses: int = Field(default=2, ge=1, le=10)
