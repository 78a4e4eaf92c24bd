"""Outbound Slack: render, shape the rate, call the Web API, map errors for the dispatcher.

* Texts are escaped (`&`, `<`, `>`) so nothing a customer typed becomes a link, a mention
  or `<!channel>`; texts over 40,000 characters are split at paragraph, line, sentence or
  word boundaries, the buttons going with the last part. A part that was sent is not sent
  again when the dispatcher retries the rest (remembered in memory per outbox row).
* Choices become Block Kit: the text in plain_text sections (3,000 characters each) and the
  options as buttons (25 per actions block, labels cut to 75 characters); a button's value
  is the choice's payload, and a press comes back as a `block_actions` payload.
* Rate: chat.postMessage waits for its channel's limiter (a small burst, then about 1/s),
  so the limit is kept rather than discovered by 429s. A 429 still goes to the dispatcher
  with its Retry-After, which holds the recipient's queue until then.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from aiolimiter import AsyncLimiter
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from bot.channel import PermanentSendError, SendError, SendResult, TransientSendError
from bot.channel.messages import Choice, OutboundMessage
from channels.slack.settings import SlackSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_TEXT = 40_000
MAX_SECTION = 3000
MAX_LABEL = 75
MAX_VALUE = 2000
MAX_BUTTONS = 25
MAX_CHANNEL_LIMITERS = 10_000
SAFETY = 0.9  # shape a little below the limit: request latency jitters
CHOICE_ACTION = "cic_choice_"  # action_id prefix of a customer's option button
# errors after which sending to that conversation can never work
GONE = frozenset(
    (
        "channel_not_found is_archived not_in_channel user_not_found account_inactive "
        "cannot_dm_bot user_disabled team_access_not_granted restricted_action "
        "restricted_action_read_only_channel restricted_action_non_threadable_channel "
        "ekm_access_denied invalid_blocks msg_too_long no_text too_many_attachments"
    ).split()
)


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Parts of at most `limit` characters, cut at the best boundary in the last half."""
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[:limit]
        cut = limit
        for sep in ("\n\n", "\n", ". ", "! ", "? ", "; ", ", ", " "):
            at = window.rfind(sep)
            if at >= limit // 2:
                cut = at + len(sep)
                break
        head = rest[:cut].rstrip()
        parts.append(head or rest[:cut])
        rest = rest[cut:].lstrip("\n ")
    if rest.strip() or not parts:
        parts.append(rest.rstrip())
    return parts


def plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text, "emoji": True}


def choice_blocks(text: str, choices: tuple[Choice, ...]) -> list[dict[str, Any]]:
    """The text as plain_text sections, then the choices as buttons."""
    blocks: list[dict[str, Any]] = [
        {"type": "section", "block_id": f"cic_text_{i}", "text": plain(chunk)}
        for i, chunk in enumerate(split_text(text, MAX_SECTION))
        if chunk
    ]
    buttons = [
        {
            "type": "button",
            "action_id": f"{CHOICE_ACTION}{i}",
            "text": plain(_label(c.label)),
            # a payload too long for a value comes back empty; the label then answers
            "value": c.payload if len(c.payload) <= MAX_VALUE else "",
        }
        for i, c in enumerate(choices)
    ]
    for i in range(0, len(buttons), MAX_BUTTONS):
        blocks.append(
            {"type": "actions", "block_id": f"cic_choices_{i}", "elements": buttons[i : i + 25]}
        )
    return blocks


