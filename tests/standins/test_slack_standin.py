"""The Slack stand-in itself, through the real slack_sdk client: it must answer like Slack
where the channel relies on it (shapes, errors, 429 with Retry-After, signatures)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from aiohttp import web
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from tests.standins.slack_api import (
    BOT_ID,
    BOT_TOKEN,
    BOT_USER,
    FIXTURES_DIR,
    SIGNING_SECRET,
    TEAM,
    SlackStandIn,
    load_fixture,
    sign,
)


def client(slack: SlackStandIn, token: str = BOT_TOKEN) -> AsyncWebClient:
    return AsyncWebClient(token=token, base_url=slack.api_base, retry_handlers=[])


async def test_auth_test_and_tokens(slack: SlackStandIn) -> None:
    me = await client(slack).auth_test()
    assert (me["user_id"], me["bot_id"], me["team_id"]) == (BOT_USER, BOT_ID, TEAM)
    with pytest.raises(SlackApiError) as bad:
        await client(slack, "xoxb-wrong").auth_test()
    assert bad.value.response["error"] == "invalid_auth"


async def test_post_thread_and_update(slack: SlackStandIn) -> None:
    web_client = client(slack)
    top = await web_client.chat_postMessage(channel="C0TEST0001", text="card")
    reply = await web_client.chat_postMessage(
        channel="C0TEST0001", text="in the thread", thread_ts=top["ts"]
    )
    assert float(reply["ts"]) > float(top["ts"])
    await web_client.chat_update(
        channel="C0TEST0001",
        ts=top["ts"],
        text="card, updated",
        blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "*updated*"}}],
    )
    assert slack.texts("C0TEST0001") == ["card, updated", "in the thread"]
    assert slack.texts("C0TEST0001", thread_ts=top["ts"]) == ["in the thread"]
    assert slack.messages("C0TEST0001")[0]["blocks"][0]["text"]["text"] == "*updated*"
    with pytest.raises(SlackApiError, match="thread_not_found"):
        await web_client.chat_postMessage(channel="C0TEST0001", text="x", thread_ts="1.2")
    with pytest.raises(SlackApiError, match="message_not_found"):
        await web_client.chat_update(channel="C0TEST0001", ts="1.2", text="x")


async def test_delete_takes_only_the_bots_own_messages(slack: SlackStandIn) -> None:
    web_client = client(slack)
    top = await web_client.chat_postMessage(channel="C0TEST0001", text="card")
    reply = await web_client.chat_postMessage(
        channel="C0TEST0001", text="mirrored", thread_ts=top["ts"]
    )
    person = slack.user_message("U0PERSON01", "C0TEST0001", "mine", thread_ts=top["ts"])
    await web_client.chat_delete(channel="C0TEST0001", ts=reply["ts"])
    assert slack.texts("C0TEST0001", thread_ts=top["ts"]) == []
    with pytest.raises(SlackApiError, match="message_not_found"):
        await web_client.chat_delete(channel="C0TEST0001", ts=reply["ts"])
    with pytest.raises(SlackApiError, match="cant_delete_message"):
        await web_client.chat_delete(channel="C0TEST0001", ts=person["ts"])
    assert [m["ts"] for m in slack.messages("C0TEST0001")] == [top["ts"], person["ts"]]
    # posting to a user id lands in the DM with the app
    dm = await web_client.chat_postMessage(channel="U0CUSTOMER", text="hi")
    assert dm["channel"] == "D0CUSTOMER"
    opened = await web_client.conversations_open(users="U0CUSTOMER")
    assert opened["channel"]["id"] == "D0CUSTOMER"


async def test_block_kit_limits(slack: SlackStandIn) -> None:
    web_client = client(slack)
    button = {"type": "button", "action_id": "a", "text": {"type": "plain_text", "text": "x"}}
    long_label = {**button, "text": {"type": "plain_text", "text": "y" * 76}}
    for blocks in (
        [{"type": "section", "text": {"type": "plain_text", "text": "x" * 3001}}],
        [{"type": "actions", "elements": [button, button]}],  # duplicate action_id
        [{"type": "actions", "elements": [long_label]}],
        [{"type": "nonsense"}],
    ):
        with pytest.raises(SlackApiError, match="invalid_blocks"):
            await web_client.chat_postMessage(channel="C0TEST0001", text="t", blocks=blocks)
    with pytest.raises(SlackApiError, match="msg_too_long"):
        await web_client.chat_postMessage(channel="C0TEST0001", text="x" * 40_001)
    with pytest.raises(SlackApiError, match="no_text"), pytest.warns(UserWarning):
        await web_client.chat_postMessage(channel="C0TEST0001", text="")


async def test_users_info_locale_and_email_scope(slack: SlackStandIn) -> None:
    slack.add_user("U0CUSTOMER", "Ada Lovelace", locale="en-GB", email="ada@example.com")
    info = await client(slack).users_info(user="U0CUSTOMER", include_locale=True)
    assert (info["user"]["real_name"], info["user"]["locale"]) == ("Ada Lovelace", "en-GB")
    assert info["user"]["profile"]["email"] == "ada@example.com"
    plain = await client(slack).users_info(user="U0CUSTOMER")
    assert "locale" not in plain["user"]
    slack.scopes.discard("users:read.email")
    info = await client(slack).users_info(user="U0CUSTOMER", include_locale=True)
    assert "email" not in info["user"]["profile"]
    with pytest.raises(SlackApiError, match="user_not_found"):
        await client(slack).users_info(user="U0NOBODY01")


async def test_429_with_retry_after_and_other_faults(slack: SlackStandIn) -> None:
    slack.fail_next("chat.postMessage", "ratelimited", retry_after=3)
    with pytest.raises(SlackApiError) as limited:
        await client(slack).chat_postMessage(channel="C0TEST0001", text="x")
    assert limited.value.response.status_code == 429
    assert limited.value.response.headers["Retry-After"] == "3"
    slack.fail_next("chat.postMessage", "internal_error", status=500, after=1)
    await client(slack).chat_postMessage(channel="C0TEST0001", text="let through")
    with pytest.raises(SlackApiError) as failed:
        await client(slack).chat_postMessage(channel="C0TEST0001", text="x")
    assert failed.value.response.status_code == 500
    await client(slack).chat_postMessage(channel="C0TEST0001", text="fine again")
    assert [c.method for c in slack.failed_calls] == ["chat.postMessage"] * 2
    slack.rate_limit(per_channel_per_sec=2)
    for _ in range(2):
        await client(slack).chat_postMessage(channel="C0TEST0002", text="ok")
    with pytest.raises(SlackApiError, match="ratelimited"):
        await client(slack).chat_postMessage(channel="C0TEST0002", text="one too many")


def test_signatures_verify_with_slack_sdk() -> None:
    body = json.dumps(load_fixture("message_im")).encode()
    headers = sign(body)
    verifier = SignatureVerifier(SIGNING_SECRET)
    assert verifier.is_valid_request(body, headers)
    assert not verifier.is_valid_request(body + b" ", headers)
    stale = sign(body, timestamp=int(time.time()) - 301)
    assert not verifier.is_valid_request(body, stale)


def test_fixtures_are_what_slack_sends() -> None:
    names = sorted(p.stem for p in FIXTURES_DIR.glob("*.json"))
    assert "message_im" in names and "block_actions" in names
    for name in names:
        payload = load_fixture(name)
        if name == "slash_command":  # form fields, no type
            assert payload["command"].startswith("/") and payload["trigger_id"]
            continue
        assert payload["type"] in (
            "event_callback",
            "url_verification",
            "block_actions",
            "message_action",
            "app_rate_limited",
            "interactive_message",
            "workflow_step_edit",
            "view_submission",
        )
        if payload["type"] == "event_callback":
            assert payload["event_id"].startswith("Ev") and payload["event"]["ts"]


async def test_delivers_signed_events_with_retry_headers(slack: SlackStandIn) -> None:
    seen: list[tuple[dict[str, str], bytes]] = []

    async def app(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.read()))
        return web.Response(text="")

    runner = web.AppRunner(web.Application())
    runner.app.router.add_post("/events", app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    slack.app_url = f"http://{host}:{port}/events"
    try:
        event = slack.user_message("U0CUSTOMER", "D0CUSTOMER", "a <b> & c <@U0CICBOT01>")
        assert event["text"] == "a &lt;b&gt; &amp; c <@U0CICBOT01>"  # encoded as Slack does
        await slack.send_event(slack.envelope(event), retry_num=2)
        [(headers, body)] = seen
        assert headers["X-Slack-Retry-Num"] == "2"
        assert headers["X-Slack-Retry-Reason"] == "http_timeout"
        assert SignatureVerifier(SIGNING_SECRET).is_valid_request(body, headers)
        sent: dict[str, Any] = json.loads(body)
        assert sent["event"]["ts"] == event["ts"] and sent["event_id"].startswith("Ev")
    finally:
        await runner.cleanup()
