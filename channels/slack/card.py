"""The escalation card: Block Kit rendered from the conversation's current state, which the
core reads (`AgentDesk.card`); nothing here touches the database.

Customer, channel, value segment, case, priority and why it was escalated; the last
messages; the state (waiting, claimed by, resolved by, back to the bot); and the buttons
that fit the state: Claim while it waits, Resolve and Back to bot while an agent owns it.
Every piece of customer text is escaped: nothing in it can become a mention or a link.
"""

from __future__ import annotations

from typing import Any

from bot.channel.desk import CardData, CardLine
from channels.slack.send import escape

MAX_LINE = 280
MAX_FIELD = 1900
MAX_SECTION = 2900


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_card(card: CardData) -> tuple[str, list[dict[str, Any]]]:
    """(fallback text, blocks) of the card: what the core read, in Block Kit."""
    name = card.customer
    case_text = (
        "\n".join(
            f"{escape(c.reference or '?')} · {escape(c.category)} · {escape(c.severity)}"
            f" · {escape(c.status)}"
            for c in card.cases[-3:]
        )
        or "–"
    )
    fields = [
        ("Customer", escape(name) + (f"\n{escape(card.email)}" if card.email else "")),
        ("Channel", escape(card.channel)),
        ("Value segment", escape(card.value_segment or "–")),
        ("Priority", str(card.priority)),
        ("Case", case_text),
        ("Reason", escape(card.reason_label or "–")),
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
    if card.recent:
        lines = [_line(t, name) for t in card.recent]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _last(lines)}})
    status_line = _status(card)
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": status_line}]})
    buttons = _buttons(card)
    if buttons:
        blocks.append(
            {"type": "actions", "block_id": f"desk_{card.conversation_id}", "elements": buttons}
        )
    # the fallback text is mrkdwn too (notifications, clients without blocks): escaped alike
    text = (
        f"{escape(name)} ({escape(card.channel)}) needs an agent: priority {card.priority}, "
        f"{status_line}"
    )
    return _cut(text, 3000), blocks


def mirror_text(who: str, channel: str, said: str, files: int) -> str:
    """A customer's message as the card's thread shows it (bot.channel.desk.MirrorText)."""
    extra = f" :paperclip: {files} attachment(s)" if files else ""
    return f"*{escape(who)}* ({escape(channel)}): {escape(said)}{extra}"


def _line(t: CardLine, name: str) -> str:
    who = {"customer": escape(name), "agent": "Agent"}.get(t.actor, "Bot")
    said = " ".join(t.text.split())  # one quoted line per message
    return f"> *{who}:* {escape(_cut(said, MAX_LINE))}"


def _last(lines: list[str]) -> str:
    head = "*Last messages*"
    while lines and len(head) + sum(len(x) + 1 for x in lines) > MAX_SECTION:
        lines = lines[1:]
    return "\n".join([head, *lines])


def _status(card: CardData) -> str:
    if card.status == "queued":
        since = card.queued_at.strftime("%H:%M UTC") if card.queued_at else "now"
        return f":hourglass_flowing_sand: Waiting for an agent since {since}"
    if card.status == "agent":
        owner = escape(card.owner or "?")
        return (
            f":technologist: Claimed by *{owner}*: replies in this thread go to the customer; "
            "start with `note:` for an internal note"
        )
    left = card.last_change == "left_queue"
    by = escape(card.last_by or "") if card.last_change and not left else ""
    if card.status == "closed":
        return f":white_check_mark: Resolved by *{by}*" if by else ":white_check_mark: Closed"
    if left:
        return ":leftwards_arrow_with_hook: The customer left the queue; back with the bot"
    return f":robot_face: Back to the bot (by *{by}*)" if by else ":robot_face: With the bot"


def _buttons(card: CardData) -> list[dict[str, Any]]:
    def button(action: str, label: str, style: str | None = None) -> dict[str, Any]:
        b: dict[str, Any] = {
            "type": "button",
            "action_id": action,
            "text": {"type": "plain_text", "text": label},
            "value": str(card.conversation_id),
        }
        if style:
            b["style"] = style
        return b

    if card.status == "queued":
        return [button("desk_claim", "Claim", "primary")]
    if card.status == "agent":
        return [
            button("desk_resolve", "Resolve", "primary"),
            button("desk_handback", "Back to bot"),
        ]
    return []
