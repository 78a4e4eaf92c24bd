"""The agent desk in Slack, end to end: customers on Telegram (the Bot API stand-in) and in
Slack, agents in the Slack agent channel (the Slack stand-in), the real application under
uvicorn, every platform call over real HTTP through aiogram, slack-bolt and slack_sdk."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from bot.desk.auth import create_agent
from bot.runtime import Runtime
from channels.telegram.settings import TelegramSettings
from storage.models import (
    Agent,
    AgentCard,
    AgentRole,
    Case,
    CaseStatus,
    Conversation,
    ConversationStatus,
    OutboxMessage,
    OutboxStatus,
    Touchpoint,
)
from tests.channels.slack.helpers import (
    AGENT_CHANNEL,
    ERIKA,
    JAMES,
    JAMES_DM,
    MAX,
    block_text,
    buttons,
    cast,
    rows,
    serving,
    settled,
    slack_settings,
)
from tests.standins.slack_api import SlackStandIn
from tests.standins.telegram_api import DEFAULT_TOKEN, TelegramStandIn

TG_USER = 391047582
CASE_REF = re.compile(r"C-\d{4}-\d{6}")


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    async with SlackStandIn() as standin:
        cast(standin)
        yield standin


def with_telegram(db_url: str, slack: SlackStandIn, tg: TelegramStandIn) -> Any:
    telegram = TelegramSettings(
        token=DEFAULT_TOKEN,
        mode="polling",
        api_base=tg.base_url,
        polling_timeout=1,
        request_timeout=5,
        chat_rate_per_second=50.0,
        chat_burst=10,
    )
    return slack_settings(db_url, slack, settings={"telegram": telegram})


def cards(slack: SlackStandIn) -> list[dict[str, Any]]:
    return [m for m in slack.bot_messages(AGENT_CHANNEL) if "thread_ts" not in m]


def tg_texts(tg: TelegramStandIn) -> list[str]:
    return [str(p["text"]) for p in tg.sent_messages(TG_USER)]


async def tg_says(tg: TelegramStandIn, text: str) -> None:
    tg.push_text(TG_USER, text, first_name="Tom")


async def tg_waits(tg: TelegramStandIn, pattern: str) -> str:
    regex = re.compile(pattern)
    found: str = await tg.wait_for(lambda: next((t for t in tg_texts(tg) if regex.search(t)), None))
    return found


async def test_telegram_customer_served_from_slack(
    db_url: str, slack: SlackStandIn, tg: TelegramStandIn
) -> None:
    settings = with_telegram(db_url, slack, tg)
    async with serving(settings, slack, channels=("slack", "telegram")) as rt:
        # a Telegram customer files a complaint, then asks for a person
        for text in ("complaint", "1", "The parcel arrived wet and torn.", "A-12345", "2", "1"):
            before = len(tg_texts(tg))
            await tg_says(tg, text)
            await tg.wait_for(lambda before=before: len(tg_texts(tg)) > before)
        await tg_says(tg, "yes")
        reference = CASE_REF.search(await tg_waits(tg, CASE_REF.pattern))
        assert reference
        await tg_says(tg, "human")
        await tg_waits(tg, "handing you over")

        # the card appears in the agent channel
        [card] = await slack.wait_for(lambda: cards(slack))
        shown = block_text(card)
        for expected in (
            "Tom needs an agent",
            "*Channel*\ntelegram",
            "*Value segment*\n–",
            reference.group(0),
            "asked for a person",
            "The parcel arrived wet and torn.",
            "Waiting for an agent",
        ):
            assert expected in shown, (expected, shown)
        assert "*Priority*\n20" in shown
        assert buttons(card) == [card["blocks"][-1]["elements"][0]["value"]]  # Claim only

        # Erika (not yet an agent) presses Claim: she becomes one and owns it
        await slack.press(ERIKA, AGENT_CHANNEL, "desk_claim", message=card)
        await tg_waits(tg, "Erika Muster")  # the customer is told who took over
        claimed = await slack.wait_for(lambda: "Claimed by" in block_text(cards(slack)[0]))
        assert claimed
        assert [b["action_id"] for b in cards(slack)[0]["blocks"][-1]["elements"]] == [
            "desk_resolve",
            "desk_handback",
        ]
        async with rt.sessions() as s:
            # (the agents table outlives a test on PostgreSQL: look her up by Slack id)
            q = select(Agent).where(Agent.slack_user_id == ERIKA)
            erika = (await s.execute(q)).scalar_one()
        assert (erika.name, erika.role, erika.slack_user_id) == ("Erika Muster", "agent", ERIKA)

        # her reply in the card's thread reaches the customer on Telegram
        thread = card["ts"]
        await slack.say(ERIKA, AGENT_CHANNEL, "Hi Tom, I am *on it* & sorry!", thread_ts=thread)
        await tg_waits(tg, "Hi Tom, I am \\*on it\\* & sorry!")
        # an internal note stays internal
        await slack.say(ERIKA, AGENT_CHANNEL, "note: carrier damage, refund ok", thread_ts=thread)

        # the customer's answer is mirrored into the thread, and only it
        await tg_says(tg, "Thanks, a refund would be great")
        mirrored = await slack.wait_for(
            lambda: [t for t in slack.texts(AGENT_CHANNEL, thread_ts=thread) if "refund" in t]
        )
        assert mirrored == ["*Tom* (telegram): Thanks, a refund would be great"]
        await settled(rt)
        assert not any("carrier damage" in t for t in tg_texts(tg))
        assert slack.texts(AGENT_CHANNEL, thread_ts=thread) == mirrored  # nothing echoed

        # Resolve closes the conversation and the case, and tells the customer
        await slack.press(ERIKA, AGENT_CHANNEL, "desk_resolve", message=cards(slack)[0])
        await slack.wait_for(lambda: "Resolved by *Erika Muster*" in block_text(cards(slack)[0]))
        await settled(rt)
        assert buttons(cards(slack)[0]) == []
        async with rt.sessions() as s:
            conv = (await s.execute(select(Conversation))).scalar_one()
            case = (await s.execute(select(Case))).scalar_one()
            notes = (
                (await s.execute(select(Touchpoint).where(Touchpoint.kind == "note")))
                .scalars()
                .all()
            )
        assert conv.status == ConversationStatus.CLOSED
        assert case.status == CaseStatus.RESOLVED
        assert [n.text for n in notes] == ["carrier damage, refund ok"]
        assert notes[0].actor == f"agent:{erika.id}"
        assert len(cards(slack)) == 1 and slack.failed_calls == []
        desk_rows = [r for r in await rows(rt, OutboxMessage) if r.channel == "slack"]
        assert {r.recipient_id for r in desk_rows} == {AGENT_CHANNEL}
        assert all(r.status == OutboxStatus.SENT for r in desk_rows)


async def test_slack_customer_and_the_desk_do_not_loop(
    sqlite_url: str, slack: SlackStandIn
) -> None:
    async with serving(slack_settings(sqlite_url, slack), slack) as rt:
        await slack.say(JAMES, JAMES_DM, "human")
        [card] = await slack.wait_for(lambda: cards(slack))
        assert "*Channel*\nslack" in block_text(card)
        await slack.press(ERIKA, AGENT_CHANNEL, "desk_claim", message=card)
        await slack.wait_for(lambda: any("Erika" in t for t in slack.texts(JAMES_DM)))
        await slack.say(ERIKA, AGENT_CHANNEL, "Hello James", thread_ts=card["ts"])
        await slack.wait_for(lambda: "Hello James" in slack.texts(JAMES_DM))
        # Slack reports our own posts back (message.im, and in the agent channel): ignored
        for chan, posted in ((JAMES_DM, slack.bot_messages(JAMES_DM)[-1]), (AGENT_CHANNEL, card)):
            echo = slack.user_message("U0CICBOT01", chan, posted["text"], keep=False)
            echo["bot_id"] = "B0CICBOT01"
            assert (await slack.send_event(slack.envelope(echo))).status == 200
        await slack.say(JAMES, JAMES_DM, "Great, thanks")
        await slack.wait_for(lambda: any("Great, thanks" in t for t in slack.texts(AGENT_CHANNEL)))
        await settled(rt)
        assert slack.texts(JAMES_DM).count("Hello James") == 1
        thread = slack.texts(AGENT_CHANNEL, thread_ts=card["ts"])
        assert thread == ["*James Walker* (slack): Great, thanks"]


async def test_two_agents_claim_one_wins(sqlite_url: str, slack: SlackStandIn) -> None:
    async with serving(slack_settings(sqlite_url, slack), slack) as rt:
        await slack.say(JAMES, JAMES_DM, "human")
        [card] = await slack.wait_for(lambda: cards(slack))
        await slack.press(ERIKA, AGENT_CHANNEL, "desk_claim", message=card)
        await slack.press(MAX, AGENT_CHANNEL, "desk_claim", message=card)
        # Max, who does not own it, replies in the thread: not sent, he is told why
        await slack.say(MAX, AGENT_CHANNEL, "I can take it", thread_ts=card["ts"])
        await settled(rt)
        ephemeral = slack.calls_to("chat.postEphemeral")
        assert [e["user"] for e in ephemeral] == [MAX, MAX]
        assert [e["text"] for e in ephemeral] == [
            ":warning: Erika Muster has this conversation.",
            ":warning: Not sent to the customer: Erika Muster has this conversation.",
        ]
        assert "Claimed by *Erika Muster*" in block_text(cards(slack)[0])
        assert "I can take it" not in slack.texts(JAMES_DM)
        async with rt.sessions() as s:
            conv = (await s.execute(select(Conversation))).scalar_one()
            agents = (await s.execute(select(Agent).order_by(Agent.id))).scalars().all()
        assert conv.assignee == str(agents[0].id) and agents[0].slack_user_id == ERIKA
        # a person who never claimed anything is not made an agent by writing
        await slack.say("U07NOBODY1", AGENT_CHANNEL, "who is on this?", thread_ts=card["ts"])
        await settled(rt)
        assert slack.calls_to("chat.postEphemeral")[-1]["user"] == "U07NOBODY1"
        assert len(await rows(rt, Agent)) == 2


async def test_back_to_bot_and_desk_changes_made_elsewhere(
    sqlite_url: str, slack: SlackStandIn
) -> None:
    async with serving(slack_settings(sqlite_url, slack), slack) as rt:
        await slack.say(JAMES, JAMES_DM, "human")
        [card] = await slack.wait_for(lambda: cards(slack))
        # an agent claims in the web console / REST API: the Slack card follows
        async with rt.sessions() as s, s.begin():
            agent, _ = await create_agent(s, "Console Carla", AgentRole.AGENT)
        conv_id = int(card["blocks"][-1]["elements"][0]["value"])
        await rt.desk.claim(agent, conv_id)
        await slack.wait_for(lambda: "Claimed by *Console Carla*" in block_text(cards(slack)[0]))
        await rt.desk.hand_back(agent, conv_id)
        await slack.wait_for(lambda: "Back to the bot" in block_text(cards(slack)[0]))
        await settled(rt)
        assert buttons(cards(slack)[0]) == []
        # back with the bot: it answers again; no mirror, the card is not live any more
        await slack.say(JAMES, JAMES_DM, "menu")
        await slack.wait_for(lambda: "c:complaint" in buttons(slack.bot_messages(JAMES_DM)[-1]))
        await settled(rt)
        assert slack.texts(AGENT_CHANNEL, thread_ts=card["ts"]) == []


async def test_card_and_mirror_are_durable(sqlite_url: str, slack: SlackStandIn) -> None:
    """Written to the outbox with the escalation (same transaction), sent later: a Slack
    outage or a restart in between loses nothing and posts nothing twice."""
    rt = Runtime(slack_settings(sqlite_url, slack), channels=["slack"])
    await rt.start(dispatch=False)
    try:
        from bot.channel.messages import InboundMessage

        def msg(text: str, mid: str) -> InboundMessage:
            return InboundMessage(
                "slack", JAMES, f"{JAMES_DM}:{mid}", JAMES_DM, text, sender_name="James Walker"
            )

        await rt.engine.handle(msg("human", "1.1"))
        await rt.engine.handle(msg("Are you there?", "1.2"))
        desk = [r for r in await rows(rt, OutboxMessage) if r.recipient_id == AGENT_CHANNEL]
        assert [r.thread_key.split(":")[-1] for r in desk] == ["card", "mirror"]
        slack.fail_next("chat.postMessage", "internal_error", status=500, channel=AGENT_CHANNEL)
        for _ in range(20):
            await rt.dispatcher.drain_once()
            if len(slack.bot_messages(AGENT_CHANNEL)) == 2:
                break
            await _sleep()
        [card] = cards(slack)
        assert slack.texts(AGENT_CHANNEL, thread_ts=card["ts"]) == [
            "*James Walker* (slack): Are you there?"
        ]
        [mapped] = await rows(rt, AgentCard)
        assert (mapped.container, mapped.message_ref) == (AGENT_CHANNEL, card["ts"])
    finally:
        await rt.stop()


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.1)


HOSTILE = "Eve <!channel> <https://evil.example|click here> & <@U07ERIKA01>"


async def test_the_cards_plain_text_escapes_the_customers_name(
    db_url: str, slack: SlackStandIn
) -> None:
    """The card's `text` (notifications, screen readers, clients without blocks) carries the
    name escaped like the blocks: no @channel, no link, no mention."""
    slack.add_user("U07EVE0001", HOSTILE)
    async with serving(slack_settings(db_url, slack), slack) as rt:
        await slack.say("U07EVE0001", "D07EVE0001", "human")
        [card] = await slack.wait_for(lambda: cards(slack))
        await settled(rt)
    escaped = (
        "Eve &lt;!channel&gt; &lt;https://evil.example|click here&gt; &amp; &lt;@U07ERIKA01&gt;"
    )
    assert card["text"].startswith(escaped), card["text"]
    for raw in ("<!channel>", "<https://", "<@U07ERIKA01>"):
        assert raw not in card["text"]
        assert raw not in block_text(card).replace(card["blocks"][0]["text"]["text"], "")
    assert card["blocks"][0]["text"]["type"] == "plain_text"  # the header: never markup


async def test_erase_takes_the_customer_out_of_the_agent_channel(
    db_url: str, slack: SlackStandIn
) -> None:
    """GDPR erasure reaches Slack through the outbox: the messages mirrored into the card's
    thread are deleted, the card becomes a notice without personal data; the export lists
    those Slack messages first. An agent's own reply in the thread is the agent's message."""
    from bot.crm import gdpr
    from storage.models import AgentCardMessage, Contact

    async with serving(slack_settings(db_url, slack), slack) as rt:
        await slack.say(JAMES, JAMES_DM, "human")
        [card] = await slack.wait_for(lambda: cards(slack))
        await slack.press(ERIKA, AGENT_CHANNEL, "desk_claim", message=card)
        await slack.wait_for(lambda: "Claimed by" in block_text(cards(slack)[0]))
        await slack.say(JAMES, JAMES_DM, "Send it to Blumenweg 17, please")
        await slack.say(ERIKA, AGENT_CHANNEL, "Will do", thread_ts=card["ts"])
        await slack.say(JAMES, JAMES_DM, "Thanks James here")
        await slack.wait_for(lambda: len(slack.texts(AGENT_CHANNEL, thread_ts=card["ts"])) == 2)
        await settled(rt)
        shown = [block_text(m) for m in slack.messages(AGENT_CHANNEL)]
        assert any("james@example.com" in t for t in shown)
        assert any("Blumenweg" in t for t in shown)

        async with rt.sessions() as s:
            contact_id = (await s.execute(select(Contact.id))).scalar_one()
            doc = await gdpr.export(s, contact_id)
        listed = doc["agent_channel_messages"]
        mirrored = [m["ts"] for m in slack.bot_messages(AGENT_CHANNEL, thread_ts=card["ts"])]
        assert [(m["container"], m["message_ref"], m["kind"]) for m in listed] == [
            (AGENT_CHANNEL, card["ts"], "card"),
            *((AGENT_CHANNEL, ts, "thread") for ts in mirrored),
        ]

        # Slack rate-limits the second deletion: the retry goes on where it stopped
        slack.fail_next("chat.delete", "ratelimited", after=1, retry_after=0)
        async with rt.sessions() as s, s.begin():
            await gdpr.erase(s, contact_id, actor="agent:1")
        await settled(rt)
        await slack.wait_for(lambda: "removed" in cards(slack)[0]["text"])

    remaining = slack.messages(AGENT_CHANNEL)
    for needle in ("James", "james@example.com", "Blumenweg", "Walker"):
        assert not any(needle in block_text(m) or needle in m["text"] for m in remaining), needle
    [blank] = cards(slack)
    assert blank["ts"] == card["ts"] and buttons(blank) == []
    # the mirrored messages are gone; the agent's own reply is hers (the bot cannot delete it)
    thread = slack.messages(AGENT_CHANNEL, thread_ts=card["ts"])
    assert [(m["user"], m["text"]) for m in thread] == [(ERIKA, "Will do")]
    assert sorted(p["ts"] for p in slack.calls_to("chat.delete")) == sorted(mirrored)
    assert [(c.method, c.params["ts"]) for c in slack.failed_calls] == [
        ("chat.delete", mirrored[1])
    ]
    assert await rows(rt, AgentCard) == [] and await rows(rt, AgentCardMessage) == []
    erase_rows = [r for r in await rows(rt, OutboxMessage) if r.thread_key.endswith(":erase")]
    assert [(r.recipient_id, r.status) for r in erase_rows] == [(AGENT_CHANNEL, "sent")]
