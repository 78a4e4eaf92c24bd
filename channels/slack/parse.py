"""Slack payloads (raw, from the inbox) → work for the inbox worker.

Runs in the worker, never in the request. What counts as customer input:

* `message` events in a DM with the app (`message.im`) and in the configured customer
  channels, and `app_mention`s in any channel; a thread reply in a thread whose
  conversation is open counts too (a conversation a mention started). One conversation per
  thread: a DM's top level is one thread (key `D…`), every other thread is `C…:thread_ts`;
* presses on the option buttons of the bot's messages (`block_actions`, `cic_choice_*`);
* the support slash command (`/support [text]`, `slack.support_command`) and the message
  shortcut "Send to support" (`slack.support_shortcut`): both open a conversation in the
  person's DM with the app, with the command's text or the shortcut's message.

Never: messages with a `bot_id` or from our own bot user, `bot_message` and every other
subtype but `file_share` and `thread_broadcast` (edits, deletions, joins), group DMs. In the
agent channel, a person's reply in a card's thread is an agent's message, and the card's
buttons are agent actions. Everything else parses to [] (kept in the inbox as ignored),
including shapes slack-bolt cannot route (see `routable`), which are kept, never refused.

Customer input becomes a Deferred: the profile look-up (users.info, cached) needs I/O, so
the InboundMessage is built and handed to the engine in the worker.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from slack_bolt.request.payload_utils import (
    to_action,
    to_command,
    to_event,
    to_message,
    to_options,
    to_shortcut,
    to_step,
    to_view,
)

from bot.channel.inbound import Deferred, Items, ParseError
from bot.channel.messages import Attachment
from channels.slack.send import CHOICE_ACTION

CHANNEL = "slack"
CUSTOMER_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})
DESK_ACTIONS = frozenset({"desk_claim", "desk_resolve", "desk_handback"})
LINK_RE = re.compile(r"<([^<>|]*)(?:\|([^<>]*))?>")
LEADING_MENTION_RE = re.compile(r"^\s*(?:<@[A-Z0-9]+(?:\|[^>]*)?>[\s,:]*)+")


@dataclass(frozen=True)
class CustomerInput:
    """A customer's message or press, before the sender's profile is looked up."""

    user: str
    platform_message_id: str
    thread_key: str
    text: str
    kind: str = "message"
    payload: str | None = None
    attachments: tuple[Attachment, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict)
    only_if_open: bool = False  # a thread reply outside the customer channels


@dataclass(frozen=True)
class SupportRequest:
    """The support command or shortcut: a conversation in the person's DM with the app."""

    user: str
    platform_message_id: str
    text: str
    payload: str | None = None  # "c:menu" when there is nothing to say yet
    attachments: tuple[Attachment, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict)


class Handlers(Protocol):
    async def customer(self, item: CustomerInput) -> Items: ...

    async def support(self, item: SupportRequest) -> Items: ...

    async def agent_message(self, user: str, thread_ts: str, text: str) -> None: ...

    async def desk_action(self, action: str, value: str, user: str, card_ts: str) -> None: ...


def to_plain(text: str) -> str:
    """Slack's message markup → plain text: <url|label> → "label (url)", <@U1|name> → @name,
    <!here> → @here, entities unescaped."""

    def link(m: re.Match[str]) -> str:
        target, label = m.group(1), m.group(2)
        if target.startswith(("@", "#")):
            return f"{target[0]}{label}" if label else target
        if target.startswith("!"):
            return "@" + (label or target[1:].split("^")[0])
        if label and label != target:
            return f"{label} ({target.removeprefix('mailto:')})"
        return target.removeprefix("mailto:")

    return html.unescape(LINK_RE.sub(link, text))


def thread_key(channel: str, thread_ts: str | None, ts: str | None) -> str:
    """A DM's top level is one conversation; every thread (and every channel message,
    which starts a thread) is its own."""
    if channel.startswith("D") and not thread_ts:
        return channel
    return f"{channel}:{thread_ts or ts}"


