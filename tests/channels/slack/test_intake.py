"""What Slack can send besides messages and button presses: shapes slack-bolt cannot route
(kept, never a 500), the app_rate_limited notice, and the support slash command and message
shortcut, end to end against the Slack stand-in and the real application under uvicorn."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from bot.runtime import Runtime
from channels.slack.settings import SlackSettings
from storage.models import InboxStatus, InboxUpdate, Touchpoint
from tests.channels.slack.helpers import (
    JAMES,
    JAMES_DM,
    OTHER,
    cast,
    rows,
    serving,
    settled,
    slack_settings,
)
from tests.standins.slack_api import APP_TOKEN, BOT_USER, SlackStandIn, load_fixture


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    async with SlackStandIn() as standin:
        cast(standin)
        yield standin


def unroutable() -> dict[str, dict[str, object]]:
    """Signed payloads slack-bolt's routing raised on (a 500 before) or had no listener
    for (a 404), by what makes them so."""
    legacy = load_fixture("interactive_message")  # no "actions": bolt reads actions[0]
    step_edit = load_fixture("workflow_step_edit")  # no "workflow_step"
    step_save = load_fixture("view_submission_workflow_step")  # view.type workflow_step
    no_press = {**load_fixture("block_actions"), "actions": []}  # IndexError in bolt
    step_view = {**step_save, "view": {k: v for k, v in step_save["view"].items() if k != "type"}}
    shapes = {
        "interactive_message without actions": legacy,
        "workflow_step_edit without workflow_step": step_edit,
        "view_submission of a workflow-step view": step_save,
        "view_submission whose view has no type": step_view,
        "block_actions with no action": no_press,
        "a user without an id": {**load_fixture("block_actions"), "user": {}},
        "a global shortcut": {**load_fixture("message_action"), "type": "shortcut"},
        "another message shortcut": {**load_fixture("message_action"), "callback_id": "x"},
        "view_closed": {**step_save, "type": "view_closed"},
        "a type nobody knows": {"type": "something_new", "team": {"id": "T0CICTEAM1"}},
    }
    for n, payload in enumerate(shapes.values()):  # one trigger per interaction, as Slack's
        if "trigger_id" in payload:
            payload["trigger_id"] = f"{n}.{payload['trigger_id']}"
    return shapes


async def test_no_signed_payload_gets_a_5xx_and_each_is_kept(
    db_url: str, slack: SlackStandIn
) -> None:
    async with serving(slack_settings(db_url, slack), slack) as rt:
        shapes = unroutable()
        for what, payload in shapes.items():
            answer = await slack.send_action(payload)
            assert answer.status == 200, (what, answer)
        # an unknown slash command: bolt has a listener for every command, kept all the same
        command = slack.slash_command(JAMES, OTHER, "hi", command="/other")
        assert (await slack.send_command(command)).status == 200
        await settled(rt)
        kept = await rows(rt, InboxUpdate)
        assert len(kept) == len(shapes) + 1  # every one stored as Slack sent it
        # nothing for the bot in them: ignored, or dead with the reason where a press
        # cannot be read (no action, no user)
        dead = [r.payload for r in kept if r.status == InboxStatus.DEAD]
        assert dead == [shapes["block_actions with no action"], shapes["a user without an id"]]
        assert all(r.error for r in kept if r.status == InboxStatus.DEAD)
        assert {r.status for r in kept} == {InboxStatus.IGNORED, InboxStatus.DEAD}
        assert slack.bot_messages(JAMES_DM) == []
        # and nothing is stuck: a customer's message after them is answered
        await slack.say(JAMES, JAMES_DM, "hello")
        await slack.wait_for(lambda: slack.bot_messages(JAMES_DM))


async def test_app_rate_limited_is_counted_and_logged_once_a_minute(
    sqlite_url: str, slack: SlackStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    notice = load_fixture("app_rate_limited")
    async with serving(slack_settings(sqlite_url, slack), slack) as rt:
        caplog.set_level(logging.WARNING, "channels.slack.adapter")
        for body in (
            notice,
            notice,
            {**notice, "minute_rate_limited": notice["minute_rate_limited"] + 60},
        ):
            answer = await slack.post(json.dumps(body).encode())
            assert answer.status == 200, answer  # not bolt's 404 "unhandled request"
        counted = rt.metrics.registry.get_sample_value(
            "cicbot_platform_rate_limited_total", {"channel": "slack"}
        )
        assert counted == 2  # two minutes, the first told twice
        lines = [r for r in caplog.records if "app_rate_limited" in r.getMessage()]
        assert len(lines) == 2
        assert len(await rows(rt, InboxUpdate)) == 2


async def test_support_command_opens_a_conversation_in_the_dm(
    db_url: str, slack: SlackStandIn
) -> None:
    async with serving(slack_settings(db_url, slack), slack) as rt:
        # typed in a channel that is no customer channel: the answer comes in the DM
        # a question, not a request for a person (that would queue James, and the bare
        # /support below would get "still waiting" instead of the menu)
        fields = slack.slash_command(JAMES, OTHER, "Where is my parcel?")
        answer = await slack.send_command(fields)
        assert answer.status == 200 and answer.body == ""  # acknowledged, nothing in #general
        await slack.wait_for(lambda: slack.bot_messages(JAMES_DM))
        assert slack.calls_to("conversations.open")[0]["users"] == JAMES
        assert slack.bot_messages(OTHER) == []
        await settled(rt)
        async with rt.sessions() as s:
            said = (
                (await s.execute(select(Touchpoint.text).where(Touchpoint.direction == "in")))
                .scalars()
                .all()
            )
        assert said == ["Where is my parcel?"]
        # the same command delivered twice (a double submit): one conversation turn
        assert (await slack.send_command(fields)).status == 200
        await settled(rt)
        assert len(await rows(rt, InboxUpdate)) == 1
        # a bare /support opens the main menu, with buttons
        before = len(slack.bot_messages(JAMES_DM))
        assert (await slack.send_command(slack.slash_command(JAMES, OTHER, ""))).status == 200
        menu = await slack.wait_for(
            lambda: (
                slack.bot_messages(JAMES_DM)[before:]
                if len(slack.bot_messages(JAMES_DM)) > before
                else None
            )
        )
        assert any(b.get("type") == "actions" for b in menu[-1].get("blocks", []))


async def test_send_to_support_shortcut_opens_a_conversation_with_the_message(
    sqlite_url: str, slack: SlackStandIn
) -> None:
    async with serving(slack_settings(sqlite_url, slack), slack) as rt:
        message = load_fixture("message_action")["message"]
        payload = slack.message_shortcut(JAMES, OTHER, message)
        assert (await slack.send_action(payload)).status == 200
        await slack.wait_for(lambda: slack.bot_messages(JAMES_DM))
        await settled(rt)
        async with rt.sessions() as s:
            said = (
                (await s.execute(select(Touchpoint.text).where(Touchpoint.direction == "in")))
                .scalars()
                .all()
            )
        # Slack's entities undone: the message as the customer wrote it
        assert said == ["The delivery for order 48231 never arrived & tracking says <delivered>"]
        # sent to support again (another trigger): the same message counts once
        replies = len(slack.bot_messages(JAMES_DM))
        again = slack.message_shortcut(JAMES, OTHER, message)
        assert (await slack.send_action(again)).status == 200
        await settled(rt)
        assert len(slack.bot_messages(JAMES_DM)) == replies
        assert BOT_USER not in said[0]


async def test_support_command_over_socket_mode(sqlite_url: str, slack: SlackStandIn) -> None:
    settings = slack_settings(sqlite_url, slack, signing_secret=None, app_token=APP_TOKEN)
    rt = Runtime(settings, channels=["slack"])
    await rt.start()
    try:
        await slack.wait_for(lambda: slack.socket_connected)
        ack = await slack.send_command(slack.slash_command(JAMES, OTHER, "my invoice is wrong"))
        assert json.loads(ack.body)["envelope_id"]
        await slack.wait_for(lambda: slack.bot_messages(JAMES_DM))
        # a shape bolt cannot route is acknowledged over the socket too (not left unacked)
        legacy = await slack.push_socket("interactive", load_fixture("interactive_message"))
        assert legacy["envelope_id"]
        await settled(rt)
    finally:
        await rt.stop()


def test_support_command_is_validated() -> None:
    with pytest.raises(ValueError, match="slash command"):
        SlackSettings(bot_token="xoxb-1", signing_secret="s", support_command="support")
    assert SlackSettings(bot_token="xoxb-1", signing_secret="s").support_command == "/support"
