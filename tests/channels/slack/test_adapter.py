"""The Slack channel's customer side and transport, through real HTTP and real slack-bolt /
slack_sdk: the stand-in plays Slack (its Web API, and the Events API / interactivity requests
signed with the signing secret), the real application runs under uvicorn."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.channel import PermanentSendError, TransientSendError
from bot.channel.messages import Choice, OutboundMessage
from bot.config import ConfigError, load_settings
from bot.runtime import Runtime
from channels.slack.adapter import create
from channels.slack.send import MAX_TEXT, split_text
from channels.slack.settings import SlackSettings
from storage.models import Case, Contact, Identity, InboxStatus, InboxUpdate, OutboxStatus
from tests.channels.slack.helpers import (
    ANNA,
    JAMES,
    JAMES_DM,
    OTHER,
    SHARED,
    block_text,
    buttons,
    cast,
    channel,
    rows,
    serving,
    settled,
    slack_settings,
    touchpoints,
)
from tests.conftest import ROOT, make_settings
from tests.standins.slack_api import (
    APP_TOKEN,
    BOT_ID,
    BOT_USER,
    SlackStandIn,
    load_fixture,
)

CASE_REF = re.compile(r"C-\d{4}-\d{6}")


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    async with SlackStandIn() as standin:
        cast(standin)
        yield standin


def last_bot(slack: SlackStandIn, chan: str) -> dict[str, Any]:
    return slack.bot_messages(chan)[-1]


async def wait_text(slack: SlackStandIn, chan: str, pattern: str, **kw: Any) -> str:
    regex = re.compile(pattern)
    found: str = await slack.wait_for(
        lambda: next((t for t in reversed(slack.texts(chan, **kw)) if regex.search(t)), None)
    )
    return found


# ---- a DM customer completes a complaint with Block Kit buttons ------------------------------


async def test_dm_complaint_with_buttons(db_url: str, slack: SlackStandIn) -> None:
    async with serving(slack_settings(db_url, slack), slack) as rt:
        await slack.say(JAMES, JAMES_DM, "Hi there")
        menu = await slack.wait_for(lambda: slack.bot_messages(JAMES_DM))
        assert "c:complaint" in buttons(menu[-1])
        for value in (
            "c:complaint",
            "f:complaint:category:delivery",
        ):
            await slack.press(JAMES, JAMES_DM, value)
        await wait_text(slack, JAMES_DM, "describe what happened")
        await slack.say(JAMES, JAMES_DM, "The parcel arrived *soaking wet* & torn <sigh>")
        for value in (
            "f:complaint:reference:-",
            "f:complaint:severity:medium",
            "f:complaint:resolution:refund",
            "f:complaint:confirm:yes",
        ):
            await slack.press(JAMES, JAMES_DM, value)
        reference = CASE_REF.search(await wait_text(slack, JAMES_DM, CASE_REF.pattern))
        assert reference
        await settled(rt)

        async with rt.sessions() as s:
            case = (await s.execute(select(Case))).scalar_one()
            contact = (await s.execute(select(Contact))).scalar_one()
        assert case.reference == reference.group(0)
        assert (case.category, case.severity, case.desired_resolution) == (
            "delivery",
            "medium",
            "refund",
        )
        # Slack's entities were undone: the customer's own words reach the case
        assert case.description == "The parcel arrived *soaking wet* & torn <sigh>"
        # the profile came from users.info, once, and was kept
        assert (contact.name, contact.locale, contact.email) == (
            "James Walker",
            "en",
            "james@example.com",
        )
        assert len(slack.calls_to("users.info")) == 1
        assert slack.calls_to("users.info")[0]["include_locale"] in ("1", "true", "True")
        # every pressed message lost its buttons and shows the answer instead
        presses = 6
        assert len(slack.calls_to("chat.update")) == presses
        answered = [m for m in slack.bot_messages(JAMES_DM) if "edited" in m]
        assert len(answered) == presses
        assert all(not buttons(m) for m in answered)
        assert ":white_check_mark: *Delivery*" in block_text(answered[1])
        # the summary quoted the customer's text escaped: no markup, no mention, no link
        summary = next(t for t in slack.texts(JAMES_DM) if "Please check" in t)
        assert "&amp; torn &lt;sigh&gt;" in summary
        # the pressed labels are the customer's words in the history
        inbound = [t for t in await touchpoints(rt) if t.direction == "in"]
        assert [t.text for t in inbound][:3] == ["Hi there", "Make a complaint", "Delivery"]
        assert {t.kind for t in inbound} == {"message", "button"}
        assert all(o.status == OutboxStatus.SENT for o in await rows(rt, _outbox()))
        assert slack.failed_calls == []


def _outbox() -> Any:
    from storage.models import OutboxMessage

    return OutboxMessage


async def test_second_press_on_the_same_question_counts_once(
    sqlite_url: str, slack: SlackStandIn
) -> None:
    async with serving(slack_settings(sqlite_url, slack), slack) as rt:
        await slack.say(JAMES, JAMES_DM, "hello")
        menu = (await slack.wait_for(lambda: slack.bot_messages(JAMES_DM)))[-1]
        first = slack.block_action(JAMES, JAMES_DM, menu, "c:complaint")
        second = slack.block_action(JAMES, JAMES_DM, menu, "c:human")  # a quick double click
        assert (await slack.send_action(first)).status == 200
        assert (await slack.send_action(second)).status == 200
        await settled(rt)
        inbound = [t for t in await touchpoints(rt) if t.direction == "in"]
        assert [t.text for t in inbound] == ["hello", "Make a complaint"]


# ---- transport: signatures, retries, acknowledgement ------------------------------------------


async def test_url_verification_is_answered(sqlite_url: str, slack: SlackStandIn) -> None:
    async with serving(slack_settings(sqlite_url, slack), slack):
        body = json.dumps(load_fixture("url_verification")).encode()
        answer = await slack.post(body)
        assert answer.status == 200
        assert json.loads(answer.body)["challenge"] == load_fixture("url_verification")["challenge"]


async def test_bad_signature_and_stale_timestamp_are_refused(
    sqlite_url: str, slack: SlackStandIn
) -> None:
    async with serving(slack_settings(sqlite_url, slack), slack) as rt:
        event = slack.user_message(JAMES, JAMES_DM, "hello")
        body = json.dumps(slack.envelope(event)).encode()
        assert (await slack.post(body, secret="not-the-signing-secret")).status == 401
        stale = int(time.time()) - 6 * 60
        assert (await slack.post(body, timestamp=stale)).status == 401  # replayed later
        assert (await slack.post(body, signed=False)).status == 401
        bad_ts = {"X-Slack-Request-Timestamp": "yesterday", "X-Slack-Signature": "v0=00"}
        assert (await slack.post(body, signed=False, headers=bad_ts)).status == 401
        # the body is bounded before anything reads it
        huge = b'{"type": "event_callback", "x": "' + b"a" * (1 << 20) + b'"}'
        assert (await slack.post(huge)).status == 413
        # nothing of it was kept or answered
        assert await rows(rt, InboxUpdate) == []
        assert (await slack.post(body, timestamp=int(time.time()) - 60)).status == 200
        await settled(rt)
        assert len(slack.bot_messages(JAMES_DM)) == 1


async def test_retried_event_gets_one_reply(db_url: str, slack: SlackStandIn) -> None:
    async with serving(slack_settings(db_url, slack), slack) as rt:
        envelope = slack.envelope(slack.user_message(JAMES, JAMES_DM, "hello"))
        assert (await slack.send_event(envelope)).status == 200
        # Slack retries when it did not see the 200 in time; an http_timeout retry can
        # race the first attempt: all of them are acknowledged, one is kept
        racing = await asyncio.gather(
            *(slack.send_event(envelope, retry_num=n) for n in (1, 2, 3)),
            slack.send_event(envelope, retry_num=1, retry_reason="http_error"),
        )
        assert [d.status for d in racing] == [200] * 4
        await settled(rt)
        inbox = await rows(rt, InboxUpdate)
        assert [r.dedupe_key for r in inbox] == [f"event:{envelope['event_id']}"]
        # the same message in a second event (message.im and app_mention): one reply too
        again = {**envelope, "event_id": "Ev99OTHERID"}
        assert (await slack.send_event(again)).status == 200
        await settled(rt)
        assert len(slack.bot_messages(JAMES_DM)) == 1


async def test_unacknowledged_when_the_update_cannot_be_stored(
    sqlite_url: str, slack: SlackStandIn
) -> None:
    async with serving(slack_settings(sqlite_url, slack), slack) as rt:

        async def broken(*args: Any) -> bool:
            raise OSError("database unavailable")

        rt.inbox.accept = broken  # type: ignore[method-assign]
        event = slack.user_message(JAMES, JAMES_DM, "hello")
        # not stored: 503 (never a 500), and Slack delivers it again
        assert (await slack.send_event(slack.envelope(event))).status == 503


async def test_503_while_slack_will_not_say_who_the_bot_is(
    sqlite_url: str, slack: SlackStandIn
) -> None:
    """Authorizing needs auth.test; while Slack fails it the event is not taken (503, Slack
    retries), and once auth.test answers the retry is."""
    slack.fail_next("auth.test", "internal_error", status=500, times=50)
    async with serving(slack_settings(sqlite_url, slack), slack) as rt:
        envelope = slack.envelope(slack.user_message(JAMES, JAMES_DM, "hello"))
        assert (await slack.send_event(envelope)).status == 503
        assert await rows(rt, InboxUpdate) == []
        slack.clear_faults()
        assert (await slack.send_event(envelope)).status == 200
        await settled(rt)
        assert len(slack.bot_messages(JAMES_DM)) == 1


async def test_bots_never_count_as_customers(sqlite_url: str, slack: SlackStandIn) -> None:
    async with serving(slack_settings(sqlite_url, slack), slack) as rt:
        # our own reply, as Slack reports it back (message.im): bolt drops it
        own = slack.user_message(BOT_USER, JAMES_DM, "Hello James!", keep=False)
        own["bot_id"] = BOT_ID
        assert (await slack.send_event(slack.envelope(own))).status == 200
        # another app's post in a customer channel, and an edit
        assert (await slack.send_event(load_fixture("message_bot"))).status == 200
        assert (await slack.send_event(load_fixture("message_changed"))).status == 200
        # a bot user without bot_id on the event: users.info says is_bot
        slack.add_user("U07HELPER1", "Helper Bot", is_bot=True)
        await slack.say("U07HELPER1", SHARED, "I am a bot")
        await settled(rt)
        assert slack.calls_to("chat.postMessage") == []
        statuses = {r.status for r in await rows(rt, InboxUpdate)}
        assert statuses <= {InboxStatus.IGNORED, InboxStatus.DONE}
        assert [t for t in await touchpoints(rt) if t.direction == "in"] == []


async def test_mentions_and_customer_channels(sqlite_url: str, slack: SlackStandIn) -> None:
    async with serving(slack_settings(sqlite_url, slack), slack) as rt:
        # elsewhere, only a mention counts; the answer goes into the mention's thread
        plain = await slack.say(ANNA, OTHER, "just chatting with colleagues")
        mention = await slack.say(
            ANNA, OTHER, f"<@{BOT_USER}> where is my invoice?", event_type="app_mention"
        )
        reply = await slack.wait_for(lambda: slack.bot_messages(OTHER))
        assert reply[-1]["thread_ts"] == mention["ts"]
        # a follow-up in that thread needs no mention: the conversation is open
        await slack.say(ANNA, OTHER, "hello?", thread_ts=mention["ts"])
        await settled(rt)
        assert len(slack.bot_messages(OTHER)) == 2
        # in a customer channel every top-level message starts a threaded conversation,
        # and its mention arriving as app_mention as well changes nothing
        asked = await slack.say(ANNA, SHARED, f"<@{BOT_USER}> opening hours?")
        mentioned = {**asked, "type": "app_mention"}
        mentioned.pop("channel_type")
        assert (await slack.send_event(slack.envelope(mentioned))).status == 200
        await slack.wait_for(lambda: slack.bot_messages(SHARED))
        await settled(rt)
        assert [m["thread_ts"] for m in slack.bot_messages(SHARED)] == [asked["ts"]]
        async with rt.sessions() as s:
            identity = (await s.execute(select(Identity))).scalars().all()
            contact = (await s.execute(select(Contact))).scalar_one()
        assert [i.external_id for i in identity] == [ANNA]
        assert (contact.name, contact.locale) == ("Anna Schmidt", "de")  # from users.info
        inbound = [t for t in await touchpoints(rt) if t.direction == "in"]
        assert [t.text for t in inbound] == ["where is my invoice?", "hello?", "opening hours?"]
        assert plain["text"] not in [t.text for t in inbound]


async def test_file_share_keeps_the_file_metadata(sqlite_url: str, slack: SlackStandIn) -> None:
    async with serving(slack_settings(sqlite_url, slack), slack) as rt:
        assert (await slack.send_event(load_fixture("file_share"))).status == 200
        await settled(rt)
        inbound = [t for t in await touchpoints(rt) if t.direction == "in"]
        assert inbound[0].text == "Here is a photo of the damaged parcel"
        [attachment] = inbound[0].payload["attachments"]
        assert (attachment["kind"], attachment["name"], attachment["platform_file_id"]) == (
            "photo",
            "parcel.jpg",
            "F07PHOTO001",
        )


async def test_profile_lookup_failure_or_missing_scope_does_not_stop_a_message(
    sqlite_url: str,
) -> None:
    async with SlackStandIn(scopes=("chat:write", "users:read")) as slack:
        cast(slack)
        async with serving(slack_settings(sqlite_url, slack), slack) as rt:
            slack.fail_next("users.info", "internal_error", status=500)
            await slack.say(ANNA, "D07ANNA001", "hallo")
            await slack.wait_for(lambda: slack.bot_messages("D07ANNA001"))
            await slack.say(JAMES, JAMES_DM, "hello")  # looked up without the email scope
            await slack.wait_for(lambda: slack.bot_messages(JAMES_DM))
            await settled(rt)
            async with rt.sessions() as s:
                contacts = (await s.execute(select(Contact).order_by(Contact.id))).scalars().all()
            assert [(c.name, c.email) for c in contacts] == [(None, None), ("James Walker", None)]


# ---- outbound: 429, shaping, long texts, errors -----------------------------------------------


async def test_429_is_delivered_once_after_retry_after(db_url: str, slack: SlackStandIn) -> None:
    async with serving(slack_settings(db_url, slack), slack) as rt:
        slack.fail_next("chat.postMessage", "ratelimited", retry_after=1)
        await slack.say(JAMES, JAMES_DM, "hello")
        await slack.wait_for(lambda: slack.bot_messages(JAMES_DM))
        await settled(rt)
        assert len(slack.bot_messages(JAMES_DM)) == 1
        [limited] = slack.failed_calls
        [posted] = [c for c in slack.calls if c.method == "chat.postMessage"]
        assert posted.at - limited.at >= 0.95  # it waited for Retry-After
        [row] = await rows(rt, _outbox())
        assert (row.status, row.attempts) == (OutboxStatus.SENT, 2)


async def test_posts_are_shaped_per_channel(sqlite_url: str, slack: SlackStandIn) -> None:
    settings = slack_settings(sqlite_url, slack, channel_rate_per_second=10.0, channel_burst=1)
    rt = Runtime(settings, channels=["slack"])
    ch = channel(rt)
    await ch.start()
    try:
        slack.rate_limit(per_channel_per_sec=10)  # Slack would answer 429 above that
        started = time.monotonic()
        for i in range(5):
            await ch.send(_out(f"message {i}", JAMES_DM))
        took = time.monotonic() - started
        await ch.send(_out("another channel is not held back", "D07ANNA001"))
        assert took >= 0.35  # burst 1, then ~9/s
        assert slack.failed_calls == []
        assert len(slack.bot_messages(JAMES_DM)) == 5
    finally:
        await ch.stop()
        await rt.db.dispose()


def _out(text: str, thread: str, choices: tuple[Choice, ...] = (), oid: int = 1) -> OutboundMessage:
    return OutboundMessage("slack", JAMES, thread, text, choices, outbox_id=oid)


async def test_long_texts_are_split_with_the_buttons_last(
    sqlite_url: str, slack: SlackStandIn
) -> None:
    rt = Runtime(slack_settings(sqlite_url, slack), channels=["slack"])
    ch = channel(rt)
    await ch.start()
    try:
        paragraph = "All about your order. " * 90 + "\n\n"  # ~2,000 characters
        text = paragraph * 45  # ~89,000 characters
        choices = (Choice("c:yes", "Yes"), Choice("c:no", "No"))
        # the first part goes out, the second fails: the retry sends only what is missing
        slack.fail_next("chat.postMessage", "internal_error", status=500, after=1)
        with pytest.raises(TransientSendError):
            await ch.send(_out(text, JAMES_DM, choices, oid=7))
        result = await ch.send(_out(text, JAMES_DM, choices, oid=7))
        posted = slack.bot_messages(JAMES_DM)
        assert len(posted) == 3 and all(len(m["text"]) <= MAX_TEXT for m in posted)
        assert [buttons(m) for m in posted] == [[], [], ["c:yes", "c:no"]]
        assert result.platform_message_id == f"{JAMES_DM}:{posted[-1]['ts']}"
        assert "".join(block_text(m) for m in posted).count("All about your order.") == 90 * 45
    finally:
        await ch.stop()
        await rt.db.dispose()


def test_split_text_boundaries() -> None:
    text = ("word " * 30_000).strip()
    parts = split_text(text)
    assert all(len(p) <= MAX_TEXT for p in parts)
    assert " ".join(parts) == text
    assert split_text("") == [""]
    assert split_text("x" * 90_001) == ["x" * 40_000, "x" * 40_000, "x" * 10_001]


async def test_errors_are_mapped_for_the_dispatcher(sqlite_url: str, slack: SlackStandIn) -> None:
    rt = Runtime(slack_settings(sqlite_url, slack), channels=["slack"])
    ch = channel(rt)
    await ch.start()
    try:
        slack.fail_next("chat.postMessage", "channel_not_found")
        with pytest.raises(PermanentSendError):
            await ch.send(_out("hi", "C0GONE0001:1.2"))
        slack.fail_next("chat.postMessage", "invalid_auth")  # fixable: retried
        with pytest.raises(TransientSendError):
            await ch.send(_out("hi", JAMES_DM))
        slack.fail_next("chat.postMessage", "ratelimited", retry_after=7)
        with pytest.raises(TransientSendError) as limited:
            await ch.send(_out("hi", JAMES_DM))
        assert limited.value.retry_after == 7.0
        slack.stall("chat.postMessage", 6)  # longer than request_timeout
        with pytest.raises(TransientSendError):
            await ch.send(_out("hi", JAMES_DM))
        with pytest.raises(PermanentSendError):
            await ch.send(_out("hi", "not-a-thread"))
    finally:
        await ch.stop()
        await rt.db.dispose()


# ---- Socket Mode ------------------------------------------------------------------------------


async def test_socket_mode_persists_then_acknowledges(sqlite_url: str, slack: SlackStandIn) -> None:
    settings = slack_settings(sqlite_url, slack, signing_secret=None, app_token=APP_TOKEN)
    rt = Runtime(settings, channels=["slack"])
    assert rt.channels["slack"].router is None  # no HTTP endpoint without a signing secret
    await rt.start()
    try:
        await slack.wait_for(lambda: slack.socket_connected)
        envelope = slack.envelope(slack.user_message(JAMES, JAMES_DM, "hello"))
        ack = json.loads((await slack.send_event(envelope)).body)
        assert ack["envelope_id"]
        async with rt.sessions() as s:  # stored before the ack went out
            assert (await s.execute(select(InboxUpdate))).scalar_one() is not None
        await slack.send_event(envelope, retry_num=1)  # a redelivery: acked, not kept again
        menu = (await slack.wait_for(lambda: slack.bot_messages(JAMES_DM)))[-1]
        await slack.press(JAMES, JAMES_DM, "c:complaint", message=menu)
        await wait_text(slack, JAMES_DM, "What is your complaint about")
        await settled(rt)
        assert len(await rows(rt, InboxUpdate)) == 2
        assert len(slack.calls_to("apps.connections.open")) == 1
    finally:
        await rt.stop()


# ---- configuration ----------------------------------------------------------------------------


def test_off_without_a_bot_token(sqlite_url: str) -> None:
    rt = Runtime(make_settings(sqlite_url), channels=["slack"])
    assert "slack" not in rt.channels
    assert create(rt) is None


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="neither a signing secret"):
        SlackSettings(bot_token="xoxb-1-2-abc")
    with pytest.raises(ValueError, match="bot token"):
        SlackSettings(bot_token="xoxp-user-token", signing_secret="s")
    with pytest.raises(ValueError, match="channel id"):
        SlackSettings(agent_channel="#support")
    with pytest.raises(ValueError, match="also be a customer"):
        SlackSettings(agent_channel="C0AGENTS01", customer_channels=["C0AGENTS01"])
    s = SlackSettings(api_base="http://127.0.0.1:9/api")
    assert s.api_base == "http://127.0.0.1:9/api/"


def test_secrets_only_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = (ROOT / "config.yaml").read_text(encoding="utf-8")
    path = tmp_path / "config.yaml"
    path.write_text(config + "\nslack:\n  signing_secret: abc123\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    assert "CICBOT_SLACK__SIGNING_SECRET" in str(refused.value)
    assert "abc123" not in str(refused.value)
    path.write_text(config + "\nslack:\n  agent_channel: C0AGENTS01\n", encoding="utf-8")
    monkeypatch.setenv("CICBOT_SLACK__BOT_TOKEN", "xoxb-1-2-secret")
    monkeypatch.setenv("CICBOT_SLACK__SIGNING_SECRET", "s3cret")
    settings = load_settings(path)
    assert settings.slack.agent_channel == "C0AGENTS01"
    assert settings.slack.bot_token is not None
    assert "xoxb-1-2-secret" not in repr(settings.slack)


async def test_malformed_payloads_are_refused_not_crashed(db_url: str, slack: SlackStandIn) -> None:
    """Found by tests/reliability/test_fuzz.py: signed payloads whose fields have the wrong
    type made bolt's middleware raise (500, and Slack's retries); now a clean 400."""
    async with serving(slack_settings(db_url, slack), slack) as rt:
        mention = load_fixture("app_mention")
        for field, value in (("authorizations", "1"), ("event", None), ("type", {})):
            body = json.dumps({**mention, field: value}).encode()
            assert (await slack.post(body)).status == 400, field
        nested = {**mention, "event": {**mention["event"], "channel": ["C1"]}}
        assert (await slack.post(json.dumps(nested).encode())).status == 400
        assert (await slack.post(b"[" * 5000 + b"]" * 5000)).status == 400
        assert await rows(rt, InboxUpdate) == []
        # a lone surrogate escape (valid JSON, refused by PostgreSQL) is stored as U+FFFD
        envelope = slack.envelope(slack.user_message(JAMES, JAMES_DM, "hi \ud800 there"))
        assert (await slack.post(json.dumps(envelope).encode())).status == 200
        await settled(rt)
        (row,) = await rows(rt, InboxUpdate)
        assert row.payload["event"]["text"] == "hi \ufffd there"
