"""In-process stand-in for Slack (aiohttp.web on 127.0.0.1), both directions.

* The Web API the app calls through slack_sdk (``slack.api_base = standin.api_base``):
  ``auth.test``, ``chat.postMessage``, ``chat.update``, ``chat.delete``, ``chat.postEphemeral``,
  ``users.info``, ``conversations.open``, ``apps.connections.open``. Requests carry the
  token as ``Authorization: Bearer``; parameters come as a JSON body (chat.*), query string
  or form, as slack_sdk sends them. Errors answer like Slack: HTTP 200 with
  ``{"ok": false, "error": ...}``, and 429 with ``Retry-After`` for ``ratelimited``.
* Slack calling the app: Events API envelopes and interactivity payloads, built from the
  templates in ``tests/fixtures/slack/``, signed with the signing secret (v0) and POSTed to
  ``app_url`` (with ``X-Slack-Retry-Num`` when asked), or pushed over the Socket Mode
  WebSocket that ``apps.connections.open`` hands out, waiting for the app's ack.

One workspace, one bot. Messages the bot posts are kept per channel (edited in place by
chat.update, removed by chat.delete, which like Slack's refuses a bot token on a person's
message); a human's message delivered through ``say`` is kept too, so threads read
like Slack's.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import itertools
import json
import re
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

T = TypeVar("T")
Params = dict[str, Any]

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "slack"
BOT_TOKEN = "xoxb-1000000001-2000000002-standinBotToken0123"
APP_TOKEN = "xapp-1-A0CIC0001-3000000003-standinAppToken"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TEAM, APP_ID, BOT_USER, BOT_ID = "T0CICTEAM1", "A0CIC0001", "U0CICBOT01", "B0CICBOT01"
MARKUP_RE = re.compile(r"&lt;([@#!][A-Za-z0-9^|. -]*|https?://[^&\s]+(?:\|[^&]*)?)&gt;")
MAX_TEXT = 40_000
MAX_SECTION = 3000


def load_fixture(name: str) -> dict[str, Any]:
    path = FIXTURES_DIR / (name if name.endswith(".json") else f"{name}.json")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def sign(body: bytes, secret: str = SIGNING_SECRET, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack sends with a request: v0 signature over `v0:{ts}:{body}`."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    base = b"v0:" + ts.encode() + b":" + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


class Call(NamedTuple):
    method: str
    params: Params
    at: float  # time.monotonic() when answered


class Delivery(NamedTuple):
    """What the app answered to a request Slack made."""

    status: int
    body: str


@dataclass
class _Fault:
    method: str
    channel: str | None
    error: str
    status: int
    retry_after: int | None
    after: int  # matching calls let through first


class ApiError(Exception):
    def __init__(self, error: str, status: int = 200, retry_after: int | None = None) -> None:
        super().__init__(error)
        self.error, self.status, self.retry_after = error, status, retry_after


class SlackStandIn:
    """``async with SlackStandIn() as slack: ...``; set ``slack.app_url`` to deliver events."""

    def __init__(
        self,
        *,
        bot_token: str = BOT_TOKEN,
        app_token: str = APP_TOKEN,
        signing_secret: str = SIGNING_SECRET,
        scopes: tuple[str, ...] = ("chat:write", "im:history", "users:read", "users:read.email"),
    ) -> None:
        self.bot_token, self.app_token, self.signing_secret = bot_token, app_token, signing_secret
        self.scopes = set(scopes)
        self.base_url = ""
        self.app_url = ""  # the app's POST /webhooks/slack/events
        self.calls: list[Call] = []
        self.failed_calls: list[Call] = []
        self.users: dict[str, dict[str, Any]] = {}
        self.channels: dict[str, list[dict[str, Any]]] = defaultdict(list)  # id → messages
        self._faults: list[_Fault] = []
        self._stalls: list[tuple[str, float]] = []
        self._per_channel: int | None = None
        self._windows: dict[str, deque[float]] = defaultdict(deque)
        self._clock = itertools.count(int(time.time()) * 1_000_000)
        self._events = itertools.count(1)
        self._tick = asyncio.Event()
        self._sockets: list[web.WebSocketResponse] = []
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._methods: dict[str, Callable[[Params, str], Awaitable[Params]]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.delete": self._delete,
            "chat.postEphemeral": self._post_ephemeral,
            "users.info": self._users_info,
            "conversations.open": self._conversations_open,
            "apps.connections.open": self._connections_open,
        }

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> SlackStandIn:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._handle)
        app.router.add_get("/link", self._socket)
        self._tick = asyncio.Event()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        self._client = aiohttp.ClientSession()
        return self

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SlackStandIn:
        return await self.start()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/"

    # ---- set-up and fault injection --------------------------------------------------------

    def add_user(
        self,
        user_id: str,
        real_name: str,
        *,
        locale: str = "en-US",
        email: str | None = None,
        is_bot: bool = False,
        team: str = TEAM,
    ) -> dict[str, Any]:
        name = real_name.lower().replace(" ", ".")
        user = {
            "id": user_id,
            "team_id": team,
            "name": name,
            "real_name": real_name,
            "is_bot": is_bot,
            "deleted": False,
            "tz": "Europe/Berlin",
            "locale": locale,
            "profile": {
                "real_name": real_name,
                "display_name": real_name.split()[0],
                **({"email": email} if email else {}),
            },
        }
        self.users[user_id] = user
        return user

    def fail_next(
        self,
        method: str,
        error: str = "ratelimited",
        *,
        times: int = 1,
        status: int | None = None,
        retry_after: int | None = None,
        channel: str | None = None,
        after: int = 0,
    ) -> None:
        """Answer `times` calls of method (to channel, if given) with an error, after letting
        `after` such calls through; ``ratelimited`` is a 429 with Retry-After (default 1 s)."""
        if error == "ratelimited":
            status, retry_after = status or 429, 1 if retry_after is None else retry_after
        fault = _Fault(method, channel, error, status or 200, retry_after, after)
        self._faults.extend(replace(fault) for _ in range(times))

    def clear_faults(self) -> None:
        self._faults.clear()

    def stall(self, method: str, seconds: float, times: int = 1) -> None:
        self._stalls.extend([(method, seconds)] * times)

    def rate_limit(self, per_channel_per_sec: int | None) -> None:
        """429 for chat.postMessage when a channel's 1-second sliding window is full."""
        self._per_channel = per_channel_per_sec
        self._windows.clear()

    # ---- inspection ------------------------------------------------------------------------

    def calls_to(self, method: str) -> list[Params]:
        return [c.params for c in self.calls if c.method == method]

    def messages(self, channel: str, *, thread_ts: str | None = None) -> list[dict[str, Any]]:
        """A channel's messages, thread replies included (current state, oldest first); with
        thread_ts, only the replies in that thread."""
        found = self.channels.get(channel, [])
        if thread_ts is None:
            return list(found)
        return [m for m in found if m.get("thread_ts") == thread_ts and m["ts"] != thread_ts]

    def bot_messages(self, channel: str, *, thread_ts: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages(channel, thread_ts=thread_ts) if m.get("bot_id")]

    def texts(self, channel: str, *, thread_ts: str | None = None) -> list[str]:
        return [str(m.get("text", "")) for m in self.bot_messages(channel, thread_ts=thread_ts)]

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0) -> T:
        """Wait until predicate() is truthy (re-checked on every API call); its value."""
        async with asyncio.timeout(timeout):
            while True:
                self._tick.clear()
                value = predicate()
                if value:
                    return value
                try:
                    await asyncio.wait_for(self._tick.wait(), 0.1)
                except TimeoutError:
                    pass

    # ---- the Web API -----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: Params = dict(request.query)
        if request.content_type == "application/json":
            params.update(await request.json())
        elif request.method == "POST" and request.can_read_body:
            params.update(dict(await request.post()))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        token = token or str(params.pop("token", ""))
        params.pop("token", None)
        for i, (name, seconds) in enumerate(self._stalls):
            if name == method:
                del self._stalls[i]
                await asyncio.sleep(seconds)
                break
        try:
            handler = self._methods.get(method)
            if handler is None:
                raise ApiError("unknown_method")
            self._check_fault(method, params)
            result = await handler(params, token)
        except ApiError as exc:
            self.failed_calls.append(Call(method, params, time.monotonic()))
            self._tick.set()
            headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
            body = {"ok": False, "error": exc.error}
            return web.json_response(body, status=exc.status, headers=headers)
        self.calls.append(Call(method, params, time.monotonic()))
        self._tick.set()
        return web.json_response({"ok": True, **result})

    def _check_fault(self, method: str, params: Params) -> None:
        for i, f in enumerate(self._faults):
            if f.method == method and f.channel in (None, params.get("channel")):
                if f.after > 0:
                    f.after -= 1
                    break
                del self._faults[i]
                raise ApiError(f.error, f.status, f.retry_after)
        if method == "chat.postMessage" and self._per_channel is not None:
            window = self._windows[str(params.get("channel"))]
            now = time.monotonic()
            while window and now - window[0] >= 1.0:
                window.popleft()
            if len(window) >= self._per_channel:
                raise ApiError("ratelimited", 429, 1)
            window.append(now)

    def _bot(self, token: str) -> None:
        if token != self.bot_token:
            raise ApiError("invalid_auth" if token else "not_authed")

    async def _auth_test(self, p: Params, token: str) -> Params:
        self._bot(token)
        return {
            "url": "https://cic-test.slack.com/",
            "team": "CIC Test",
            "user": "cicbot",
            "team_id": TEAM,
            "user_id": BOT_USER,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def next_ts(self) -> str:
        n = next(self._clock)
        return f"{n // 1_000_000}.{n % 1_000_000:06d}"

    def _channel(self, p: Params) -> str:
        channel = str(p.get("channel") or "")
        if not channel:
            raise ApiError("channel_not_found")
        if channel.startswith("U"):  # posting to a user id goes to the DM with the app
            channel = "D" + channel[1:]
        if channel[:1] not in ("C", "D", "G"):
            raise ApiError("channel_not_found")
        return channel

    async def _post_message(self, p: Params, token: str) -> Params:
        self._bot(token)
        channel = self._channel(p)
        message = self._message_body(p)
        message.update({"type": "message", "user": BOT_USER, "bot_id": BOT_ID, "app_id": APP_ID})
        message["ts"] = self.next_ts()
        thread_ts = p.get("thread_ts")
        if thread_ts:
            if not any(m["ts"] == thread_ts for m in self.channels[channel]):
                raise ApiError("thread_not_found")
            message["thread_ts"] = str(thread_ts)
        self.channels[channel].append(message)
        return {"channel": channel, "ts": message["ts"], "message": message}

    async def _update(self, p: Params, token: str) -> Params:
        self._bot(token)
        channel = self._channel(p)
        found = next((m for m in self.channels[channel] if m["ts"] == p.get("ts")), None)
        if found is None:
            raise ApiError("message_not_found")
        if not found.get("bot_id"):
            raise ApiError("cant_update_message")
        body = self._message_body(p)
        found.pop("blocks", None)
        found.update(body)
        found["edited"] = {"user": BOT_USER, "ts": self.next_ts()}
        return {"channel": channel, "ts": found["ts"], "text": found.get("text", "")}

    async def _delete(self, p: Params, token: str) -> Params:
        self._bot(token)
        channel = self._channel(p)
        found = next((m for m in self.channels[channel] if m["ts"] == p.get("ts")), None)
        if found is None:
            raise ApiError("message_not_found")
        if not found.get("bot_id"):  # a bot token deletes only the bot's own messages
            raise ApiError("cant_delete_message")
        self.channels[channel].remove(found)
        return {"channel": channel, "ts": found["ts"]}

    async def _post_ephemeral(self, p: Params, token: str) -> Params:
        self._bot(token)
        self._channel(p)
        if not p.get("user"):
            raise ApiError("user_not_in_channel")
        self._message_body(p)
        return {"message_ts": self.next_ts()}

    def _message_body(self, p: Params) -> Params:
        text = p.get("text")
        blocks = p.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        if not text and not blocks:
            raise ApiError("no_text")
        if text and len(str(text)) > MAX_TEXT:
            raise ApiError("msg_too_long")
        body: Params = {"text": str(text or "")}
        if blocks:
            _check_blocks(blocks)
            body["blocks"] = blocks
        return body

    async def _users_info(self, p: Params, token: str) -> Params:
        self._bot(token)
        if "users:read" not in self.scopes:
            raise ApiError("missing_scope")
        user = self.users.get(str(p.get("user")))
        if user is None:
            raise ApiError("user_not_found")
        user = copy.deepcopy(user)
        if str(p.get("include_locale")).lower() not in ("true", "1"):
            user.pop("locale", None)
        if "users:read.email" not in self.scopes:
            user["profile"].pop("email", None)
        return {"user": user}

    async def _conversations_open(self, p: Params, token: str) -> Params:
        self._bot(token)
        users = str(p.get("users") or "")
        if not users.startswith("U") or "," in users:
            raise ApiError("user_not_found")
        return {"channel": {"id": "D" + users[1:]}}

    async def _connections_open(self, p: Params, token: str) -> Params:
        if token != self.app_token:
            raise ApiError("invalid_auth")
        return {"url": f"ws://{self.base_url.removeprefix('http://')}/link?ticket=t"}

    # ---- Slack calling the app: HTTP ------------------------------------------------------

    async def post(
        self,
        body: bytes,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        signed: bool = True,
        timestamp: int | None = None,
        secret: str | None = None,
    ) -> Delivery:
        assert self._client is not None and self.app_url, "start() and set app_url first"
        sent = {"Content-Type": content_type}
        if signed:
            sent.update(sign(body, secret or self.signing_secret, timestamp))
        sent.update(headers or {})
        async with self._client.post(self.app_url, data=body, headers=sent) as response:
            return Delivery(response.status, await response.text())

    async def send_event(
        self,
        envelope: dict[str, Any],
        *,
        retry_num: int | None = None,
        retry_reason: str = "http_timeout",
        **kw: Any,
    ) -> Delivery:
        """POST an Events API envelope (or push it over Socket Mode when connected)."""
        if self._sockets:
            ack = await self.push_socket("events_api", envelope, retry_attempt=retry_num or 0)
            return Delivery(200, json.dumps(ack))
        headers = dict(kw.pop("headers", None) or {})
        if retry_num is not None:
            headers.update(
                {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": retry_reason}
            )
        body = json.dumps(envelope).encode()
        return await self.post(body, headers=headers, **kw)

    async def send_action(self, payload: dict[str, Any], **kw: Any) -> Delivery:
        if self._sockets:
            ack = await self.push_socket("interactive", payload)
            return Delivery(200, json.dumps(ack))
        body = urlencode({"payload": json.dumps(payload)}).encode()
        return await self.post(body, content_type="application/x-www-form-urlencoded", **kw)

    async def send_command(self, fields: dict[str, Any], **kw: Any) -> Delivery:
        """A slash command: form fields POSTed (or pushed as `slash_commands`)."""
        if self._sockets:
            ack = await self.push_socket("slash_commands", fields)
            return Delivery(200, json.dumps(ack))
        body = urlencode(fields).encode()
        return await self.post(body, content_type="application/x-www-form-urlencoded", **kw)

    # ---- builders --------------------------------------------------------------------------

    def slash_command(
        self, user: str, channel: str, text: str, command: str = "/support"
    ) -> dict[str, Any]:
        """The form fields Slack sends when `user` types `command text` in `channel`."""
        fields = load_fixture("slash_command")
        fields.update(
            {
                "user_id": user,
                "user_name": user.lower(),
                "channel_id": channel,
                "command": command,
                "text": text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"),
                "trigger_id": f"{next(self._events)}.{uuid.uuid4().hex}",
            }
        )
        return fields

    def message_shortcut(
        self,
        user: str,
        channel: str,
        message: dict[str, Any],
        callback_id: str = "send_to_support",
    ) -> dict[str, Any]:
        """The payload of a message shortcut `user` picked on `message` in `channel`."""
        payload = load_fixture("message_action")
        payload["user"] = {"id": user, "username": user.lower(), "name": user.lower()}
        payload["channel"] = {"id": channel, "name": "c"}
        payload["callback_id"] = callback_id
        payload["message"] = copy.deepcopy(message)
        payload["message_ts"] = message["ts"]
        payload["trigger_id"] = f"{next(self._events)}.{uuid.uuid4().hex}"
        return payload

    def envelope(self, event: dict[str, Any], template: str = "message_im") -> dict[str, Any]:
        envelope = load_fixture(template)
        envelope["event"] = event
        envelope["event_id"] = f"Ev{next(self._events):010d}"
        envelope["event_time"] = int(time.time())
        return envelope

    def user_message(
        self,
        user: str,
        channel: str,
        text: str,
        *,
        thread_ts: str | None = None,
        channel_type: str | None = None,
        event_type: str = "message",
        keep: bool = True,
    ) -> dict[str, Any]:
        """A person's message as Slack reports it (kept in the channel unless keep=False):
        `&`, `<` and `>` arrive encoded, except in Slack's own markup (`<@U…>`, `<#C…>`,
        `<!here>`, `<https://…|label>`), which the caller writes as Slack would."""
        text = MARKUP_RE.sub(
            r"<\1>", text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        )
        event = copy.deepcopy(load_fixture("message_im")["event"])
        ts = self.next_ts()
        event.update({"user": user, "ts": ts, "event_ts": ts, "text": text, "channel": channel})
        event["client_msg_id"] = str(uuid.uuid4())
        event["blocks"][0]["elements"][0]["elements"][0]["text"] = text
        event["channel_type"] = channel_type or ("im" if channel.startswith("D") else "channel")
        event["type"] = event_type
        if event_type == "app_mention":
            event.pop("channel_type")
        if thread_ts:
            event["thread_ts"] = thread_ts
            event["parent_user_id"] = BOT_USER
        if keep:
            stored = {k: event[k] for k in ("type", "user", "ts", "text") if k in event}
            if thread_ts:
                stored["thread_ts"] = thread_ts
            self.channels[channel].append(stored)
            self._tick.set()
        return event

    async def say(self, user: str, channel: str, text: str, **kw: Any) -> dict[str, Any]:
        """A person writes; the event is delivered and must be acknowledged with 200."""
        event = self.user_message(user, channel, text, **kw)
        delivered = await self.send_event(self.envelope(event))
        assert delivered.status == 200, delivered
        return event

    def block_action(
        self, user: str, channel: str, message: dict[str, Any], value: str
    ) -> dict[str, Any]:
        """A press on the button with `value` (or action_id) on one of the bot's messages."""
        payload = load_fixture("block_actions")
        button, block_id = None, None
        for block in message.get("blocks", []):
            for element in block.get("elements", []) if block.get("type") == "actions" else []:
                if value in (element.get("value"), element.get("action_id")):
                    button, block_id = element, block.get("block_id")
        assert button is not None, f"no button {value!r} on the message"
        payload["user"] = {
            "id": user,
            "username": user.lower(),
            "name": user.lower(),
            "team_id": TEAM,
        }
        payload["container"].update({"message_ts": message["ts"], "channel_id": channel})
        if message.get("thread_ts"):
            payload["container"]["thread_ts"] = message["thread_ts"]
        payload["channel"] = {"id": channel, "name": "directmessage" if channel[0] == "D" else "c"}
        payload["message"] = copy.deepcopy(message)
        payload["trigger_id"] = f"{next(self._events)}.{uuid.uuid4().hex}"
        payload["actions"] = [
            {
                "action_id": button["action_id"],
                "block_id": block_id,
                "text": button["text"],
                "value": button.get("value", ""),
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ]
        return payload

    async def press(
        self, user: str, channel: str, value: str, *, message: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Press a button (by value or action_id) on the bot's newest message that has it."""
        if message is None:
            message = await self.wait_for(lambda: self._with_button(channel, value))
        payload = self.block_action(user, channel, message, value)
        delivered = await self.send_action(payload)
        assert delivered.status == 200, delivered
        return payload

    def _with_button(self, channel: str, value: str) -> dict[str, Any] | None:
        for m in reversed(self.bot_messages(channel)):
            for block in m.get("blocks", []):
                if block.get("type") == "actions" and any(
                    value in (e.get("value"), e.get("action_id")) for e in block["elements"]
                ):
                    return m
        return None

    # ---- Slack calling the app: Socket Mode ------------------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        self._tick.set()
        await ws.send_json({"type": "hello", "num_connections": 1, "debug_info": {}})
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    ack = json.loads(msg.data)
                    future = self._acks.pop(str(ack.get("envelope_id")), None)
                    if future is not None and not future.done():
                        future.set_result(ack)
        finally:
            self._sockets.remove(ws)
        return ws

    async def push_socket(
        self, kind: str, payload: dict[str, Any], *, retry_attempt: int = 0, timeout: float = 10
    ) -> dict[str, Any]:
        """Send one envelope over the newest Socket Mode connection; the app's ack."""
        envelope_id = str(uuid.uuid4())
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[envelope_id] = future
        await self._sockets[-1].send_json(
            {
                "envelope_id": envelope_id,
                "type": kind,
                "accepts_response_payload": False,
                "retry_attempt": retry_attempt,
                "retry_reason": "timeout" if retry_attempt else "",
                "payload": payload,
            }
        )
        async with asyncio.timeout(timeout):
            return await future

    @property
    def socket_connected(self) -> bool:
        return bool(self._sockets)


def _check_blocks(blocks: Any) -> None:
    """The Block Kit limits the app must keep (the real API answers invalid_blocks)."""
    if not isinstance(blocks, list) or not 0 < len(blocks) <= 50:
        raise ApiError("invalid_blocks")
    action_ids: set[str] = set()
    for block in blocks:
        kind = block.get("type")
        if kind == "section":
            text = block.get("text")
            fields = block.get("fields", [])
            if text is None and not fields:
                raise ApiError("invalid_blocks")
            if text is not None and (
                text.get("type") not in ("plain_text", "mrkdwn")
                or not 0 < len(text.get("text", "")) <= MAX_SECTION
            ):
                raise ApiError("invalid_blocks")
            if len(fields) > 10 or any(len(f.get("text", "")) > 2000 for f in fields):
                raise ApiError("invalid_blocks")
        elif kind == "actions":
            elements = block.get("elements", [])
            if not 0 < len(elements) <= 25:
                raise ApiError("invalid_blocks")
            for e in elements:
                label = (e.get("text") or {}).get("text", "")
                aid = e.get("action_id", "")
                if (
                    not label
                    or len(label) > 75
                    or len(e.get("value", "")) > 2000
                    or aid in action_ids
                ):
                    raise ApiError("invalid_blocks")
                action_ids.add(aid)
        elif kind in ("context", "header", "divider", "rich_text"):
            continue
        else:
            raise ApiError("invalid_blocks")
