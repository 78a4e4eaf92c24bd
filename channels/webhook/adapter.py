"""A generic JSON webhook channel (wire format: channels/webhook/parse.py).

Inbound: POST /webhooks/json; the body is bounded (413), its signature checked (401), its
shape checked (400), then it is persisted in the inbox, deduped on the sender's message id,
and only then answered 200 `{"accepted": true, "duplicate": false}` (503 when the database
is away: the sender tries again). The inbox worker hands it to the engine.
Outbound: the dispatcher's `send` POSTs each reply to `outbound_url`, signed, with an
Idempotency-Key of the outbox row: 2xx is sent; 429, 5xx and network errors are tried
again later (Retry-After honoured); any other answer is a permanent failure.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from bot.channel import (
    ChannelAdapter,
    PermanentSendError,
    SendResult,
    TransientSendError,
)
from bot.channel.host import ChannelHost
from bot.channel.inbound import Unavailable
from bot.channel.messages import InboundMessage, OutboundMessage
from bot.channel.webhooks import read_bounded
from channels.webhook.parse import (
    CHANNEL,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    headers,
    outbound_body,
    read,
    to_inbound,
    verified,
)
from channels.webhook.settings import WebhookSettings

log = logging.getLogger(__name__)
PATH = "/webhooks/json"


class WebhookChannel(ChannelAdapter):
    name = CHANNEL

    def __init__(self, host: ChannelHost, settings: WebhookSettings, secret: str) -> None:
        super().__init__(host)
        assert settings.outbound_url is not None
        self.settings = settings
        self.url = settings.outbound_url
        self._secret = secret.encode()
        self._session: aiohttp.ClientSession | None = None
        host.register_parser(CHANNEL, self.parse)  # the inbox also paces a flooding sender
        router = APIRouter()
        router.add_api_route(PATH, self.receive, methods=["POST"], include_in_schema=False)
        host.add_routes(router, max_body_bytes=settings.max_body_bytes)

    async def receive(self, request: Request) -> Response:
        body = await read_bounded(request, self.settings.max_body_bytes)
        if isinstance(body, Response):
            return body
        ok = verified(
            self._secret,
            body,
            request.headers.get(TIMESTAMP_HEADER),
            request.headers.get(SIGNATURE_HEADER),
            time.time(),
            self.settings.max_skew_seconds,
        )
        if not ok:
            return JSONResponse({"error": "signature missing, wrong or too old"}, 401)
        try:
            kept = read(body)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        thread = kept["thread"] or kept["sender"]["id"]
        try:
            new = await self.host.accept(CHANNEL, kept["id"], thread, kept)
        except Unavailable:
            log.warning("webhook: message not persisted, the database is unavailable")
            return JSONResponse({"error": "try again later"}, 503, headers={"Retry-After": "5"})
        return JSONResponse({"accepted": True, "duplicate": not new})

    def parse(self, payload: dict[str, Any]) -> list[InboundMessage]:
        return [to_inbound(payload)]

    async def send(self, message: OutboundMessage) -> SendResult:
        body = outbound_body(message)
        sent = headers(self._secret, int(time.time()), body)
        sent["Idempotency-Key"] = f"cicbot-{message.outbox_id}"
        try:
            async with self._client().post(self.url, data=body, headers=sent) as answer:
                status, retry_after = answer.status, answer.headers.get("Retry-After")
                await answer.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientSendError(f"webhook: {type(exc).__name__}") from None
        if 200 <= status < 300:
            return SendResult(platform_message_id=f"webhook-{message.outbox_id}")
        if status == 429 or status >= 500:
            wait = float(retry_after) if retry_after and retry_after.isdigit() else None
            raise TransientSendError(f"webhook: HTTP {status}", retry_after=wait)
        raise PermanentSendError(f"webhook: HTTP {status}")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.settings.timeout_seconds)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()


def create(host: ChannelHost) -> WebhookChannel | None:
    settings = host.settings_of(CHANNEL, WebhookSettings)
    if settings.secret is None or not settings.enabled:
        return None
    return WebhookChannel(host, settings, settings.secret.get_secret_value())
