"""Outbound Telegram: render, shape the rate, send, and map errors for the dispatcher.

* Plain text, no parse_mode: customer text quoted in a reply can never become markup.
* Texts over 4096 characters (Telegram counts UTF-16 units) are split at paragraph,
  line, sentence or word boundaries; the keyboard goes with the last part. A part that
  was sent is not sent again when the dispatcher retries the rest (in memory).
* Choices become an inline keyboard, one button per row. Telegram's callback_data holds
  at most 64 bytes: a longer payload is sent as "h:" + a hash, and a press on it comes
  back as the button's label (the flows accept a choice's label as its answer).
* Rate: every message waits for its chat's limiter (a burst, then about 1/s) and then for
  the bot's (at most `rate_per_second` in any one second), so limits are kept, not
  discovered by 429s. A 429 is still handed to the dispatcher with its retry_after.
"""

from __future__ import annotations

import base64
import hashlib
import unicodedata
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiogram.exceptions import (
    AiogramError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramRetryAfter,
)
from aiolimiter import AsyncLimiter

from bot.channel import PermanentSendError, SendError, SendResult, TransientSendError
from bot.channel.messages import Choice, OutboundMessage
from channels.telegram.raw import HASHED_PREFIX
from channels.telegram.settings import TelegramSettings
from channels.telegram.transport import BotApi

T = TypeVar("T")
MAX_TEXT = 4096  # UTF-16 code units
MAX_CALLBACK_DATA = 64  # bytes
MAX_CHAT_LIMITERS = 10_000
SAFETY = 0.9  # shape a little below the limits: request latency jitters
# the bot's limit is what campaigns run at: a small burst and 97 % of the rest keep any one
# second under the limit (burst + rate·1 s) with room for ~30 ms of jitter; 0.9 and a burst
# of a tenth used only 81 % of it (a 10,000-message campaign took ≥ 1.23× its ideal time)
BOT_SAFETY = 0.97
# 400 answers that mean the chat is gone for good, like a 403
GONE = (
    "chat not found",
    "user is deactivated",
    "peer_id_invalid",
    "bot was blocked",
    "user not found",
    "bot was kicked",
)


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Parts of at most `limit` UTF-16 units, cut at the best boundary in the last half."""
    parts: list[str] = []
    rest = text
    while utf16_len(rest) > limit:
        cut = _fit(rest, limit)
        window = rest[:cut]
        best = None
        for sep in ("\n\n", "\n", ". ", "! ", "? ", "; ", ", ", " "):
            at = window.rfind(sep)
            if at >= cut // 2:
                best = at + len(sep)
                break
        if best is None:  # one long word: cut, but not inside a character sequence
            best = cut
            while best > 1 and _joins(rest[best - 1], rest[best]):
                best -= 1
        head = rest[:best].rstrip()
        parts.append(head if head else rest[:best])
        rest = rest[best:].lstrip("\n ")
    if rest.strip() or not parts:
        parts.append(rest.rstrip())
    return parts


def _fit(text: str, limit: int) -> int:
    """How many characters of `text` fit into `limit` UTF-16 units."""
    units = 0
    for i, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit:
            return i
    return len(text)


def _joins(before: str, after: str) -> bool:
    return (
        unicodedata.combining(after) != 0
        or after in "\u200d\ufe0f\ufe0e"
        or before == "\u200d"
        or "\U0001f3fb" <= after <= "\U0001f3ff"
    )


def callback_data(payload: str) -> str:
    if 0 < len(payload.encode("utf-8")) <= MAX_CALLBACK_DATA and not payload.startswith(
        HASHED_PREFIX
    ):
        return payload
    digest = hashlib.sha256(payload.encode("utf-8")).digest()
    return HASHED_PREFIX + base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def keyboard(choices: tuple[Choice, ...]) -> dict[str, Any] | None:
    """An InlineKeyboardMarkup as the Bot API's JSON: one button per row."""
    if not choices:
        return None
    return {
        "inline_keyboard": [
            [{"text": c.label[:200] or "…", "callback_data": callback_data(c.payload)}]
            for c in choices
        ]
    }