def answered_blocks(blocks: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    """The pressed message's blocks with its buttons replaced by the answer given."""
    kept = [b for b in blocks if b.get("type") != "actions"]
    kept.append(
        {
            "type": "context",
            "block_id": "cic_answered",
            "elements": [{"type": "mrkdwn", "text": f":white_check_mark: *{escape(label)}*"}],
        }
    )
    return kept


def _label(label: str) -> str:
    label = label.strip() or "…"
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"


def leaky_bucket(burst: float, per_second: float) -> AsyncLimiter:
    """At most `burst` at once, then `per_second` (aiolimiter: max_rate per time_period)."""
    return AsyncLimiter(burst, burst / per_second)


class RateShaper:
    """One limiter per Slack channel (LRU-bounded; a forgotten channel starts afresh)."""

    def __init__(self, settings: SlackSettings) -> None:
        self.burst = float(settings.channel_burst)
        self.rate = settings.channel_rate_per_second * SAFETY
        self.channels: OrderedDict[str, AsyncLimiter] = OrderedDict()

    def limiter(self, channel: str) -> AsyncLimiter:
        limiter = self.channels.get(channel)
        if limiter is None:
            limiter = self.channels[channel] = leaky_bucket(self.burst, self.rate)
            while len(self.channels) > MAX_CHANNEL_LIMITERS:
                self.channels.popitem(last=False)
        else:
            self.channels.move_to_end(channel)
        return limiter

    async def wait(self, channel: str) -> None:
        await self.limiter(channel).acquire()


def to_send_error(exc: Exception) -> SendError:
    if isinstance(exc, SlackApiError):
        status = exc.response.status_code
        error = str(exc.response.get("error", "")) if isinstance(exc.response.data, dict) else ""
        text = f"Slack API error {status}: {error or 'no error given'}"
        if status == 429 or error == "ratelimited":
            return TransientSendError(text, retry_after=_retry_after(exc))
        if error in GONE:
            return PermanentSendError(text)
        # 5xx, an HTML error page, a revoked token (invalid_auth), errors we did not expect:
        # retried with backoff until the dispatcher's max_attempts
        return TransientSendError(text)
    return TransientSendError(f"{type(exc).__name__}: {exc}")


def _retry_after(exc: SlackApiError) -> float:
    try:
        return max(0.0, float(exc.response.headers.get("Retry-After", 1)))
    except (TypeError, ValueError):
        return 1.0


SEND_ERRORS = (SlackApiError, SlackClientError, aiohttp.ClientError, TimeoutError, OSError)


class Sender:
    """chat.postMessage / chat.update through one AsyncWebClient, rate-shaped."""

    def __init__(self, client: AsyncWebClient, settings: SlackSettings) -> None:
        self.client = client
        self.shaper = RateShaper(settings)
        self._done: OrderedDict[int, tuple[int, str]] = OrderedDict()  # outbox id → progress

    async def post(self, channel: str, make: Callable[[], Awaitable[T]]) -> T:
        """One rate-shaped call that puts a message into a channel."""
        await self.shaper.wait(channel)
        return await make()

    async def post_message(
        self,
        channel: str,
        text: str,
        *,
        thread_ts: str | None = None,
        blocks: list[dict[str, Any]] | None = None,
    ) -> str:
        """Post and return the message's ts; Slack's errors pass through."""
        response = await self.post(
            channel,
            lambda: self.client.chat_postMessage(
                channel=channel,
                text=text,
                blocks=blocks,
                thread_ts=thread_ts,
                unfurl_links=False,
                unfurl_media=False,
            ),
        )
        return str(response.get("ts", ""))

    async def send(
        self, message: OutboundMessage, channel: str, thread_ts: str | None
    ) -> SendResult:
        """A reply to a customer: split, buttons on the last part, errors mapped."""
        parts = split_text(message.text if message.text.strip() else "…")
        key = message.outbox_id
        done, last_ts = self._done.get(key, (0, "")) if key is not None else (0, "")
        for i in range(done, len(parts)):
            last = i == len(parts) - 1
            blocks = choice_blocks(parts[i], message.choices) if last and message.choices else None
            try:
                last_ts = await self.post_message(
                    channel, escape(parts[i]), thread_ts=thread_ts, blocks=blocks
                )
            except SEND_ERRORS as exc:
                raise to_send_error(exc) from None
            if key is not None and not last:
                self._remember(key, i + 1, last_ts)
        if key is not None:
            self._done.pop(key, None)
        return SendResult(platform_message_id=f"{channel}:{last_ts}")

    def _remember(self, key: int, done: int, last_ts: str) -> None:
        self._done[key] = (done, last_ts)
        while len(self._done) > 10_000:
            self._done.popitem(last=False)

    async def best_effort(self, what: str, call: Callable[[], Awaitable[Any]]) -> None:
        """UI touches that need no retry (disabling pressed buttons, an ephemeral hint)."""
        try:
            await call()
        except SEND_ERRORS as exc:
            log.warning("slack %s failed: %s", what, to_send_error(exc))