# The types Slack sends for the fields that bolt's middleware and our routing read without
# checking (bolt calls .get on "event", indexes "authorizations", matches "type" by regex).
_ID = (str, type(None))
SHAPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(
        "type subtype event_id team_id user_id channel_id enterprise_id thread_ts ts "
        "action_id action_ts message_ts api_app_id bot_id user_team channel_type".split(),
        _ID,
    ),
    **dict.fromkeys(
        "event container message previous_message view item assistant_thread function_data".split(),
        (dict,),
    ),
    **dict.fromkeys("team user channel enterprise".split(), (dict, str, type(None))),
    "authorizations": (list,),
    "actions": (list,),
    "is_ext_shared_channel": (bool,),
}


def malformed(body: Any, depth: int = 0) -> str | None:
    """Why a payload is not shaped like Slack's (answered 400 before bolt sees it), or None."""
    if not isinstance(body, dict):
        return "not an object"
    for key, types in SHAPES.items():
        if key in body and not isinstance(body[key], types):
            return f"{key} is a {type(body[key]).__name__}"
    if depth >= 3:
        return None
    nested = [v for k, v in body.items() if k in SHAPES and isinstance(v, dict)]
    nested += [i for k in ("authorizations", "actions") for i in body.get(k) or []]
    return next((why for n in nested if (why := malformed(n, depth + 1))), None)


# what slack-bolt reads from every payload while routing it, indexing without a check
BOLT_READERS = (to_options, to_shortcut, to_action, to_view, to_command, to_event, to_message)


def routable(body: dict[str, Any]) -> bool:
    """False for a payload slack-bolt would raise on while routing it (a 500): an
    `interactive_message` without `actions`, a `workflow_step_edit` without
    `workflow_step`, a `view_submission` of a workflow-step view without it, ..."""
    try:
        for read in BOLT_READERS:
            read(body)
        to_step(body)
    except (KeyError, IndexError, TypeError, AttributeError):
        return False
    return True


def dedupe_key(body: dict[str, Any]) -> str:
    """The inbox's key for a payload: Slack's own id where it has one, else its content."""
    kind = body.get("type")
    if kind == "event_callback" and isinstance(body.get("event_id"), str):
        return f"event:{body['event_id']}"
    if kind == "block_actions":
        container = body.get("container") or {}
        actions = body.get("actions") or [{}]
        ts = actions[0].get("action_ts") if isinstance(actions[0], dict) else None
        return f"action:{container.get('channel_id')}:{container.get('message_ts')}:{ts}"
    if kind == "app_rate_limited":
        return f"rate_limited:{body.get('team_id')}:{body.get('minute_rate_limited')}"
    if isinstance(body.get("trigger_id"), str):  # commands, shortcuts, views: one per use
        return f"{_str(kind) or 'command'}:{body['trigger_id']}"
    canonical = json.dumps(body, sort_keys=True, default=str).encode()
    return f"body:{hashlib.sha256(canonical).hexdigest()[:40]}"


def worth_keeping(body: dict[str, Any]) -> bool:
    """False for what is never input and only noise in the inbox: other bots' posts, and
    edits, deletions and joins (our own chat.update comes back as message_changed)."""
    event = body.get("event")
    if body.get("type") != "event_callback" or not isinstance(event, dict):
        return True
    if event.get("type") != "message":
        return True
    return event.get("subtype") in CUSTOMER_SUBTYPES and not event.get("bot_id")


