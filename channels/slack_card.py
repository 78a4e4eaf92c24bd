"""The escalation card: Block Kit rendered from the database's current state.

Customer, channel, value segment, case, priority and why it was escalated; the last
messages; the state (waiting, claimed by, resolved by, back to the bot); and the buttons
that fit the state: Claim while it waits, Resolve and Back to bot while an agent owns it.
Every piece of customer text is escaped: nothing in it can become a mention or a link.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from channels.slack_send import escape
from storage.models import (
    Agent,
    Case,
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    Identity,
    Touchpoint,
)

REASONS = {
    "customer_request": "asked for a person",
    "complaint": "complaint",
    "failed_answers": "answers not understood",
    "selfservice_misses": "questions without an answer",
    "low_csat": "low satisfaction rating",
    "winback_offer": "accepted a win-back offer",
}
STATE_KINDS = ("claimed", "resolved", "handed_back", "transferred", "left_queue")
MAX_LINE = 280
MAX_FIELD = 1900
MAX_SECTION = 2900


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def render_card(
    s: AsyncSession, conv_id: int, n_messages: int
) -> tuple[str, list[dict[str, Any]]] | None:
    conv = await s.get(Conversation, conv_id)
    if conv is None:
        return None
    contact = await s.get(Contact, conv.contact_id)
    assert contact is not None
    name = await customer_name(s, conv)
    cases = (
        (await s.execute(select(Case).where(Case.conversation_id == conv.id).order_by(Case.id)))
        .scalars()
        .all()
    )
    recent = await _touchpoints(s, conv.id, ("message", "button"), n_messages)
    escalation = await _touchpoints(s, conv.id, ("escalated",), 1)
    state = await _touchpoints(s, conv.id, STATE_KINDS, 1)
    reason = escalation[0].payload.get("reason", "") if escalation else ""

    case_text = (
        "\n".join(
            f"{escape(c.reference or '?')} · {escape(c.category)} · {escape(c.severity)}"
            f" · {escape(c.status)}"
            for c in cases[-3:]
        )
        or "–"
    )
    fields = [
        ("Customer", escape(name) + (f"\n{escape(contact.email)}" if contact.email else "")),
        ("Channel", escape(conv.channel)),
        ("Value segment", escape(contact.value_segment or "–")),
        ("Priority", str(conv.priority)),
        ("Case", case_text),
        ("Reason", escape(REASONS.get(str(reason), str(reason) or "–"))),
    ]
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _cut(f"{name} needs an agent", 150)},
        },
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": _cut(f"*{k}*\n{v}", MAX_FIELD)} for k, v in fields
            ],
        },
    ]
    if recent:
        lines = [_line(t, name) for t in reversed(recent)]
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _last(lines)},
            }
        )
    status_line = await _status(s, conv, state[0] if state else None)
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": status_line}]})
    buttons = _buttons(conv)
    if buttons:
        blocks.append({"type": "actions", "block_id": f"desk_{conv.id}", "elements": buttons})
    # the fallback text is mrkdwn too (notifications, clients without blocks): escaped alike
    text = (
        f"{escape(name)} ({escape(conv.channel)}) needs an agent: priority {conv.priority}, "
        f"{status_line}"
    )
    return _cut(text, 3000), blocks


async def customer_name(s: AsyncSession, conv: Conversation) -> str:
    contact = await s.get(Contact, conv.contact_id)
    if contact is not None and contact.name:
        return contact.name
    identity = await s.get(Identity, conv.identity_id)
    if identity is None:
        return "Customer"
    return identity.display_name or identity.external_id


async def _touchpoints(
    s: AsyncSession, conv_id: int, kinds: tuple[str, ...], limit: int
) -> list[Touchpoint]:
    if limit <= 0:
        return []
    q = (
        select(Touchpoint)
        .where(Touchpoint.conversation_id == conv_id, Touchpoint.kind.in_(kinds))
        .order_by(Touchpoint.id.desc())
        .limit(limit)
    )
    return list((await s.execute(q)).scalars())


def _line(t: Touchpoint, name: str) -> str:
    if t.direction == Direction.IN:
        who = escape(name)
    elif t.actor.startswith("agent:"):
        who = "Agent"
    else:
        who = "Bot"
    said = " ".join((t.text or "").split())  # one quoted line per message
    return f"> *{who}:* {escape(_cut(said, MAX_LINE))}"


def _last(lines: list[str]) -> str:
    head = "*Last messages*"
    while lines and len(head) + sum(len(x) + 1 for x in lines) > MAX_SECTION:
        lines = lines[1:]
    return "\n".join([head, *lines])


async def _agent_name(s: AsyncSession, ref: str | None) -> str:
    if not ref:
        return "?"
    agent_id = ref.removeprefix("agent:")
    agent = await s.get(Agent, int(agent_id)) if agent_id.isdigit() else None
    return agent.name if agent is not None else ref


async def _status(s: AsyncSession, conv: Conversation, last: Touchpoint | None) -> str:
    if conv.status == ConversationStatus.QUEUED:
        since = conv.queued_at.strftime("%H:%M UTC") if conv.queued_at else "now"
        return f":hourglass_flowing_sand: Waiting for an agent since {since}"
    if conv.status == ConversationStatus.AGENT:
        owner = escape(await _agent_name(s, conv.assignee))
        return (
            f":technologist: Claimed by *{owner}*: replies in this thread go to the customer; "
            "start with `note:` for an internal note"
        )
    by = escape(await _agent_name(s, last.actor)) if last and last.kind != "left_queue" else ""
    if conv.status == ConversationStatus.CLOSED:
        return f":white_check_mark: Resolved by *{by}*" if by else ":white_check_mark: Closed"
    if last is not None and last.kind == "left_queue":
        return ":leftwards_arrow_with_hook: The customer left the queue; back with the bot"
    return f":robot_face: Back to the bot (by *{by}*)" if by else ":robot_face: With the bot"


def _buttons(conv: Conversation) -> list[dict[str, Any]]:
    def button(action: str, label: str, style: str | None = None) -> dict[str, Any]:
        b: dict[str, Any] = {
            "type": "button",
            "action_id": action,
            "text": {"type": "plain_text", "text": label},
            "value": str(conv.id),
        }
        if style:
            b["style"] = style
        return b

    if conv.status == ConversationStatus.QUEUED:
        return [button("desk_claim", "Claim", "primary")]
    if conv.status == ConversationStatus.AGENT:
        return [
            button("desk_resolve", "Resolve", "primary"),
            button("desk_handback", "Back to bot"),
        ]
    return []
