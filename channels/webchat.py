"""The built-in web chat: a page at `/` talking to the engine over a WebSocket.

Protocol (JSON frames):
  client → {"type": "message", "id": "<uuid>", "text": "..."}
           {"type": "button",  "id": "<uuid>", "payload": "...", "label": "..."}
  server → {"type": "history", "messages": [{"direction", "text", "choices", "at"}]}
           {"type": "ack", "id": "<uuid>", "duplicate": bool}   after the commit
           {"type": "message", "id": <outbox id>, "text", "choices": [{payload, label}]}
           {"type": "error", "error": "..."}
The client's message ids make a resend after a reconnect harmless (dedupe).
A reply to a visitor who is offline stays in the history and is shown on return.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from bot import flood
from bot.channel import ChannelAdapter, SendResult
from bot.messages import InboundMessage, OutboundMessage
from bot.runtime import Runtime
from flows.model import clean_text
from storage import queries
from storage.models import Direction, Touchpoint

log = logging.getLogger(__name__)
CHANNEL = "webchat"
ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
MAX_FRAME = 256 * 1024  # a frame larger than this is refused, not processed
HISTORY = 200
PAGE = Path(__file__).parent / "webchat_static" / "index.html"


class WebChatChannel(ChannelAdapter):
    name = CHANNEL

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.flood = flood.attach(runtime)
        # each socket has a lock: live frames wait until its history has been sent
        self.sockets: dict[str, dict[WebSocket, asyncio.Lock]] = {}
        self._router = APIRouter()
        self._router.add_api_route("/", self.page, methods=["GET"], include_in_schema=False)
        self._router.add_api_websocket_route("/ws/chat", self.websocket)

    @property
    def router(self) -> APIRouter:
        return self._router

    async def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE.read_text("utf-8"))

    async def send(self, message: OutboundMessage) -> SendResult:
        frame = {
            "type": "message",
            "id": message.outbox_id,
            "text": message.text,
            "choices": [{"payload": c.payload, "label": c.label} for c in message.choices],
        }
        for ws, lock in list(self.sockets.get(message.recipient_id, {}).items()):
            try:
                async with lock:
                    await ws.send_json(frame)
            except Exception:  # a socket closing under us; the history has the message
                self.sockets.get(message.recipient_id, {}).pop(ws, None)
        return SendResult(platform_message_id=f"webchat-{message.outbox_id}")

    async def websocket(self, ws: WebSocket) -> None:
        visitor = ws.query_params.get("visitor", "")
        if not ID_RE.match(visitor):
            # accept first: a close before the handshake is an HTTP 403 and the client
            # never sees the code
            await ws.accept()
            await ws.close(code=4400, reason="visitor id missing or malformed")
            return
        locale = ws.query_params.get("lang")
        # control characters (NUL: PostgreSQL refuses it) never reach the contact's name
        name = clean_text(ws.query_params.get("name") or "")[:100] or None
        await ws.accept()
        # register before reading the history, so no reply falls between the two; a reply
        # in both is shown once (the page skips ids it has)
        lock = asyncio.Lock()
        async with lock:
            self.sockets.setdefault(visitor, {})[ws] = lock
            await ws.send_json({"type": "history", "messages": await self._history(visitor)})
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
                await self._frame(ws, visitor, raw, locale, name)
        except WebSocketDisconnect:
            pass
        finally:
            peers = self.sockets.get(visitor, {})
            peers.pop(ws, None)
            if not peers:
                self.sockets.pop(visitor, None)

    async def _frame(
        self, ws: WebSocket, visitor: str, raw: str, locale: str | None, name: str | None
    ) -> None:
        if len(raw) > MAX_FRAME:
            await ws.send_json({"type": "error", "error": "message too large"})
            return
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            await ws.send_json({"type": "error", "error": "not JSON"})
            return
        msg = self.to_inbound(visitor, data, locale, name)
        if isinstance(msg, str):
            await ws.send_json({"type": "error", "error": msg})
            return
        await self.flood.wait((CHANNEL, visitor))  # a flooding visitor waits, nobody else
        result = await self.runtime.engine.handle(msg)
        await ws.send_json(
            {"type": "ack", "id": msg.platform_message_id, "duplicate": result.duplicate}
        )

    def to_inbound(
        self, visitor: str, data: Any, locale: str | None, name: str | None
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
        )

    async def _history(self, visitor: str) -> list[dict[str, Any]]:
        async with self.runtime.sessions() as s, s.begin():
            identity = await queries.get_identity(s, CHANNEL, visitor)
            if identity is None:
                return []
            q = (
                select(Touchpoint)
                .where(
                    Touchpoint.contact_id == identity.contact_id,
                    Touchpoint.channel == CHANNEL,
                    Touchpoint.direction.in_([Direction.IN, Direction.OUT]),
                    Touchpoint.kind.in_(["message", "button"]),
                )
                .order_by(Touchpoint.id.desc())
                .limit(HISTORY)
            )
            rows = list((await s.execute(q)).scalars())[::-1]
        return [
            {
                "direction": t.direction,
                "id": t.outbox_id,
                "text": t.text or "",
                "choices": (t.payload or {}).get("buttons", []) if t is rows[-1] else [],
                "at": t.created_at.isoformat(),
            }
            for t in rows
        ]


def create(runtime: Runtime) -> WebChatChannel:
    return WebChatChannel(runtime)
