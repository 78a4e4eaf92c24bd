"""The retention period reaches every table with personal data (SQLite and PostgreSQL):
every kind of row is back-dated, generically over the schema (so a table added later is
back-dated too), and after the purge nothing old that names a person is left; what is
recent, or still being worked on, stays. Slack's copies go through the outbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import func, or_, select, update

from bot import retention
from bot.auth import create_agent
from bot.runtime import Runtime
from storage.models import (
    AgentCard,
    AgentCardMessage,
    Base,
    CampaignDelivery,
    CampaignRun,
    Contact,
    Conversation,
    DeadLetter,
    EmailMailbox,
    EmailMessageRef,
    InboxStatus,
    InboxUpdate,
    OutboxMessage,
    OutboxStatus,
    Touchpoint,
    UTCDateTime,
    utcnow,
)
from tests.bot.test_gdpr import PERSONAL, _customer, _scan
from tests.channels.slack_helpers import AGENT_CHANNEL, block_text, slack_settings
from tests.conftest import RecordingChannel, inbound
from tests.standins.slack_api import BOT_TOKEN, SlackStandIn

DAYS = 1095  # config.yaml's crm.retention_days
# the active customer's old content, and the recent customer's
OLD_OF_ACTIVE = [
    "Parcel for Bertram",
    "Bertram Keep wrote this",
    "thanks, Bertram",
    "Bertram@old",
    "Complaint by Bertram",
    "Dear Bertram",
]
RECENT = ["Cecilia", "cecilia.q@example.org"]
# tables whose old rows stay, emptied: the contacts still active (and the erased ones),
# and what the figures count (cases, ratings, consents as proof); rows without personal
# values: campaign runs and deliveries (ids and states), staff accounts, mailbox progress
KEPT_EMPTIED = {"contacts", "identities", "conversations", "cases", "survey_answers", "consents"}
NOT_PERSONAL = {"campaign_runs", "campaign_deliveries", "agents", "email_mailboxes"}


@pytest.fixture
async def world(db_url: str, slack: SlackStandIn) -> AsyncIterator[Runtime]:
    rt = Runtime(slack_settings(db_url, slack), channels=["slack"])
    rt.channels["test"] = RecordingChannel()
    await rt.start(dispatch=False)
    yield rt
    await rt.stop()


async def backdate(rt: Runtime, when: datetime) -> None:
    """Every time of every row of every table: `when`."""
    async with rt.sessions() as s, s.begin():
        for table in Base.metadata.sorted_tables:
            for col in table.columns:
                if isinstance(col.type, UTCDateTime):
                    await s.execute(update(table).where(col.is_not(None)).values({col: when}))


async def extras(rt: Runtime, slack: SlackStandIn, contact_id: int, name: str) -> None:
    """What `_customer` does not make: mail threading with a subject, a dead raw update, a
    failed outbox row, and an escalation card in Slack with a mirrored message."""
    first = name.split()[0]
    web = AsyncWebClient(token=BOT_TOKEN, base_url=slack.api_base)
    card = await web.chat_postMessage(channel=AGENT_CHANNEL, text=f"{name} needs an agent")
    mirror = await web.chat_postMessage(
        channel=AGENT_CHANNEL, text=f"*{name}*: hello", thread_ts=card["ts"]
    )
    async with rt.sessions() as s, s.begin():
        q = select(Conversation).where(Conversation.contact_id == contact_id)
        conv = (await s.execute(q)).scalars().first()
        assert conv is not None
        address = f"{first}@old.example"
        s.add(
            EmailMessageRef(
                message_id=f"<{first}@mail>",
                thread_key=address,
                address=address,
                direction="in",
                subject=f"Complaint by {name}",
            )
        )
        s.add(
            InboxUpdate(
                channel="email",
                dedupe_key=f"dead-{first}",
                partition_key=address,
                payload={"from": address},
                status=InboxStatus.DEAD,
                error="unparseable",
            )
        )
        s.add(
            OutboxMessage(
                channel="test",
                recipient_id=address,
                thread_key=address,
                body={"text": f"Dear {name}"},
                status=OutboxStatus.FAILED,
            )
        )
        row = AgentCard(
            conversation_id=conv.id,
            channel="slack",
            container=AGENT_CHANNEL,
            message_ref=card["ts"],
        )
        s.add(row)
        await s.flush()
        s.add(AgentCardMessage(card_id=row.id, message_ref=mirror["ts"]))
        run = CampaignRun(campaign="winback", run_key=f"once-{contact_id}", status="done")
        s.add(run)
        await s.flush()
        s.add(
            CampaignDelivery(
                run_id=run.id, campaign="winback", contact_id=contact_id, status="sent"
            )
        )
        s.add(EmailMailbox(mailbox=f"service@shop.example:993/{contact_id}", uidvalidity=1))
        await create_agent(s, f"Agent {contact_id}")


async def old_rows(rt: Runtime, cutoff: datetime) -> dict[str, int]:
    """Per table, the rows whose every time is before the cutoff."""
    found = {}
    async with rt.sessions() as s:
        for table in Base.metadata.sorted_tables:
            times = [c for c in table.columns if isinstance(c.type, UTCDateTime)]
            if not times:
                continue
            every_time_old = [or_(c.is_(None), c < cutoff) for c in times]
            q = (
                select(func.count())
                .select_from(table)
                .where(*every_time_old, or_(*(c.is_not(None) for c in times)))
            )
            n = int(await s.scalar(q) or 0)
            if n:
                found[table.name] = n
    return found


async def test_nothing_old_remains(world: Runtime, slack: SlackStandIn) -> None:
    rt = world
    # Zephyrine wrote four years ago and never again; Bertram then too, and again today
    old = await _customer(rt)
    active = await _customer(rt, user="u-active", name="Bertram Keep")
    for cid, name in ((old, "Zephyrine Quxworth"), (active, "Bertram Keep")):
        await extras(rt, slack, cid, name)
    long_ago = utcnow() - timedelta(days=DAYS + 300)
    await backdate(rt, long_ago)
    await rt.engine.handle(inbound("menu", user="u-active"))
    # Cecilia is a customer of this year
    recent = await _customer(rt, user="u-recent", name="Cecilia Newman")
    await extras(rt, slack, recent, "Cecilia Newman")
    assert len(await _scan(rt, PERSONAL)) > 10 and await _scan(rt, OLD_OF_ACTIVE)
    cutoff = utcnow() - timedelta(days=DAYS)
    before = await old_rows(rt, cutoff)
    assert {"touchpoints", "inbox", "outbox", "email_messages", "dead_letters", "orders"} <= set(
        before
    )
    assert {"identity_link_codes", "identity_link_addresses", "agent_cards"} <= set(before)

    async with rt.sessions() as s, s.begin():
        counts = await retention.purge(s, DAYS)
    # Zephyrine's card goes with her erasure, Bertram's on its own
    assert counts["contacts_erased"] == 1 and counts["agent_cards"] == 1
    await rt.dispatcher.drain()  # Slack: through the outbox

    # nothing old that names anyone: Zephyrine is erased, Bertram's old content gone
    assert await _scan(rt, PERSONAL) == []
    assert await _scan(rt, OLD_OF_ACTIVE) == []
    left = await old_rows(rt, cutoff)
    assert set(left) <= KEPT_EMPTIED | NOT_PERSONAL, left
    # Slack: both old cards are notices now, their mirrored messages deleted; Cecilia's stay
    agent_channel = slack.messages(AGENT_CHANNEL)
    shown = "\n".join(block_text(m) + m["text"] for m in agent_channel)
    assert "Zephyrine" not in shown and "Bertram" not in shown
    assert shown.count("Customer data removed") == 2 and "Cecilia Newman needs" in shown
    async with rt.sessions() as s:
        cards = (await s.execute(select(AgentCard))).scalars().all()
        kept = await s.get(Contact, active)
        letters = (await s.execute(select(DeadLetter.contact_id))).scalars().all()
        texts = (await s.execute(select(Touchpoint.text))).scalars().all()
    assert [c.conversation_id for c in cards] == [
        (await _conversation(rt, recent)),
    ]
    # Bertram stays a customer with what is recent; Cecilia is untouched
    assert kept is not None and kept.name == "Bertram Keep"
    assert "menu" in texts
    assert letters == [recent]
    assert len(await _scan(rt, RECENT)) >= 8
    # a second run finds nothing more to do
    async with rt.sessions() as s, s.begin():
        again = await retention.purge(s, DAYS)
    assert set(again.values()) == {0}, again


async def _conversation(rt: Runtime, contact_id: int) -> int:
    async with rt.sessions() as s:
        q = select(Conversation.id).where(Conversation.contact_id == contact_id)
        return int((await s.execute(q)).scalars().first() or 0)


async def test_work_in_progress_and_locks_stay(world: Runtime) -> None:
    """An update still to process and a message still to send are work, not records; a
    locked link address stays locked until a person unlocks it."""
    from storage.models import IdentityLinkAddress

    rt = world
    long_ago = utcnow() - timedelta(days=DAYS + 1)
    async with rt.sessions() as s, s.begin():
        s.add(
            InboxUpdate(
                channel="test",
                dedupe_key="pending-1",
                partition_key="p",
                payload={},
                status=InboxStatus.PENDING,
                created_at=long_ago,
            )
        )
        s.add(
            OutboxMessage(
                channel="test",
                recipient_id="r",
                thread_key="r",
                body={"text": "x"},
                status=OutboxStatus.PENDING,
                created_at=long_ago,
            )
        )
        s.add(
            IdentityLinkAddress(
                email="locked@example.com",
                failures=100,
                locked_at=long_ago,
                created_at=long_ago,
                updated_at=long_ago,
            )
        )
    async with rt.sessions() as s, s.begin():
        counts = await retention.purge(s, DAYS)
    assert (counts["inbox"], counts["outbox"], counts["identity_link_addresses"]) == (0, 0, 0)


def test_the_threat_model_names_every_table() -> None:
    """docs/security.md says what erasure and retention do to each table: a new table
    must be placed there too."""
    from tests.conftest import ROOT

    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    missing = [t.name for t in Base.metadata.sorted_tables if f"`{t.name}`" not in text]
    assert missing == []
