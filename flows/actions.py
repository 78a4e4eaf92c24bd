"""Side effects a flow asks for; the engine carries them out in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class OpenCase:
    category: str
    description: str
    severity: str
    order_reference: str | None = None
    desired_resolution: str | None = None
    escalate: bool = False  # handed to an agent too (an Escalate follows)
    priority: int = 0
    due_at: datetime | None = None  # the SLA due time (flows/service_level.py), UTC


@dataclass(frozen=True)
class Escalate:
    """Queue the conversation for a human agent; `priority` is the reason's weight (0–100),
    the engine adds the customer's value."""

    reason: str
    priority: int = 0


@dataclass(frozen=True)
class LeaveQueue:
    """The customer no longer waits for a human; the bot takes the conversation back."""


@dataclass(frozen=True)
class RecordSurvey:
    survey: str
    answers: dict[str, str | None]
    case_reference: str | None = None


@dataclass(frozen=True)
class SetLifecycle:
    phase: str
    reason: str


@dataclass(frozen=True)
class SetLocale:
    locale: str


@dataclass(frozen=True)
class SetConsent:
    purpose: str
    granted: bool
    source: str
    text_shown: str


@dataclass(frozen=True)
class ShowCaseStatus:
    """Tell the customer the status of their case(s); None means all their open ones."""

    reference: str | None = None


@dataclass(frozen=True)
class ShowQueuePosition:
    """Tell a waiting customer where they stand in the queue and when someone answers."""


@dataclass(frozen=True)
class LogSelfService:
    """A self-service attempt, for deflection figures and knowledge-base gaps."""

    question: str
    entry_id: str | None
    confidence: float
    answered: bool
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestLinkCode:
    """Mail a one-time code to `email`, which the customer claims as theirs."""

    email: str


@dataclass(frozen=True)
class VerifyLinkCode:
    """Check a code the customer typed; on a match link the email identity."""

    code: str


Action = (
    OpenCase
    | Escalate
    | LeaveQueue
    | RecordSurvey
    | SetLifecycle
    | SetLocale
    | SetConsent
    | ShowCaseStatus
    | ShowQueuePosition
    | LogSelfService
    | RequestLinkCode
    | VerifyLinkCode
)
