"""In-process stand-in for the Telegram Bot API (aiohttp.web on 127.0.0.1).

The real aiogram client talks HTTP to it, so tests exercise aiogram's request encoding,
response parsing and exception mapping instead of mocking them.

Wire format (aiogram 3, ``AiohttpSession.build_form_data`` / ``BaseSession.prepare_value``):

* every call is ``POST /bot{token}/{method}``; the body is application/x-www-form-urlencoded,
  or multipart/form-data only when a file is uploaded (aiogram never sends JSON bodies);
* ``str`` values go verbatim, everything else (ints, bools, dicts, lists, pydantic objects,
  enums) JSON-encoded; ``None`` *and empty strings* are not sent at all. So ``text="42"`` and
  ``chat_id=42`` look identical on the wire: known free-text params stay ``str``, the rest is
  JSON-decoded.

Single-bot model: one update queue and one message store, whatever the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import re
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiohttp import web

T = TypeVar("T")
Params = dict[str, Any]
ChatId = int | str
Handler = Callable[[str, Params], Awaitable[Any]]

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "telegram"
DEFAULT_TOKEN = "7012345678:AAHstandinTestToken-0123456789abcdefXYZ"
BLOCKED = "Forbidden: bot was blocked by the user"
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a content and reply markup of the current message"
)

# Free-text params: aiogram sends str verbatim, so "42" or "true" here must stay a str.
_TEXT_PARAMS = frozenset(
    (
        "text caption parse_mode callback_query_id inline_message_id business_connection_id "
        "message_effect_id url secret_token ip_address action language_code file_id title "
        "description short_description name emoji phone_number first_name last_name vcard "
        "address photo document audio voice video animation video_note sticker thumbnail "
        "payload"
    ).split()
)
# Telegram withholds these update types unless allowed_updates names them.
_OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
# Methods rate_limit() counts: the ones that put or change messages in a chat.
_RATE_LIMITED = frozenset({"sendMessage", "editMessageText", "editMessageReplyMarkup"})
_CHAT_ACTIONS = frozenset(
    (
        "typing upload_photo record_video upload_video record_voice upload_voice "
        "upload_document choose_sticker find_location record_video_note upload_video_note"
    ).split()
)
_DESCRIPTIONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: BLOCKED,
    404: "Not Found",
    409: "Conflict",
    500: "Internal Server Error",
    502: "Bad Gateway",
}
_COMMAND_RE = re.compile(r"[a-z0-9_]{1,32}")


def load_fixture(name: str) -> dict[str, Any]:
    """An Update dict from ``tests/fixtures/telegram/<name>.json``."""
    path = FIXTURES_DIR / (name if name.endswith(".json") else f"{name}.json")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


class Call(NamedTuple):
    method: str
    params: Params
    at: float  # time.monotonic() when the request arrived


class FailedCall(NamedTuple):
    method: str
    params: Params
    at: float
    status: int
    description: str


class UploadedFile(NamedTuple):
    filename: str
    content_type: str
    data: bytes


class _Fault(NamedTuple):
    method: str  # lower-case: Telegram method names are case-insensitive
    chat_id: ChatId | None
    status: int
    description: str
    retry_after: int | None
    raw: str | None  # non-JSON body, e.g. an nginx 502 page


class _Stall(NamedTuple):
    method: str
    chat_id: ChatId | None
    seconds: float


class ApiError(Exception):
    """An error answer in Bot API shape."""

    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(f"{status} {description}")
        self.status = status
        self.description = description
        self.retry_after = retry_after


class TelegramStandIn:
    """Fake Bot API server. ``async with TelegramStandIn() as tg: bot = tg.make_bot()``."""

    def __init__(
        self,
        tokens: Iterable[str] | None = None,
        *,
        bot_first_name: str = "CIC Service",
        bot_username: str = "cic_service_bot",
    ) -> None:
        self.tokens = set(tokens) if tokens is not None else None  # None: any token
        self.bot_first_name = bot_first_name
        self.bot_username = bot_username
        self.base_url = ""
        self.calls: list[Call] = []  # answered ok
        self.failed_calls: list[FailedCall] = []  # answered with an error (injected or not)
        self.count_429 = 0  # 429s given by the rate_limit() emulation
        self.webhook: Params = {}  # last setWebhook params; empty = no webhook
        self.commands: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (scope type, lang)
        self._files: dict[str, tuple[str, bytes]] = {}  # file_id -> (file_path, data)
        self._updates: list[dict[str, Any]] = []
        self._last_update_id = 845_000_000
        self._allowed_updates: set[str] | None = None
        self._poll_generation = 0
        self._callback_seq = 4_387_162_094_551_000_000
        self._chats: dict[ChatId, dict[str, Any]] = {}
        self._last_message_id: dict[ChatId, int] = defaultdict(int)
        self._messages: dict[tuple[ChatId, int], dict[str, Any]] = {}
        self._faults: list[_Fault] = []
        self._stalls: list[_Stall] = []
        self._blocked: set[ChatId] = set()
        self._limits: tuple[int | None, int | None] = (None, None)
        self._chat_windows: dict[ChatId, deque[float]] = defaultdict(deque)
        self._global_window: deque[float] = deque()
        self._tick = asyncio.Event()
        self._closing = False
        self._runner: web.AppRunner | None = None
        handlers: dict[str, Handler] = {
            "getMe": self._get_me,
            "getUpdates": self._get_updates,
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "answerCallbackQuery": self._answer_callback_query,
            "sendChatAction": self._send_chat_action,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "getFile": self._get_file,
        }
        self._methods = {name.lower(): (name, h) for name, h in handlers.items()}

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> TelegramStandIn:
        app = web.Application(client_max_size=50 * 1024 * 1024)  # Bot API upload limit
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_file)
        self._closing = False
        self._tick = asyncio.Event()  # bind to the running loop
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        self._closing = True
        self._notify()  # long polls and stalls answer now instead of blocking shutdown
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> TelegramStandIn:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def api_server(self) -> TelegramAPIServer:
        return TelegramAPIServer.from_base(self.base_url)

    def make_bot(self, token: str = DEFAULT_TOKEN, **kwargs: Any) -> Bot:
        """A real aiogram Bot pointed at this server (caller closes ``bot.session``)."""
        return Bot(token, session=AiohttpSession(api=self.api_server), **kwargs)

    # ---- updates ---------------------------------------------------------------------------

    async def webhook_replied(self, status: int, body: bytes, token: str = DEFAULT_TOKEN) -> None:
        """What Telegram does with a webhook's response: a 200 whose JSON body names a
        `method` is that call, made for the bot (its result is reported to no one)."""
        if status != 200 or not body:
            return
        try:
            params = json.loads(body)
        except ValueError:
            return
        if not isinstance(params, dict) or not isinstance(params.get("method"), str):
            return
        name = params.pop("method")
        method, handler = self._methods.get(name.lower(), (name, None))
        if handler is None:
            return
        at = time.monotonic()
        try:
            await handler(token, params)
        except ApiError as e:
            self._failed(method, params, at, e.status, e.description)
            return
        self.calls.append(Call(method, params, at))
        self._notify()

    def push_update(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue an Update for getUpdates; returns the queued copy.

        A missing update_id, or one not above every id queued so far, gets the next id:
        Telegram ids only grow, and a stale id would be silently dropped by offset confirmation
        (which matters when a test pushes the same fixture twice).
        """
        update = copy.deepcopy(update)
        given = update.get("update_id")
        if not isinstance(given, int) or given <= self._last_update_id:
            update["update_id"] = self._last_update_id + 1
        self._last_update_id = update["update_id"]
        self._learn(update)
        self._updates.append(update)
        self._notify()
        return update

    def push_text(
        self,
        user_id: int,
        text: str,
        *,
        language_code: str = "en",
        first_name: str = "Test",
        chat_id: int | None = None,
    ) -> dict[str, Any]:
        """Queue a text message from a user (private chat unless chat_id is given)."""
        cid = user_id if chat_id is None else chat_id
        user = {
            "id": user_id,
            "is_bot": False,
            "first_name": first_name,
            "language_code": language_code,
        }
        chat = self._chats.get(cid) or {"id": cid, "type": "private", "first_name": first_name}
        message: dict[str, Any] = {
            "message_id": self._next_message_id(cid),
            "from": user,
            "chat": chat,
            "date": int(time.time()),
            "text": text,
        }
        if text.startswith("/"):
            command = text.split()[0]
            message["entities"] = [{"offset": 0, "length": len(command), "type": "bot_command"}]
        return self.push_update({"message": message})

    def push_callback(
        self,
        user_id: int,
        data: str,
        *,
        message: dict[str, Any] | None = None,
        language_code: str = "en",
        first_name: str = "Test",
    ) -> dict[str, Any]:
        """Queue a button press; ``message`` defaults to the bot's latest message to user_id."""
        if message is None:
            message = self.bot_messages(user_id)[-1]
        self._callback_seq += 1
        query = {
            "id": str(self._callback_seq),
            "from": {
                "id": user_id,
                "is_bot": False,
                "first_name": first_name,
                "language_code": language_code,
            },
            "message": message,
            "chat_instance": str(-(8_000_000_000_000_000_000 + abs(user_id))),
            "data": data,
        }
        return self.push_update({"callback_query": query})

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        """Queued updates not yet confirmed by an offset."""
        return list(self._updates)

    # ---- fault injection -------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        status: int,
        times: int = 1,
        retry_after: int | None = None,
        description: str | None = None,
        *,
        chat_id: ChatId | None = None,
        raw: str | None = None,
    ) -> None:
        """Answer the next ``times`` calls of method (to chat_id, if given) with an error.

        ``raw`` sends that text instead of a JSON body (aiogram then raises ClientDecodeError).
        """
        if status == 429 and retry_after is None:
            retry_after = 1
        if description is None:
            description = (
                f"Too Many Requests: retry after {retry_after}"
                if status == 429
                else _DESCRIPTIONS.get(status, "Error")
            )
        fault = _Fault(method.lower(), chat_id, status, description, retry_after, raw)
        self._faults.extend([fault] * times)

    def stall(
        self, method: str, seconds: float, times: int = 1, *, chat_id: ChatId | None = None
    ) -> None:
        """Delay the answer of the next ``times`` calls of method by ``seconds``."""
        self._stalls.extend([_Stall(method.lower(), chat_id, seconds)] * times)

    def block_chat(self, chat_id: ChatId) -> None:
        """Every call addressed to chat_id answers 403 until unblock_chat()."""
        self._blocked.add(chat_id)

    def unblock_chat(self, chat_id: ChatId) -> None:
        self._blocked.discard(chat_id)

    def rate_limit(
        self, per_chat_per_sec: int | None = None, global_per_sec: int | None = None
    ) -> None:
        """Answer 429 when a 1-second sliding window is full (None: no limit; both None: off)."""
        self._limits = (per_chat_per_sec, global_per_sec)
        self._chat_windows.clear()
        self._global_window.clear()

    # ---- inspection ------------------------------------------------------------------------

    def calls_to(self, method: str) -> list[Params]:
        """Params of the successful calls of method, in answer order."""
        return [c.params for c in self.calls if c.method.lower() == method.lower()]

    def sent_messages(self, chat_id: ChatId | None = None) -> list[Params]:
        """Params of the successful sendMessage calls (to chat_id, if given)."""
        return [
            p
            for p in self.calls_to("sendMessage")
            if chat_id is None or p.get("chat_id") == chat_id
        ]

    def bot_messages(self, chat_id: ChatId | None = None) -> list[dict[str, Any]]:
        """Current state (after edits) of the Message objects the bot sent."""
        return [
            m
            for (cid, _), m in sorted(self._messages.items(), key=lambda kv: kv[1]["message_id"])
            if m.get("from", {}).get("is_bot") and (chat_id is None or cid == chat_id)
        ]

    def reset_calls(self) -> None:
        self.calls.clear()
        self.failed_calls.clear()
        self.count_429 = 0

    # timeout= is the interface tests asked for (ASYNC109 prefers asyncio.timeout)
    async def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0) -> T:
        """Wait until predicate() is truthy and return its value; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while not (result := predicate()):
            left = deadline - time.monotonic()
            if left <= 0:
                recent = [(c.method, c.params) for c in self.calls[-5:]]
                msg = f"condition not met within {timeout}s; last calls: {recent!r}"
                raise TimeoutError(msg)
            # re-check at least every 50 ms: the predicate may watch state outside the stand-in
            await self._wait_change(min(left, 0.05))
        return result

    async def wait_for_messages(
        self,
        n: int,
        chat_id: ChatId | None = None,
        timeout: float = 10.0,
    ) -> list[Params]:
        """Wait for at least n sendMessage calls (to chat_id); returns all of them."""
        return await self.wait_for(
            lambda: (sent := self.sent_messages(chat_id)) and len(sent) >= n and sent,
            timeout,
        )

    def add_file(self, file_id: str, data: bytes, file_path: str | None = None) -> str:
        """Make a file available to getFile and the download URL; returns its file_path."""
        path = file_path or f"documents/file_{len(self._files)}"
        self._files[file_id] = (path, data)
        return path

    # ---- HTTP ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        at = time.monotonic()
        token, name = request.match_info["token"], request.match_info["method"]
        params = await _read_params(request)
        method, handler = self._methods.get(name.lower(), (name, None))
        try:
            if self.tokens is not None and token not in self.tokens:
                raise ApiError(401, "Unauthorized")
            if handler is None:
                raise ApiError(404, "Not Found: method not found")
            chat_id = params.get("chat_id")
            if stall := self._take(self._stalls, method, chat_id):
                await self._sleep(stall.seconds)
                if request.transport is None or request.transport.is_closing():
                    # the client gave up (timeout): it never saw an answer, so don't act
                    raise ApiError(499, "client closed request during stall")
            if fault := self._take(self._faults, method, chat_id):
                if fault.raw is not None:
                    self._failed(method, params, at, fault.status, fault.description)
                    return web.Response(
                        status=fault.status, text=fault.raw, content_type="text/html"
                    )
                raise ApiError(fault.status, fault.description, fault.retry_after)
            if chat_id is not None and chat_id in self._blocked:
                raise ApiError(403, BLOCKED)
            if method in _RATE_LIMITED:
                self._check_rate(chat_id)
            result = await handler(token, params)
        except ApiError as e:
            self._failed(method, params, at, e.status, e.description)
            body: Params = {"ok": False, "error_code": e.status, "description": e.description}
            if e.retry_after is not None:
                body["parameters"] = {"retry_after": e.retry_after}
            return web.json_response(body, status=e.status)
        self.calls.append(Call(method, params, at))
        self._notify()
        return web.json_response({"ok": True, "result": result})

    async def _handle_file(self, request: web.Request) -> web.Response:
        token, path = request.match_info["token"], request.match_info["path"]
        if self.tokens is None or token in self.tokens:
            for file_path, data in self._files.values():
                if file_path == path:
                    return web.Response(body=data, content_type="application/octet-stream")
        body = {"ok": False, "error_code": 404, "description": "Not Found"}
        return web.json_response(body, status=404)

    def _failed(self, method: str, params: Params, at: float, status: int, desc: str) -> None:
        self.failed_calls.append(FailedCall(method, params, at, status, desc))
        self._notify()

    # ---- Bot API methods -------------------------------------------------------------------

    def _bot_user(self, token: str) -> dict[str, Any]:
        bot_id = token.partition(":")[0]  # aiogram derives Bot.id from the token the same way
        return {
            "id": int(bot_id) if bot_id.isdigit() else 1,
            "is_bot": True,
            "first_name": self.bot_first_name,
            "username": self.bot_username,
        }

    async def _get_me(self, token: str, p: Params) -> dict[str, Any]:
        return {
            **self._bot_user(token),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _get_updates(self, token: str, p: Params) -> list[dict[str, Any]]:
        if self.webhook.get("url"):
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        if "allowed_updates" in p:  # remembered across calls, like Telegram does
            self._allowed_updates = set(p["allowed_updates"]) or None
        limit = min(max(int(p.get("limit", 100)), 1), 100)
        deadline = time.monotonic() + max(float(p.get("timeout", 0)), 0.0)
        self._poll_generation += 1
        generation = self._poll_generation
        self._notify()  # an older pending poll wakes up and answers 409, as on Telegram
        while True:
            self._confirm(p.get("offset"))
            if generation != self._poll_generation:
                raise ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; "
                    "make sure that only one bot instance is running",
                )
            left = deadline - time.monotonic()
            if self._updates or self._closing or left <= 0:
                return self._updates[:limit]
            await self._wait_change(left)

    async def _send_message(self, token: str, p: Params) -> dict[str, Any]:
        chat_id = _required(p, "chat_id")
        text = p.get("text")
        if not text:
            raise ApiError(400, "Bad Request: message text is empty")
        if len(str(text).encode("utf-16-le")) // 2 > 4096:  # Telegram counts UTF-16 units
            raise ApiError(400, "Bad Request: message is too long")
        message: dict[str, Any] = {
            "message_id": self._next_message_id(chat_id),
            "from": self._bot_user(token),
            "chat": self._chat(chat_id),
            "date": int(time.time()),
            "text": text,
        }
        if p.get("entities"):
            message["entities"] = p["entities"]
        _set_markup(message, p.get("reply_markup"))
        self._messages[(chat_id, message["message_id"])] = message
        return message

    async def _edit_message_text(self, token: str, p: Params) -> dict[str, Any] | bool:
        if not p.get("text"):
            raise ApiError(400, "Bad Request: message text is empty")
        return self._edit(p, text=p["text"], entities=p.get("entities"))

    async def _edit_message_reply_markup(self, token: str, p: Params) -> dict[str, Any] | bool:
        return self._edit(p)

    def _edit(self, p: Params, **changes: Any) -> dict[str, Any] | bool:
        if p.get("inline_message_id"):
            return True  # inline messages aren't stored; Telegram answers True for them
        key: tuple[Any, Any] = (_required(p, "chat_id"), p.get("message_id"))
        message = self._messages.get(key)
        if message is None:
            raise ApiError(400, "Bad Request: message to edit not found")
        if not message.get("from", {}).get("is_bot"):
            raise ApiError(400, "Bad Request: message can't be edited")
        updated = {k: v for k, v in message.items() if k != "edit_date"}
        for name, value in changes.items():
            if value is None:
                updated.pop(name, None)
            else:
                updated[name] = value
        _set_markup(updated, p.get("reply_markup"))
        if updated == {k: v for k, v in message.items() if k != "edit_date"}:
            raise ApiError(400, NOT_MODIFIED)
        updated["edit_date"] = int(time.time())
        self._messages[key] = updated
        return updated

    async def _answer_callback_query(self, token: str, p: Params) -> bool:
        if not p.get("callback_query_id"):
            raise ApiError(
                400,
                "Bad Request: query is too old and response timeout expired or query ID is invalid",
            )
        return True

    async def _send_chat_action(self, token: str, p: Params) -> bool:
        _required(p, "chat_id")
        if p.get("action") not in _CHAT_ACTIONS:
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        return True

    async def _set_webhook(self, token: str, p: Params) -> bool:
        url = p.get("url", "")  # aiogram drops url="" from the request: that means "remove"
        if url and not str(url).startswith("https://"):
            msg = "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"
            raise ApiError(400, msg)
        if p.get("drop_pending_updates"):
            self._updates.clear()
        self.webhook = dict(p) if url else {}
        return True

    async def _delete_webhook(self, token: str, p: Params) -> bool:
        if p.get("drop_pending_updates"):
            self._updates.clear()
        self.webhook = {}
        return True

    async def _get_webhook_info(self, token: str, p: Params) -> dict[str, Any]:
        info: dict[str, Any] = {
            "url": self.webhook.get("url", ""),
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if info["url"]:
            info["max_connections"] = self.webhook.get("max_connections", 40)
            info["ip_address"] = "149.154.167.220"
            if "allowed_updates" in self.webhook:
                info["allowed_updates"] = self.webhook["allowed_updates"]
        return info

    async def _set_my_commands(self, token: str, p: Params) -> bool:
        commands = _required(p, "commands")
        for c in commands:
            if not _COMMAND_RE.fullmatch(str(c.get("command", ""))):
                raise ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(str(c.get("description", ""))) <= 256:
                raise ApiError(400, "Bad Request: command description is empty")
        self.commands[_commands_key(p)] = commands
        return True

    async def _get_my_commands(self, token: str, p: Params) -> list[dict[str, Any]]:
        return self.commands.get(_commands_key(p), [])

    async def _delete_my_commands(self, token: str, p: Params) -> bool:
        self.commands.pop(_commands_key(p), None)
        return True

    async def _get_file(self, token: str, p: Params) -> dict[str, Any]:
        file_id = p.get("file_id", "")
        if file_id not in self._files:
            raise ApiError(400, "Bad Request: invalid file_id")
        path, data = self._files[file_id]
        return {
            "file_id": file_id,
            "file_unique_id": f"u{abs(hash(file_id)) % 10**10}",
            "file_size": len(data),
            "file_path": path,
        }

    # ---- internals -------------------------------------------------------------------------

    def _notify(self) -> None:
        # wake every waiter; each waits on the event current when it started
        self._tick.set()
        self._tick = asyncio.Event()

    async def _wait_change(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._tick.wait(), seconds)

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._closing and (left := deadline - time.monotonic()) > 0:
            await self._wait_change(left)

    @staticmethod
    def _take(queue: list[Any], method: str, chat_id: Any) -> Any:
        for i, item in enumerate(queue):
            if item.method == method.lower() and item.chat_id in (None, chat_id):
                return queue.pop(i)
        return None

    def _check_rate(self, chat_id: Any) -> None:
        per_chat, per_all = self._limits
        now = time.monotonic()
        windows = [(self._chat_windows[chat_id], per_chat), (self._global_window, per_all)]
        windows = [(w, limit) for w, limit in windows if limit is not None]
        for window, limit in windows:
            while window and window[0] <= now - 1.0:
                window.popleft()
            if len(window) >= limit:
                self.count_429 += 1
                retry_after = max(1, math.ceil(window[0] + 1.0 - now))
                raise ApiError(429, f"Too Many Requests: retry after {retry_after}", retry_after)
        for window, _ in windows:
            window.append(now)

    def _confirm(self, offset: Any) -> None:
        if isinstance(offset, int):
            if offset < 0:  # -N: keep only the last N updates
                self._updates = self._updates[offset:]
            else:  # offset confirms (forgets) every update below it
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
        allowed = self._allowed_updates
        self._updates = [
            u
            for u in self._updates
            if (_kind(u) in allowed if allowed else _kind(u) not in _OPT_IN_UPDATES)
        ]

    def _next_message_id(self, chat_id: ChatId) -> int:
        self._last_message_id[chat_id] += 1
        return self._last_message_id[chat_id]

    def _chat(self, chat_id: ChatId) -> dict[str, Any]:
        if chat_id in self._chats:
            return self._chats[chat_id]
        if isinstance(chat_id, str):  # "@channelusername"
            return {"id": -1001000000001, "type": "channel", "title": chat_id[1:]}
        if chat_id > 0:
            return {"id": chat_id, "type": "private", "first_name": "User"}
        kind = "supergroup" if str(chat_id).startswith("-100") else "group"
        return {"id": chat_id, "type": kind, "title": "Group"}

    def _learn(self, node: Any) -> None:
        """Remember chats and messages seen in pushed updates, for realistic replies/edits."""
        if isinstance(node, list):
            for item in node:
                self._learn(item)
            return
        if not isinstance(node, dict):
            return
        chat = node.get("chat")
        if isinstance(chat, dict) and "id" in chat and "type" in chat:
            self._chats[chat["id"]] = chat
            if isinstance(node.get("message_id"), int):
                mid = node["message_id"]
                self._last_message_id[chat["id"]] = max(self._last_message_id[chat["id"]], mid)
                self._messages[(chat["id"], mid)] = node
        for value in node.values():
            self._learn(value)


async def _read_params(request: web.Request) -> Params:
    """Query string + form/multipart (aiogram) or JSON body (other clients), values decoded."""
    params: Params = {}
    fields: list[tuple[str, Any]] = list(request.query.items())
    body: Params = {}
    if request.can_read_body:
        if request.content_type == "application/json":
            body = await request.json()  # already typed
        else:
            fields += list((await request.post()).items())
    for key, value in fields:
        if isinstance(value, web.FileField):
            params[key] = UploadedFile(value.filename, value.content_type, value.file.read())
        else:
            params[key] = value if key in _TEXT_PARAMS else _json_or_str(value)
    params.update(body)
    chat_id = params.get("chat_id")
    if isinstance(chat_id, str) and chat_id.lstrip("-").isdigit():  # JSON clients may send "42"
        params["chat_id"] = int(chat_id)
    return params


def _json_or_str(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value  # e.g. "@channel" or "attach://..."


def _required(p: Params, name: str) -> Any:
    if p.get(name) in (None, ""):
        raise ApiError(400, f"Bad Request: {name} is empty")
    return p[name]


def _set_markup(message: dict[str, Any], markup: Any) -> None:
    # Telegram echoes only inline keyboards; reply keyboards / remove / force_reply are not
    # part of Message.reply_markup (aiogram would fail to parse them there).
    if isinstance(markup, dict) and "inline_keyboard" in markup:
        message["reply_markup"] = markup
    else:
        message.pop("reply_markup", None)


def _kind(update: dict[str, Any]) -> str:
    return next((k for k in update if k != "update_id"), "")


def _commands_key(p: Params) -> tuple[str, str]:
    scope = p.get("scope") or {"type": "default"}
    return str(scope.get("type", "default")), str(p.get("language_code", ""))
