"""How customer service is doing, from the contact history (docs/crm.md): channel mix and
volume, first response and resolution times (bot and agents), complaints, SLA breaches,
the surveys the flows declare (flows/registry.py: CSAT, win-back reasons and recovery),
self-service deflection. One JSON-able dict."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Date, and_, case, cast, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from flows import registry
from flows.model import Analytics
from storage.models import (
    Case,
    CaseStatus,
    Conversation,
    Direction,
    SurveyAnswer,
    Touchpoint,
    utcnow,
)


def _t(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def stats(seconds: list[float]) -> dict[str, Any]:
    """count, mean, p50, p90 of durations in seconds (None without data)."""
    if not seconds:
        return {"count": 0, "mean": None, "p50": None, "p90": None}
    xs = sorted(seconds)

    def pct(p: float) -> float:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))], 1)

    return {
        "count": len(xs),
        "mean": round(sum(xs) / len(xs), 1),
        "p50": pct(0.5),
        "p90": pct(0.9),
    }


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def report(
    s: AsyncSession, *, since: datetime | None = None, until: datetime | None = None
) -> dict[str, Any]:
    until = until or utcnow()
    since = since or until - timedelta(days=30)
    in_period = and_(Touchpoint.created_at >= since, Touchpoint.created_at < until)
    dialect = s.get_bind().dialect.name
    day = (
        func.date(Touchpoint.created_at)
        if dialect == "sqlite"
        else cast(func.timezone("UTC", Touchpoint.created_at), Date)
    )

    # channel mix (customer messages and everything) and daily volume of customer messages
    mix: dict[str, dict[str, int]] = {}
    q_mix: Any = (
        select(Touchpoint.channel, Touchpoint.direction, func.count())
        .where(in_period)
        .group_by(Touchpoint.channel, Touchpoint.direction)
    )
    for channel, direction, n in (await s.execute(q_mix)).all():
        mix.setdefault(channel, {"in": 0, "out": 0, "internal": 0})[direction] = int(n)
    q_vol: Any = (
        select(day, Touchpoint.channel, func.count())
        .where(in_period, Touchpoint.direction == Direction.IN)
        .group_by(day, Touchpoint.channel)
        .order_by(day, Touchpoint.channel)
    )
    volume = [
        {"day": d.isoformat() if isinstance(d, date) else str(d), "channel": c, "messages": int(n)}
        for d, c, n in (await s.execute(q_vol)).all()
    ]

    # per conversation: first customer message, first bot reply, escalation, first agent reply
    def first(cond: Any) -> Any:
        return func.min(case((cond, Touchpoint.created_at)))

    q_conv: Any = (
        select(
            Touchpoint.conversation_id,
            first(Touchpoint.direction == Direction.IN),
            first(and_(Touchpoint.direction == Direction.OUT, Touchpoint.actor == "bot")),
            first(Touchpoint.kind == "escalated"),
            first(and_(Touchpoint.direction == Direction.OUT, Touchpoint.actor.like("agent:%"))),
        )
        .where(in_period, Touchpoint.conversation_id.is_not(None))
        .group_by(Touchpoint.conversation_id)
    )
    bot_frt: list[float] = []
    agent_frt: list[float] = []
    conversations = deflected = 0
    for _, fin, fbot, esc, fagent in (await s.execute(q_conv)).all():
        fin, fbot, esc, fagent = _t(fin), _t(fbot), _t(esc), _t(fagent)
        if fin is None:
            continue  # a campaign message nobody answered yet
        conversations += 1
        if esc is None and fagent is None:
            deflected += 1
        if fbot is not None and fbot >= fin:
            bot_frt.append((fbot - fin).total_seconds())
        if esc is not None and fagent is not None and fagent >= esc:
            agent_frt.append((fagent - esc).total_seconds())

    # resolution: conversations closed in the period (with and without an agent), cases.
    # An agent's conversation is one an agent resolved (it keeps its assignee), answered or
    # took part in; the touchpoints also count those closed before resolve kept the assignee.
    by_agent = (
        select(Touchpoint.id)
        .where(
            Touchpoint.conversation_id == Conversation.id,
            Touchpoint.actor.like("agent:%"),
        )
        .exists()
    )
    q_closed: Any = select(
        Conversation.created_at,
        Conversation.closed_at,
        or_(Conversation.assignee.is_not(None), by_agent),
    ).where(Conversation.closed_at >= since, Conversation.closed_at < until)
    conv_bot: list[float] = []
    conv_agent: list[float] = []
    for created, closed, with_agent in (await s.execute(q_closed)).all():
        d = (_t(closed) - _t(created)).total_seconds()  # type: ignore[operator]
        (conv_agent if with_agent else conv_bot).append(d)
    # follow-ups after an agent resolved that reopened the conversation (bot.conversation.reopen)
    q_reopened: Any = select(func.count(func.distinct(Touchpoint.conversation_id))).where(
        in_period, Touchpoint.kind == "reopened"
    )
    reopened = int(await s.scalar(q_reopened) or 0)
    q_cases: Any = select(Case).where(Case.created_at >= since, Case.created_at < until)
    cases = (await s.execute(q_cases)).scalars().all()
    by_category: Counter[str] = Counter()
    by_severity: Counter[str] = Counter()
    case_resolution: list[float] = []
    breached = open_breached = 0
    now = utcnow()
    for c in cases:
        by_category[c.category] += 1
        by_severity[c.severity] += 1
        done = c.resolved_at or (c.closed_at if c.status == CaseStatus.CLOSED else None)
        if done is not None:
            case_resolution.append((done - c.created_at).total_seconds())
        if c.sla_due_at is not None and (done or now) > c.sla_due_at:
            breached += 1
            open_breached += done is None

    # surveys in the period, as the flows that record them declare (flows/registry.py)
    declared = registry.surveys()
    q_surveys: Any = select(SurveyAnswer.survey, SurveyAnswer.question, SurveyAnswer.answer).where(
        SurveyAnswer.created_at >= since,
        SurveyAnswer.created_at < until,
        SurveyAnswer.survey.in_(list(declared)),
    )
    answers: dict[str, dict[str, Counter[str]]] = {name: {} for name in declared}
    for survey, question, answer in (await s.execute(q_surveys)).all():
        if answer:
            answers[survey].setdefault(question, Counter())[answer] += 1
    q_life: Any = select(Touchpoint.payload).where(
        in_period, Touchpoint.kind == "lifecycle_changed"
    )
    reactivated = sum(
        1
        for (p,) in (await s.execute(q_life)).all()
        if p.get("new") in ("active", "at_risk")
        and p.get("old") in ("lost", "at_risk")
        and p.get("new") != p.get("old")
    )
    surveys = {name: _survey(kind, answers[name], reactivated) for name, kind in declared.items()}
    return {
        "period": {"since": since.isoformat(), "until": until.isoformat()},
        "channels": dict(sorted(mix.items())),
        "volume": volume,
        "first_response_seconds": {"bot": stats(bot_frt), "agent": stats(agent_frt)},
        "resolution_seconds": {
            "conversations_bot": stats(conv_bot),
            "conversations_agent": stats(conv_agent),
            "cases": stats(case_resolution),
        },
        "resolutions": {
            "bot": len(conv_bot),
            "agent": len(conv_agent),
            "reopened": reopened,
            "reopen_rate": _rate(reopened, len(conv_agent)),
        },
        "complaints": {
            "total": len(cases),
            "by_category": dict(by_category.most_common()),
            "by_severity": dict(by_severity.most_common()),
        },
        "sla": {
            "cases": len(cases),
            "breached": breached,
            "open_breached": open_breached,
            "breach_rate": _rate(breached, len(cases)),
        },
        **surveys,
        "self_service": {
            "conversations": conversations,
            "without_human": deflected,
            "deflection_rate": _rate(deflected, conversations),
        },
    }


def _survey(
    analytics: Analytics, answers: dict[str, Counter[str]], reactivated: int
) -> dict[str, Any]:
    """One survey's section: a satisfaction rating (1-5) or win-back reasons and offers."""
    if analytics.kind == "satisfaction":
        ratings: Counter[int] = Counter()
        for answer, n in answers.get("rating", Counter()).items():
            if answer.isdigit():
                ratings[int(answer)] += n
        n_ratings = sum(ratings.values())
        return {
            "responses": n_ratings,
            "average": round(sum(k * v for k, v in ratings.items()) / n_ratings, 2)
            if n_ratings
            else None,
            "distribution": {str(k): ratings.get(k, 0) for k in range(1, 6)},
        }
    reasons = answers.get("reason", Counter())
    offers = answers.get("offer", Counter())
    respondents = sum(reasons.values())
    return {
        "respondents": respondents,
        "reasons": dict(reasons.most_common()),
        "offers_accepted": offers.get("yes", 0),
        "recovery_rate": _rate(offers.get("yes", 0), respondents),
        "reactivated_contacts": reactivated,
    }