def leaky_bucket(burst: float, per_second: float) -> AsyncLimiter:
    """At most `burst` at once, then `per_second` (aiolimiter: max_rate per time_period)."""
    return AsyncLimiter(burst, burst / per_second)


class RateShaper:
    """The bot's limiter and one per chat (LRU-bounded; a forgotten chat starts afresh)."""

    def __init__(self, settings: TelegramSettings) -> None:
        rate = settings.rate_per_second
        burst = max(1.0, rate // 50)
        # a leaky bucket lets burst + rate·T through in T seconds: keep that ≤ rate per second
        self.bot = leaky_bucket(burst, max(rate - burst, 0.1) * BOT_SAFETY)
        self.chat_burst = float(settings.chat_burst)
        self.chat_rate = settings.chat_rate_per_second * SAFETY
        self.chats: OrderedDict[str, AsyncLimiter] = OrderedDict()

    def chat(self, chat_id: str) -> AsyncLimiter:
        limiter = self.chats.get(chat_id)
        if limiter is None:
            limiter = self.chats[chat_id] = leaky_bucket(self.chat_burst, self.chat_rate)
            while len(self.chats) > MAX_CHAT_LIMITERS:
                self.chats.popitem(last=False)
        else:
            self.chats.move_to_end(chat_id)
        return limiter

    async def wait(self, chat_id: str) -> None:
        await self.chat(chat_id).acquire()  # the chat first: a slow chat holds no bot slot
        await self.bot.acquire()


def to_send_error(exc: Exception, redact: Callable[[str], str]) -> SendError:
    text = redact(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, TelegramRetryAfter):
        return TransientSendError(text, retry_after=float(exc.retry_after))
    if isinstance(exc, TelegramForbiddenError | TelegramMigrateToChat):
        return PermanentSendError(text)
    if isinstance(exc, TelegramBadRequest) and any(g in exc.message.lower() for g in GONE):
        return PermanentSendError(text)
    # 5xx, timeouts, connection errors, an HTML error page, a revoked token (401), and 400s
    # we did not expect: retried with backoff; the dispatcher gives up after max_attempts
    return TransientSendError(text)


class Sender:
    def __init__(
        self, api: BotApi, settings: TelegramSettings, redact: Callable[[str], str]
    ) -> None:
        self.api = api
        self.shaper = RateShaper(settings)
        self.timeout = settings.request_timeout
        self.redact = redact
        self._done: OrderedDict[int, tuple[int, str]] = OrderedDict()  # outbox id → progress

    async def call(self, chat_id: str, make: Callable[[], Awaitable[T]]) -> T:
        """One rate-shaped request to a chat; aiogram's errors pass through."""
        await self.shaper.wait(chat_id)
        return await make()

    async def send(self, message: OutboundMessage) -> SendResult:
        chat_id = message.recipient_id
        if not chat_id.lstrip("-").isdigit():
            raise PermanentSendError(f"not a Telegram chat id: {chat_id[:40]!r}")
        parts = split_text(message.text if message.text.strip() else "…")
        markup = keyboard(message.choices)
        key = message.outbox_id
        done, last_id = self._done.get(key, (0, "")) if key is not None else (0, "")
        chat = int(chat_id)
        for i in range(done, len(parts)):
            last = i == len(parts) - 1
            try:
                await self.shaper.wait(chat_id)
                sent = await self.api.send_message(
                    chat, parts[i], markup if last else None, self.timeout
                )
            except (AiogramError, TimeoutError, OSError) as exc:
                # ClientDecodeError (an HTML error page) is an AiogramError too
                raise to_send_error(exc, self.redact) from None
            last_id = platform_id(sent)
            if key is not None and not last:
                self._remember(key, i + 1, last_id)
        if key is not None:
            self._done.pop(key, None)
        return SendResult(platform_message_id=last_id)

    def _remember(self, key: int, done: int, last_id: str) -> None:
        self._done[key] = (done, last_id)
        while len(self._done) > 10_000:
            self._done.popitem(last=False)


def platform_id(sent: dict[str, Any]) -> str:
    """The "chat id:message id" of a sent Message (BotApi.send_message checked both)."""
    return f"{sent['chat']['id']}:{sent['message_id']}"