def partition_key(body: dict[str, Any], agent_channel: str | None) -> str:
    """The thread an update belongs to; the inbox works through one partition in order."""
    if "command" in body or body.get("type") == "message_action":
        user = body.get("user_id") or (body.get("user") or {}).get("id")
        return f"support:{user}" if isinstance(user, str) else "-"
    if body.get("type") == "block_actions":
        c = body.get("container") or {}
        message = body.get("message") or {}
        channel = str(c.get("channel_id", ""))
        if channel and channel == agent_channel:
            return f"desk:{c.get('message_ts')}"
        return thread_key(channel, message.get("thread_ts"), c.get("message_ts"))
    event = body.get("event") or {}
    channel = str(event.get("channel", ""))
    if not channel:
        return "-"
    ts = event.get("ts")
    if channel == agent_channel:
        return f"desk:{event.get('thread_ts') or ts}"
    return thread_key(channel, event.get("thread_ts"), ts)


class PayloadParser:
    """`parser(payload) -> [Deferred]`, registered with the inbox."""

    def __init__(
        self,
        handlers: Handlers,
        *,
        agent_channel: str | None,
        customer_channels: list[str],
        bot_user: Callable[[], str | None],
        support_command: str = "/support",
        support_shortcut: str = "send_to_support",
    ) -> None:
        self.handlers = handlers
        self.support_command = support_command
        self.support_shortcut = support_shortcut
        self.agent_channel = agent_channel
        self.customer_channels = frozenset(customer_channels)
        self.bot_user = bot_user

    def __call__(self, body: dict[str, Any]) -> list[Deferred]:
        kind = body.get("type")
        if kind == "event_callback":
            event = body.get("event")
            if not isinstance(event, dict):
                raise ParseError("event_callback without an event")
            return self._event(event)
        if kind == "block_actions":
            return self._actions(body)
        if "command" in body:
            return self._command(body)
        if kind == "message_action":
            return self._shortcut(body)
        return []  # other interactions, app_rate_limited, shapes bolt cannot route: kept

    # ---- the support command and shortcut ----------------------------------------------

    def _command(self, body: dict[str, Any]) -> list[Deferred]:
        if _str(body.get("command")) != self.support_command:
            return []
        user = _str(body.get("user_id"))
        if not user:
            raise ParseError("slash command without user_id")
        text = to_plain(_str(body.get("text"))).strip()
        keep = ("command", "text", "channel_id", "team_id", "user_id")
        item = SupportRequest(
            user=user,
            platform_message_id=f"command:{_str(body.get('trigger_id')) or dedupe_key(body)}",
            text=text or self.support_command,
            payload=None if text else "c:menu",  # a bare /support opens the menu
            raw={k: body.get(k) for k in keep},
        )
        return [_call(self.handlers.support, item)]

    def _shortcut(self, body: dict[str, Any]) -> list[Deferred]:
        if _str(body.get("callback_id")) != self.support_shortcut:
            return []
        user = _str((body.get("user") or {}).get("id"))
        message = body.get("message") if isinstance(body.get("message"), dict) else {}
        channel = _str((body.get("channel") or {}).get("id"))
        if not user or not isinstance(message, dict):
            raise ParseError("message shortcut without user or message")
        text = to_plain(_str(message.get("text"))).strip()
        files = _files(message.get("files"))
        item = SupportRequest(
            user=user,
            # the same message sent to support twice by the same person counts once
            platform_message_id=f"shortcut:{channel}:{_str(message.get('ts'))}:{user}",
            text=text,
            payload=None if text or files else "c:menu",
            attachments=files,
            raw={"channel": channel, "message": message},
        )
        return [_call(self.handlers.support, item)]

    # ---- events ------------------------------------------------------------------------

    def _event(self, event: dict[str, Any]) -> list[Deferred]:
        etype = event.get("type")
        if etype not in ("message", "app_mention") or not self._from_person(event):
            return []
        channel, ts = _str(event.get("channel")), _str(event.get("ts"))
        if not channel or not ts:
            raise ParseError(f"{etype} event without channel or ts")
        thread_ts = _str(event.get("thread_ts")) or None
        if channel == self.agent_channel:
            if etype != "message" or not thread_ts or thread_ts == ts:
                return []  # the desk only listens in the cards' threads
            text = to_plain(_str(event.get("text")))
            user = _str(event.get("user"))
            return [_call(self.handlers.agent_message, user, thread_ts, text)]
        only_if_open = False
        if etype == "message":
            direct = event.get("channel_type") == "im" or channel.startswith("D")
            if not direct and channel not in self.customer_channels:
                if not thread_ts:
                    return []  # a mention arrives as app_mention as well
                only_if_open = True
        elif channel.startswith("D"):
            return []  # message.im brings it
        # a mention in a customer channel comes as a message event too (with message.channels
        # subscribed): the engine takes the first of the two and drops the other, as both
        # have the same platform message id
        item = CustomerInput(
            user=_str(event.get("user")),
            platform_message_id=f"{channel}:{ts}",
            thread_key=thread_key(channel, thread_ts, ts),
            text=self._text(event),
            attachments=_files(event.get("files")),
            raw=event,
            only_if_open=only_if_open,
        )
        return [_call(self.handlers.customer, item)]

    def _from_person(self, event: dict[str, Any]) -> bool:
        if event.get("subtype") not in CUSTOMER_SUBTYPES or event.get("bot_id"):
            return False
        if event.get("hidden") or event.get("bot_profile"):
            return False
        user = event.get("user")
        return isinstance(user, str) and bool(user) and user != self.bot_user()

    def _text(self, event: dict[str, Any]) -> str:
        """The text without the leading mention that addressed the bot."""
        text = _str(event.get("text"))
        bot = self.bot_user()
        if event.get("type") == "app_mention" or (bot and text.lstrip().startswith(f"<@{bot}")):
            text = LEADING_MENTION_RE.sub("", text, count=1)
        return to_plain(text).strip()

    # ---- interactivity -----------------------------------------------------------------

    def _actions(self, body: dict[str, Any]) -> list[Deferred]:
        actions = body.get("actions")
        user = (body.get("user") or {}).get("id")
        container = body.get("container") or {}
        if not isinstance(actions, list) or not actions or not isinstance(user, str):
            raise ParseError("block_actions without actions or user")
        action = actions[0]
        action_id = _str(action.get("action_id"))
        channel = _str(container.get("channel_id"))
        message_ts = _str(container.get("message_ts"))
        if not channel or not message_ts:
            return []  # a press in a modal or on an ephemeral message without a channel
        if channel == self.agent_channel:
            if action_id not in DESK_ACTIONS:
                return []
            value = _str(action.get("value"))
            return [_call(self.handlers.desk_action, action_id, value, user, message_ts)]
        if not action_id.startswith(CHOICE_ACTION):
            return []
        label = _str((action.get("text") or {}).get("text"))
        payload = _str(action.get("value")) or None
        message = body.get("message") or {}
        item = CustomerInput(
            user=user,
            # one answer per question: a second press on the same message is a duplicate
            platform_message_id=f"{channel}:{message_ts}:press",
            thread_key=thread_key(channel, _str(message.get("thread_ts")) or None, message_ts),
            text=label,
            kind="button",
            payload=payload,
            raw={"action": action, "container": container},
        )
        return [_call(self.handlers.customer, item)]


def _call(fn: Callable[..., Awaitable[Items | None]], *args: Any) -> Deferred:
    async def run() -> Items | None:
        return await fn(*args)  # the customer's messages go on to the core

    return run


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _files(files: Any) -> tuple[Attachment, ...]:
    if not isinstance(files, list):
        return ()
    found = []
    for f in files[:20]:
        if not isinstance(f, dict):
            continue
        mime = _str(f.get("mimetype")) or None
        found.append(
            Attachment(
                kind="photo" if mime and mime.startswith("image/") else "document",
                name=_str(f.get("name"))[:200] or None,
                mime_type=mime,
                size=f.get("size") if isinstance(f.get("size"), int) else None,
                platform_file_id=_str(f.get("id")) or None,
            )
        )
    return tuple(found)
