"""The built-in web chat: a page at `/` talking to the engine over a WebSocket.

Protocol (JSON frames):
  client → {"type": "message", "id": "<uuid>", "text": "..."}
           {"type": "button",  "id": "<uuid>", "payload": "...", "label": "..."}
  server → {"type": "history", "locale": the contact's language,
            "messages": [{"direction", "text", "choices", "at", "sender"}]}
           {"type": "ack", "id": "<uuid>", "duplicate": bool}   once it is in the inbox
           {"type": "message", "id": <outbox id>, "text", "choices": [{payload, label}],
            "sender": an agent's name or null (the bot), "at", "locale"}
           {"type": "error", "error": "...", "retry_after": seconds (limits only)}
The client's message ids make a resend after a reconnect harmless (dedupe). A message goes
through the inbox like every channel's (persisted, then acknowledged; handled in order per
visitor, a flooding visitor paced there); its replies come back through the outbox.
A reply to a visitor who is offline stays in the history and is shown on return.

The socket's query: `lang` (a language hint), `name` and `email` (the page's optional
pre-chat form; they go into a new contact). Who the visitor is comes from the session
cookie the page's GET set (channels/webchat/session.py); the socket refuses other sites'
pages (Origin) and keeps to the limits of channels/webchat/limits.py. Close codes: 4401
no valid session (the page fetches itself again for a new cookie), 4403 origin not
allowed, 4429 this address is over a limit, 1013 the server is (retry after the error
frame's `retry_after`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, HTMLResponse, Response

from bot.channel import ChannelAdapter, SendResult
from bot.channel.host import ChannelHost, wait_turn
from bot.channel.messages import InboundMessage, OutboundMessage
from channels.webchat import session as webchat_session
from channels.webchat.limits import Limits, Refusal, address_key
from channels.webchat.settings import WebChatSettings

log = logging.getLogger(__name__)
CHANNEL = "webchat"
ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s.]{2,}$")
MAX_FRAME = 256 * 1024  # a frame larger than this is refused, not processed
HISTORY = 200
STATIC = Path(__file__).parent / "static"
PAGE = STATIC / "index.html"
ASSETS = {  # the only files served under /webchat/static/ (no path built from the request)
    "chat.js": "text/javascript; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
}
NO_SESSION, BAD_ORIGIN = 4401, 4403
DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def security_headers(allowed_origins: list[str]) -> dict[str, str]:
    """The page's: only its own scripts, styles and socket; framed by itself and the
    allowed origins only."""
    ancestors = " ".join(["'self'", *allowed_origins])
    csp = "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            f"frame-ancestors {ancestors}",
            "require-trusted-types-for 'script'",
            "trusted-types 'none'",
        ]
    )
    headers = {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
    if not allowed_origins:  # X-Frame-Options cannot name other origins
        headers["X-Frame-Options"] = "SAMEORIGIN"
    return headers


def _netloc(scheme: str, netloc: str) -> str:
    netloc = netloc.lower()
    port = DEFAULT_PORTS.get(scheme, "")
    return netloc[: -len(port)] if port and netloc.endswith(port) else netloc


def normalize_origin(origin: str) -> str | None:
    """`scheme://host[:port]` in lower case without a default port; None if not http(s)."""
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in DEFAULT_PORTS or not parts.netloc:
        return None
    return f"{parts.scheme}://{_netloc(parts.scheme, parts.netloc)}"


def origin_allowed(origin: str | None, host: str | None, allowed: set[str]) -> bool:
    """The page's own origin (the socket's Host) or one of `webchat.allowed_origins`.
    A socket without Origin is refused too: every browser sends one."""
    own = normalize_origin(origin or "")
    if own is None or not host:
        return False
    scheme, netloc = own.split("://", 1)
    return netloc == _netloc(scheme, host) or own in allowed


class WebChatChannel(ChannelAdapter):
    name = CHANNEL

    def __init__(self, host: ChannelHost) -> None:
        super().__init__(host)
        self.settings = host.settings_of(CHANNEL, WebChatSettings)
        host.register_parser(CHANNEL, self.parse)  # the inbox also paces a flooding visitor
        self.limits = Limits(host, self.settings)
        self.sessions = webchat_session.Sessions(webchat_session.load_key(self.settings))
        self.headers = security_headers(self.settings.allowed_origins)
        self.allowed = {o for o in map(normalize_origin, self.settings.allowed_origins) if o}
        # each socket has a lock: live frames wait until its history has been sent
        self.sockets: dict[str, dict[WebSocket, asyncio.Lock]] = {}
        self._router = APIRouter()
        self._router.add_api_route("/", self.page, methods=["GET"], include_in_schema=False)
        self._router.add_api_route(
            "/webchat/static/{name}", self.asset, methods=["GET"], include_in_schema=False
        )
        self._router.add_api_websocket_route("/ws/chat", self.websocket)
        host.add_routes(self._router)

    async def page(self, request: Request) -> HTMLResponse:
        """The page; it also gives a visitor without a valid session cookie a new one."""
        response = HTMLResponse(PAGE.read_text("utf-8"), headers=self.headers)
        secure = request.url.scheme == "https"
        name = webchat_session.cookie_name(secure)
        token = request.cookies.get(name) or ""
        if self.sessions.visitor(token) is None:
            _, token = self.sessions.issue()
        response.set_cookie(  # renewed on every visit: a year after the last one
            name,
            token,
            max_age=webchat_session.MAX_AGE,
            path="/",
            secure=secure,
            httponly=True,
            samesite="lax",
        )
        return response

    async def asset(self, name: str) -> Response:
        media_type = ASSETS.get(name)
        if media_type is None:
            return Response(status_code=404)
        return FileResponse(
            STATIC / name,
            media_type=media_type,
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    async def send(self, message: OutboundMessage) -> SendResult:
        frame = {
            "type": "message",
            "id": message.outbox_id,
            "text": message.text,
            "choices": [{"payload": c.payload, "label": c.label} for c in message.choices],
            # the page shows who speaks, when, and follows the customer's language
            "sender": message.sender_name,
            "at": datetime.now(UTC).isoformat(),
            "locale": message.locale,
        }
        for ws, lock in list(self.sockets.get(message.recipient_id, {}).items()):
            try:
                async with lock:
                    await ws.send_json(frame)
            except Exception:  # a socket closing under us; the history has the message
                self.sockets.get(message.recipient_id, {}).pop(ws, None)
        return SendResult(platform_message_id=f"webchat-{message.outbox_id}")

    async def websocket(self, ws: WebSocket) -> None:
        # refusals accept first: a close before the handshake is an HTTP 403 and the
        # client never sees the code
        if not origin_allowed(ws.headers.get("origin"), ws.headers.get("host"), self.allowed):
            log.info("web chat: socket refused, origin not allowed (webchat.allowed_origins)")
            await _refuse(ws, Refusal(BAD_ORIGIN, "origin not allowed"))
            return
        secure = ws.url.scheme == "wss"
        visitor = self.sessions.visitor(ws.cookies.get(webchat_session.cookie_name(secure)))
        if visitor is None:
            await _refuse(ws, Refusal(NO_SESSION, "no chat session: load the chat page"))
            return
        address = address_key(ws.client.host if ws.client else None)
        refusal = self.limits.open_socket(address)
        if refusal is not None:
            await _refuse(ws, refusal)
            return
        try:
            await self._serve(ws, visitor, address)
        finally:
            self.limits.close_socket(address)

    async def _serve(self, ws: WebSocket, visitor: str, address: str) -> None:
        locale = ws.query_params.get("lang")
        # control characters (NUL: PostgreSQL refuses it) never reach the contact's name
        name = _clean(ws.query_params.get("name") or "")[:100] or None
        # the pre-chat form's address (optional): only a plausible one, for a new contact
        given = _clean(ws.query_params.get("email") or "")[:320]
        email = given if EMAIL_RE.match(given) else None
        await ws.accept()
        # register before reading the history, so no reply falls between the two; a reply
        # in both is shown once (the page skips ids it has)
        lock = asyncio.Lock()
        async with lock:
            self.sockets.setdefault(visitor, {})[ws] = lock
            messages, contact_locale = await self._history(visitor)
            await ws.send_json({"type": "history", "messages": messages, "locale": contact_locale})
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                raw = message.get("text")
                if raw is None:  # a binary frame
                    await ws.send_json(
                        {
                            "type": "error",
                            "error": "binary frames are not supported; send JSON text",
                        }
                    )
                    continue
                refusal = await self._frame(ws, visitor, address, raw, locale, name, email)
                if refusal is not None:
                    await _refuse(ws, refusal, accepted=True)
                    break
        except WebSocketDisconnect:
            pass
        finally:
            peers = self.sockets.get(visitor, {})
            peers.pop(ws, None)
            if not peers:
                self.sockets.pop(visitor, None)

    async def _frame(
        self,
        ws: WebSocket,
        visitor: str,
        address: str,
        raw: str,
        locale: str | None,
        name: str | None,
        email: str | None = None,
    ) -> Refusal | None:
        """Handle one frame; a refusal closes the socket (the message stays unacknowledged,
        so the page sends it again later)."""
        if len(raw) > MAX_FRAME:
            await ws.send_json({"type": "error", "error": "message too large"})
            return None
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            await ws.send_json({"type": "error", "error": "not JSON"})
            return None
        msg = self.to_inbound(visitor, data, locale, name, email)
        if isinstance(msg, str):
            await ws.send_json({"type": "error", "error": msg})
            return None
        # a flooding address waits, nobody else (a flooding visitor waits in the inbox)
        await wait_turn(self.limits.messages, (CHANNEL, address))
        if not await self.host.conversation_open(CHANNEL, visitor, pending=True):
            refusal = await self.limits.new_conversation(address)
            if refusal is not None:
                return refusal
        new = await self.host.accept(CHANNEL, msg.platform_message_id, visitor, _payload(msg))
        await ws.send_json({"type": "ack", "id": msg.platform_message_id, "duplicate": not new})
        return None

    def parse(self, payload: dict[str, Any]) -> list[InboundMessage]:
        """An inbox row back into the message (the inbox worker calls it)."""
        return [
            InboundMessage(
                channel=CHANNEL,
                sender_id=payload["visitor"],
                platform_message_id=payload["id"],
                thread_key=payload["visitor"],
                text=payload.get("text") or "",
                payload=payload.get("payload"),
                sender_name=payload.get("name"),
                locale_hint=payload.get("locale"),
                kind=payload.get("kind") or "message",
                contact_updates={"email": payload["email"]} if payload.get("email") else {},
            )
        ]

    def to_inbound(
        self,
        visitor: str,
        data: Any,
        locale: str | None,
        name: str | None,
        email: str | None = None,
    ) -> InboundMessage | str:
        """The frame as an InboundMessage, or the reason it is refused."""
        if not isinstance(data, dict) or data.get("type") not in ("message", "button"):
            return "unknown frame type"
        mid = data.get("id")
        if not isinstance(mid, str) or not ID_RE.match(mid):
            return "id missing or malformed"
        text = data.get("text") if data["type"] == "message" else data.get("label")
        payload = data.get("payload") if data["type"] == "button" else None
        if not isinstance(text, str | None) or not isinstance(payload, str | None):
            return "text and payload must be strings"
        return InboundMessage(
            channel=CHANNEL,
            sender_id=visitor,
            platform_message_id=mid,
            thread_key=visitor,
            text=text or "",
            payload=payload[:200] if payload else None,
            sender_name=name,
            locale_hint=locale,
            kind=data["type"],
            contact_updates={"email": email} if email else {},
        )

    async def _history(self, visitor: str) -> tuple[list[dict[str, Any]], str | None]:
        """What was said in this visitor's own conversations (the core's history of the
        sender: a merged contact's other web chats are not this cookie's to see), and the
        language their contact chose."""
        said = await self.host.history(CHANNEL, visitor, HISTORY)
        messages = [
            {
                "direction": t.direction,
                "id": t.outbox_id,
                "text": t.text,
                "choices": [{"payload": c.payload, "label": c.label} for c in t.choices]
                if t is said[-1]
                else [],
                "at": t.at.isoformat(),
                "sender": t.sender,
            }
            for t in said
        ]
        return messages, await self.host.contact_locale(CHANNEL, visitor)


def _payload(msg: InboundMessage) -> dict[str, Any]:
    return {
        "visitor": msg.sender_id,
        "id": msg.platform_message_id,
        "text": msg.text,
        "payload": msg.payload,
        "name": msg.sender_name,
        "locale": msg.locale_hint,
        "kind": msg.kind,
        "email": msg.contact_updates.get("email"),
    }


def _clean(text: str) -> str:
    """Control characters dropped (NUL: PostgreSQL refuses it), newlines and tabs kept."""
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C").strip()


async def _refuse(ws: WebSocket, refusal: Refusal, *, accepted: bool = False) -> None:
    if not accepted:
        await ws.accept()
    if refusal.retry_after:
        await ws.send_json(
            {"type": "error", "error": refusal.reason, "retry_after": refusal.retry_after}
        )
    await ws.close(code=refusal.code, reason=refusal.reason)


def create(host: ChannelHost) -> WebChatChannel:
    return WebChatChannel(host)
