"""Slack through slack-bolt's AsyncApp: customers in DMs and customer channels, and the agent
desk in `slack.agent_channel` (channels/slack/desk.py).

Inbound, over HTTP (`POST /webhooks/slack/events`, Events API and interactivity) or Socket
Mode (when `CICBOT_SLACK__APP_TOKEN` is set), every payload goes the same way:

* HTTP only: the body is bounded (413) and its v0 signature checked with slack_sdk's
  SignatureVerifier over the raw bytes, timestamp within 5 minutes, before anything parses
  it (401); then the request is handed to bolt (which verifies again, answers
  `url_verification` and routes);
* bolt runs with `process_before_response`: the listener persists the raw payload in the
  inbox (deduped on `event_id`, so a retry, even an `http_timeout` retry racing the first
  attempt, is stored once) and only then is the request acknowledged. A failure to persist
  answers 503 with Retry-After (or leaves the Socket Mode envelope unacknowledged), so
  Slack delivers again;
* no signed payload gets a 500: what bolt cannot route (a shape its routing would raise on,
  or one no listener matches) is kept in the inbox as it is and answered 200 (`_App`);
  Slack's `app_rate_limited` notice is counted in the metrics and logged once per minute
  Slack names;
* the inbox worker parses the rows later (channels/slack/parse.py) and hands customer input
  to the engine, agent actions to the desk. Bolt's own middleware drops our bot's events;
  the parser drops every other bot's too.

A pressed option button is replaced by the answer (chat.update) as soon as the press is
persisted: ephemeral UI, not sent through the outbox. Everything else goes out through the
outbox and `send`, rate-shaped per channel (channels/slack/send.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import aiohttp
from fastapi import APIRouter, Request, Response
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltRequest
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.request.internals import (
    build_normalized_headers,
    extract_content_type,
    parse_body,
)
from slack_bolt.response import BoltResponse
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from bot.channel import ChannelAdapter, PermanentSendError, SendResult
from bot.channel.host import ChannelHost
from bot.channel.inbound import Unavailable
from bot.channel.messages import InboundMessage, OutboundMessage
from bot.channel.webhooks import read_bounded
from channels.slack.desk import SlackDesk
from channels.slack.parse import (
    CHANNEL,
    CustomerInput,
    PayloadParser,
    SupportRequest,
    dedupe_key,
    malformed,
    partition_key,
    routable,
    worth_keeping,
)
from channels.slack.send import CHOICE_ACTION, SEND_ERRORS, Sender, answered_blocks
from channels.slack.settings import SlackSettings
from channels.slack.users import UserDirectory

log = logging.getLogger(__name__)
EVENTS_PATH = "/webhooks/slack/events"
EVERYTHING = re.compile(".*")


class SlackUnavailable(RuntimeError):
    """auth.test failed: the request is not acknowledged, so Slack delivers it again."""


def not_persisted(error: Exception) -> BoltResponse:
    """The payload is not stored: 503 and a hint, Slack delivers it again."""
    if isinstance(error, Unavailable | SlackUnavailable):  # expected while they are away
        log.warning("slack: update not persisted, %s", error)
    else:
        log.error("slack: update not persisted", exc_info=error)
    return BoltResponse(status=503, body="", headers={"Retry-After": "5"})


class _App(AsyncApp):
    """bolt's app, but a payload bolt cannot route is kept and answered 200, not 500 (its
    routing raised) or 404 (no listener): Slack would retry the one and count both as
    failures of the app. HTTP and Socket Mode both dispatch through here."""

    keep: Callable[[dict[str, Any]], Awaitable[None]]

    async def async_dispatch(self, req: AsyncBoltRequest) -> BoltResponse:
        body = req.body if isinstance(req.body, dict) else {}
        if not body or "ssl_check" in body:
            return await super().async_dispatch(req)
        try:
            if routable(body):
                answer: BoltResponse = await super().async_dispatch(req)
                if answer.status != 404:
                    return answer
        except Exception:  # a shape bolt did not expect somewhere else
            log.warning("slack: bolt could not route a %r payload", body.get("type"))
        try:
            await self.keep(body)
        except Exception as exc:
            return not_persisted(exc)
        return BoltResponse(status=200, body="")

    def _handle_unmatched_requests(self, req: AsyncBoltRequest, resp: BoltResponse) -> BoltResponse:
        return resp  # kept and logged by async_dispatch, not bolt's "unhandled" warning


class SlackChannel(ChannelAdapter):
    name = CHANNEL

    def __init__(self, host: ChannelHost, settings: SlackSettings, bot_token: str) -> None:
        super().__init__(host)
        self.settings = settings
        self._token = bot_token
        self.web = self._client(bot_token)
        self.sender = Sender(self.web, settings)
        self.users = UserDirectory(self.web, settings.user_cache_seconds)
        self.desk = (
            SlackDesk(host.agent_desk, settings, self.sender, self.users)
            if settings.agent_channel
            else None
        )
        self.me: dict[str, Any] | None = None  # auth.test: team_id, user_id, bot_id
        self._me_lock = asyncio.Lock()
        self.parser = PayloadParser(
            self,
            agent_channel=settings.agent_channel,
            customer_channels=settings.customer_channels,
            bot_user=lambda: self.me.get("user_id") if self.me else None,
            support_command=settings.support_command,
            support_shortcut=settings.support_shortcut,
        )
        host.register_parser(CHANNEL, self.parser)  # the inbox also paces a flooding sender
        secret = settings.signing_secret.get_secret_value() if settings.signing_secret else ""
        self.verifier = SignatureVerifier(secret) if secret else None
        self.bolt_client = self._client(None)
        self.app = self._bolt_app(secret)
        self.socket: Any = None  # AsyncSocketModeHandler when Socket Mode is on
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._router: APIRouter | None = None
        if self.verifier is not None:
            self._router = APIRouter()
            self._router.add_api_route(
                EVENTS_PATH, self.events, methods=["POST"], include_in_schema=False
            )
            # the webhook checks its body limit exactly
            host.add_routes(self._router, max_body_bytes=settings.max_body_bytes)

    def _bolt_app(self, secret: str) -> AsyncApp:
        """Bolt passes arguments by name: its callbacks are plain functions, not methods."""

        async def authorize(enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
            me = await self.identity()
            return AuthorizeResult(
                enterprise_id=me.get("enterprise_id"),
                team_id=me.get("team_id"),
                bot_user_id=me.get("user_id"),
                bot_id=me.get("bot_id"),
                bot_token=self._token,
            )

        async def persist_then_ack(body: dict[str, Any], ack: AsyncAck) -> None:
            await self._persist(body)
            await ack()

        app = _App(
            client=self.bolt_client,
            signing_secret=secret or "-",
            authorize=authorize,
            process_before_response=True,  # the listener persists before the answer
            request_verification_enabled=bool(secret),
            logger=logging.getLogger("channels.slack.adapter.bolt"),
        )
        app.keep = self._keep
        app.event(EVERYTHING)(persist_then_ack)
        app.action(EVERYTHING)(persist_then_ack)
        app.command(EVERYTHING)(persist_then_ack)
        app.shortcut(EVERYTHING)(persist_then_ack)
        app.view(EVERYTHING)(persist_then_ack)
        app.view_closed(EVERYTHING)(persist_then_ack)
        app.options(EVERYTHING)(persist_then_ack)  # no options to offer: an empty list

        async def unavailable(error: Exception) -> BoltResponse:
            # the database (or auth.test, needed to authorize) is away, or the insert
            # failed otherwise: 503, and Slack delivers the payload again
            return not_persisted(error)

        app.error(unavailable)
        return app

    def _client(self, token: str | None) -> AsyncWebClient:
        # no built-in retries: the dispatcher retries (a retried post may post twice)
        return AsyncWebClient(
            token=token,
            base_url=self.settings.api_base,
            timeout=self.settings.request_timeout,
            retry_handlers=[],
        )

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def router(self) -> APIRouter | None:
        return self._router

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.request_timeout)
        self._session = aiohttp.ClientSession(timeout=timeout)
        self.web.session = self.bolt_client.session = self._session
        self._spawn(self._identify(), "slack-auth-test")
        app_token = self.settings.app_token.get_secret_value() if self.settings.app_token else ""
        if app_token:
            from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler

            socket_client = self._client(None)
            socket_client.session = self._session
            self.socket = AsyncSocketModeHandler(self.app, app_token, web_client=socket_client)
            self._spawn(self.socket.connect_async(), "slack-socket-mode")
        log.info(
            "Slack channel started (%s; agent channel %s, %d customer channel(s))",
            "Socket Mode" if app_token else f"HTTP: POST {EVENTS_PATH}",
            self.settings.agent_channel or "not set",
            len(self.settings.customer_channels),
        )

    async def stop(self) -> None:
        if self.socket is not None:
            await self.socket.close_async()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def identity(self) -> dict[str, Any]:
        """auth.test, once: who the bot is (raises SlackUnavailable while Slack won't say)."""
        if self.me is not None:
            return self.me
        async with self._me_lock:
            if self.me is None:
                try:
                    response = await self.web.auth_test()
                except SEND_ERRORS as exc:
                    raise SlackUnavailable(f"auth.test failed: {type(exc).__name__}") from None
                self.me = dict(response.data) if isinstance(response.data, dict) else {}
        return self.me

    async def _identify(self) -> None:
        delay = 1.0
        while self.me is None:
            try:
                me = await self.identity()
                log.info(
                    "Slack bot %s (%s) in team %s",
                    me.get("user_id"),
                    me.get("bot_id"),
                    me.get("team_id"),
                )
            except SlackUnavailable as exc:
                log.warning("slack: %s; again in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    # ---- inbound: HTTP -----------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        body = await read_bounded(request, self.settings.max_body_bytes)
        if isinstance(body, Response):
            return body
        if not self._signed(body, request):
            return Response(status_code=401)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return Response(status_code=400)
        headers: dict[str, str | Sequence[str]] = dict(request.headers)
        try:  # parsed as bolt will parse it, to check the shape bolt relies on first
            content_type = extract_content_type(build_normalized_headers(headers))
            why = malformed(parse_body(text, content_type))
        except (ValueError, RecursionError):  # not JSON, or nested too deeply
            why = "not JSON"
        if why is not None:  # bolt would raise on it (a 500, and Slack's retries)
            log.warning("slack: malformed payload refused: %s", why)
            return Response(status_code=400)
        bolt_request = AsyncBoltRequest(
            body=text, query=dict(request.query_params), headers=headers
        )
        answer = await self.app.async_dispatch(bolt_request)
        return Response(
            status_code=answer.status,
            content=answer.body,
            headers=answer.first_headers_without_set_cookie(),
        )

    def _signed(self, body: bytes, request: Request) -> bool:
        if self.verifier is None:
            return False
        try:
            return self.verifier.is_valid(
                body=body,
                timestamp=request.headers.get("x-slack-request-timestamp"),
                signature=request.headers.get("x-slack-signature"),
            )
        except ValueError:  # a timestamp that is not a number
            return False

    # ---- inbound: what bolt's listener does (HTTP and Socket Mode) ---------------------

    async def _persist(self, body: dict[str, Any]) -> bool:
        """Store the raw payload (raises if the database does: Slack then retries); True
        if it was new."""
        if not worth_keeping(body):
            return False
        partition = partition_key(body, self.settings.agent_channel)
        new = await self.host.accept(CHANNEL, dedupe_key(body), partition, body)
        if new and body.get("type") == "block_actions":
            self._spawn(self._answered(body), "slack-answered")
        return new

    async def _keep(self, body: dict[str, Any]) -> None:
        """A payload bolt does not route: stored as it is (the inbox marks it ignored)."""
        new = await self._persist(body)
        if body.get("type") == "app_rate_limited":
            if new:  # Slack may say it again: one count and one line per minute it names
                self.host.rate_limited(CHANNEL)
                log.warning(
                    "slack: Slack dropped events for this app in the minute starting %s "
                    "(app_rate_limited: over 30,000 events an hour for one workspace)",
                    body.get("minute_rate_limited"),
                )
        elif new:
            log.info("slack: kept a %r payload bolt does not route", body.get("type"))

    async def _answered(self, body: dict[str, Any]) -> None:
        """Replace a customer's pressed option buttons by the answer given."""
        container, message = body.get("container") or {}, body.get("message") or {}
        action = (body.get("actions") or [{}])[0]
        channel, ts = container.get("channel_id"), container.get("message_ts")
        if (
            not str(action.get("action_id", "")).startswith(CHOICE_ACTION)
            or channel == self.settings.agent_channel
            or container.get("is_ephemeral")
            or not isinstance(message.get("blocks"), list)
            or not channel
            or not ts
        ):
            return
        label = str((action.get("text") or {}).get("text") or action.get("value") or "")
        blocks = answered_blocks(message["blocks"], label)
        await self.sender.best_effort(
            "chat.update",
            lambda: self.web.chat_update(
                channel=channel, ts=ts, text=str(message.get("text") or label), blocks=blocks
            ),
        )

    # ---- deferred work from the inbox worker (slack_parse.Handlers) --------------------

    async def customer(self, item: CustomerInput) -> list[InboundMessage]:
        """The customer's input as a message for the core, the sender looked up."""
        if item.only_if_open and not await self.host.conversation_open(CHANNEL, item.thread_key):
            return []
        profile = await self.users.get(item.user)
        if profile is not None and profile.is_bot:
            return []
        email = profile.email if profile is not None else None
        return [
            InboundMessage(
                channel=CHANNEL,
                sender_id=item.user,
                platform_message_id=item.platform_message_id,
                thread_key=item.thread_key,
                text=item.text,
                payload=item.payload,
                attachments=item.attachments,
                sender_name=profile.name if profile is not None else None,
                locale_hint=profile.locale if profile is not None else None,
                kind=item.kind,
                raw=item.raw,
                contact_updates={"email": email} if email else {},
            )
        ]

    async def support(self, item: SupportRequest) -> list[InboundMessage]:
        """The support command or shortcut: the conversation is the person's DM with the
        app (conversations.open), whatever channel they used it in."""
        try:
            response = await self.web.conversations_open(users=item.user)
        except SEND_ERRORS as exc:
            raise SlackUnavailable(f"conversations.open failed: {type(exc).__name__}") from None
        dm = str((response.get("channel") or {}).get("id") or "")
        if not dm.startswith("D"):
            raise SlackUnavailable(f"conversations.open gave no DM for {item.user}")
        return await self.customer(
            CustomerInput(
                user=item.user,
                platform_message_id=item.platform_message_id,
                thread_key=dm,
                text=item.text,
                payload=item.payload,
                attachments=item.attachments,
                raw=item.raw,
            )
        )

    async def agent_message(self, user: str, thread_ts: str, text: str) -> None:
        if self.desk is not None:
            await self.desk.agent_message(user, thread_ts, text)

    async def desk_action(self, action: str, value: str, user: str, card_ts: str) -> None:
        if self.desk is not None:
            await self.desk.desk_action(action, value, user, card_ts)

    # ---- outbound ----------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> SendResult:
        if message.thread_key.startswith("desk:"):
            if self.desk is None:
                raise PermanentSendError("slack.agent_channel is not set")
            return await self.desk.send(message)
        channel, _, thread_ts = message.thread_key.partition(":")
        if channel[:1] not in ("C", "D", "G"):
            raise PermanentSendError(f"not a Slack conversation: {message.thread_key[:60]!r}")
        return await self.sender.send(message, channel, thread_ts or None)


def create(host: ChannelHost) -> SlackChannel | None:
    settings = host.settings_of(CHANNEL, SlackSettings)
    if settings.bot_token is None or not settings.bot_token.get_secret_value():
        return None
    return SlackChannel(host, settings, settings.bot_token.get_secret_value())
