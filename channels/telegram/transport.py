"""A thin Bot API transport for the calls made per message: sendMessage,
answerCallbackQuery, editMessageReplyMarkup (and getUpdates).

aiogram's own path builds a pydantic model of the method, dumps it back field by field
into a form (each nested object JSON-encoded on its own), posts it, and validates the
whole answer into pydantic models (a `Message` with its chat, sender and keyboard) of
which the channel reads two numbers: about a fifth of the bot's CPU per message under load
(bench/telegram.py --profile). Measured at the client, one sendMessage: aiogram ~1.4-1.7
ms of CPU, this transport ~0.65-0.9 ms, a bare aiohttp post ~0.6 ms (this slow machine).
Here the parameters are plain dicts posted as one JSON body, and a successful answer is
read as JSON and nothing more.

What stays aiogram's:

* the HTTP client: aiogram's `AiohttpSession` supplies its kept `aiohttp.ClientSession`
  (connector, TLS context, proxy, user agent) and its URL scheme (`api_base`);
* every answer that is not a plain success goes through aiogram's own
  `BaseSession.check_response`, so an error raises exactly the exception aiogram raises
  (`TelegramRetryAfter` with retry_after, `TelegramMigrateToChat`, `TelegramBadRequest`,
  `TelegramForbiddenError`, `TelegramServerError`, `ClientDecodeError` for an HTML page
  ...), and `send.to_send_error` maps them as before;
* network errors and timeouts become `TelegramNetworkError` with aiogram's messages.

The token is in every URL: nothing here logs a URL, and error texts reach the logs and
the outbox only through the channel's `redact` (as with aiogram's client).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.exceptions import TelegramNetworkError
from aiogram.methods import (
    AnswerCallbackQuery,
    EditMessageReplyMarkup,
    SendMessage,
)
from aiogram.methods.base import TelegramMethod
from aiohttp import ClientError, ClientTimeout

Method = type[TelegramMethod[Any]]
JSON_HEADERS: Final = {"Content-Type": "application/json"}


def _any(_: Any) -> bool:
    return True


def is_message(result: Any) -> bool:
    """The fields of a sent Message the channel reads: its id and its chat's id."""
    return (
        type(result) is dict
        and type(result.get("message_id")) is int
        and type(result.get("chat")) is dict
        and type(result["chat"].get("id")) is int
    )


class BotApi:
    """POST JSON to the Bot API through aiogram's session; the `result` as parsed JSON."""

    def __init__(self, bot: Bot, session: AiohttpSession) -> None:
        self.bot = bot
        self.session = session
        self._urls: dict[str, str] = {}
        self._timeouts: dict[float, ClientTimeout] = {}

    def _url(self, name: str) -> str:
        url = self._urls.get(name)
        if url is None:
            url = self._urls[name] = self.session.api.api_url(token=self.bot.token, method=name)
        return url

    def _timeout(self, seconds: float | None) -> ClientTimeout:
        seconds = self.session.timeout if seconds is None else seconds
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            timeout = self._timeouts[seconds] = ClientTimeout(total=seconds)
        return timeout

    async def call(
        self,
        method: Method,
        params: dict[str, Any],
        timeout: float | None = None,
        valid: Callable[[Any], bool] = _any,
    ) -> Any:
        """One call of `method` with `params` (JSON-ready: None values are left out by the
        caller). Returns the answer's `result` when the answer is a success and `valid`
        accepts the result; otherwise aiogram reads the answer and raises what it raises."""
        client = await self.session.create_session()
        body = json.dumps(params).encode()  # ASCII: a lone surrogate cannot fail to encode
        try:
            async with client.post(
                self._url(method.__api_method__),
                data=body,
                headers=JSON_HEADERS,
                timeout=self._timeout(timeout),
            ) as response:
                status = response.status
                raw = await response.read()
        except TimeoutError as exc:  # aiogram's own texts: to_send_error sees the same
            raise TelegramNetworkError(
                method=_model(method, params), message="Request timeout error"
            ) from exc
        except ClientError as exc:
            raise TelegramNetworkError(
                method=_model(method, params), message=f"{type(exc).__name__}: {exc}"
            ) from exc
        answer: Any = None
        if 200 <= status <= 226:  # aiogram's range of success statuses
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = None
            if type(answer) is dict and answer.get("ok") is True and valid(answer.get("result")):
                return answer.get("result")
        # an error, or a success whose shape we did not expect: aiogram's reading raises
        # the exception it would have raised (ClientDecodeError for a page that is not JSON)
        self.session.check_response(
            self.bot, _model(method, params), status, raw.decode("utf-8", "replace")
        )
        # aiogram accepted it (a shape its models coerce): the JSON it validated
        answer = json.loads(raw)
        return answer.get("result") if isinstance(answer, dict) else None

    # ---- the calls made per message ----------------------------------------------------

    async def send_message(
        self,
        chat_id: int,
        text: str,
        reply_markup: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """sendMessage, plain text (no parse_mode); the sent Message as JSON."""
        params: dict[str, Any] = {"chat_id": chat_id, "text": text}
        if reply_markup is not None:
            params["reply_markup"] = reply_markup
        result: dict[str, Any] = await self.call(SendMessage, params, timeout, is_message)
        return result

    async def answer_callback_query(self, callback_query_id: str) -> None:
        await self.call(AnswerCallbackQuery, {"callback_query_id": callback_query_id})

    async def remove_reply_markup(self, chat_id: int, message_id: int) -> None:
        """editMessageReplyMarkup without a markup: the message's keyboard goes."""
        await self.call(EditMessageReplyMarkup, {"chat_id": chat_id, "message_id": message_id})


def _model(method: Method, params: dict[str, Any]) -> TelegramMethod[Any]:
    """The aiogram method object aiogram's exceptions carry (built only on an error)."""
    return method.model_construct(**params)
