"""Verified email links end to end (SQLite and PostgreSQL): the engine, the outbox, a
recording email channel. A chat customer claims an address, the code is mailed there,
typing it back links the email identity (merging its contact) — and nothing is linked
or shown on an unverified claim."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from bot.identity_link import MASK, code_hash
from bot.messages import InboundMessage
from bot.runtime import Runtime, flow_options
from flows.link import code_state
from storage import queries
from storage.models import (
    Case,
    Consent,
    Contact,
    Conversation,
    Direction,
    IdentityLinkCode,
    Order,
    OutboxMessage,
    OutboxStatus,
    Touchpoint,
)
from tests.conftest import RecordingChannel, inbound, make_settings

ANNA = "anna@example.com"
CODE_RE = re.compile(r"\b[0-9]{6}\b")


@dataclass
class World:
    rt: Runtime
    chat: RecordingChannel
    mail: RecordingChannel
    clock: list[datetime]

    async def say(self, text: str, user: str = "tg-anna") -> list[str]:
        result = await self.rt.engine.handle(inbound(text, user=user))
        await self.rt.dispatcher.drain()
        return result.replies

    async def keys(self, text: str, user: str = "tg-anna") -> list[str]:
        """The catalog keys of the replies (from the outbound touchpoints)."""
        before = await self._last_id()
        await self.say(text, user)
        async with self.rt.sessions() as s:
            q = select(Touchpoint.payload).where(
                Touchpoint.id > before,
                Touchpoint.direction == Direction.OUT,
                Touchpoint.channel == "test",
            )
            return [p["key"] for p in (await s.execute(q.order_by(Touchpoint.id))).scalars()]

    async def _last_id(self) -> int:
        async with self.rt.sessions() as s:
            return int(await s.scalar(select(func.max(Touchpoint.id))) or 0)

    def code(self, index: int = -1) -> str:
        found = CODE_RE.findall(self.mail.sent[index].text)
        assert len(found) == 1, self.mail.sent[index].text
        return str(found[0])

    async def request(self, email: str, user: str = "tg-anna") -> list[str]:
        await self.say("link my email", user)
        return await self.keys(email, user)

    async def contact_of(self, channel: str, external_id: str) -> int | None:
        async with self.rt.sessions() as s:
            identity = await queries.get_identity(s, channel, external_id)
            return identity.contact_id if identity else None


# an email channel as configured (not started here: a recording channel stands in)
MAIL = {"address": "service@example.com", "smtp": {"host": "127.0.0.1"}}


@pytest.fixture
async def world(db_url: str) -> AsyncIterator[World]:
    clock = [datetime.now(UTC)]
    rt = Runtime(make_settings(db_url, email=MAIL), channels=[], clock=lambda: clock[0])
    chat, mail = RecordingChannel(), RecordingChannel()
    mail.name = "email"
    rt.channels["test"] = chat
    rt.channels["email"] = mail
    await rt.start(dispatch=False)
    yield World(rt, chat, mail, clock)
    await rt.stop()


async def email_customer(w: World, address: str = ANNA) -> tuple[int, str]:
    """A customer known by email: a mail, a case, a consent. Returns (contact, case ref)."""
    result = await w.rt.engine.handle(
        InboundMessage(
            channel="email",
            sender_id=address,
            platform_message_id=f"<m1.{address}>",
            thread_key=f"m:{address}",
            text="Where is my order 4711?",
            contact_updates={"email": address},
        )
    )
    assert result.contact_id is not None
    async with w.rt.sessions() as s, s.begin():
        case = await queries.create_case(
            s,
            Case(
                contact_id=result.contact_id,
                category="delivery",
                description="parcel 4711 never arrived",
                severity="high",
                created_at=w.clock[0],
                updated_at=w.clock[0],
            ),
        )
        await queries.add_consent(
            s,
            contact_id=result.contact_id,
            purpose="marketing",
            channel="email",
            granted=True,
            source="signup",
            text_shown="newsletter",
        )
        assert case.reference is not None
    await w.rt.dispatcher.drain()
    w.mail.sent.clear()  # the bot's answer to that mail
    return result.contact_id, case.reference


async def touchpoint_ids(w: World, contact_id: int) -> set[int]:
    async with w.rt.sessions() as s:
        q = select(Touchpoint.id).where(Touchpoint.contact_id == contact_id)
        return set((await s.execute(q)).scalars())


async def test_verified_link_merges_the_email_contact_keeping_everything(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bot")
    w = world
    anna, reference = await email_customer(w)
    assert await w.keys("hello") == ["menu.greeting"]
    chat_contact = await w.contact_of("test", "tg-anna")
    assert chat_contact is not None and chat_contact != anna
    assert await w.keys("status") == ["status.none"]

    assert await w.request(ANNA.upper()) == ["link.code_sent"]
    assert [m.recipient_id for m in w.mail.sent] == [ANNA]
    code = w.code()
    # the claim alone links nothing
    assert await w.contact_of("email", ANNA) == anna
    before = await touchpoint_ids(w, anna) | await touchpoint_ids(w, chat_contact)

    assert await w.keys(code) == ["link.linked"]
    assert await w.contact_of("email", ANNA) == chat_contact
    after = await touchpoint_ids(w, chat_contact)
    assert before < after  # every touchpoint of both contacts, plus the new ones
    async with w.rt.sessions() as s:
        assert await s.get(Contact, anna) is None
        kept = await s.get(Contact, chat_contact)
        assert kept is not None and kept.email == ANNA
        case = (await s.execute(select(Case))).scalar_one()
        assert case.contact_id == chat_contact
        consent = (await s.execute(select(Consent))).scalar_one()
        assert consent.contact_id == chat_contact
        audit = {
            (t.kind, t.channel): t.payload
            for t in (
                await s.execute(select(Touchpoint).where(Touchpoint.id.not_in(before)))
            ).scalars()
            if t.kind in ("contacts_merged", "identity_linked")
        }
        assert audit[("contacts_merged", "crm")]["merged_contact_id"] == anna
        for side in ("test", "email"):
            assert audit[("identity_linked", side)]["merged_contact_id"] == anna
            assert audit[("identity_linked", side)]["email"] == ANNA
        row = (await s.execute(select(IdentityLinkCode))).scalar_one()
        assert row.used_at is not None and row.attempts == 1
        assert row.code_hash == code_hash(row.identity_id, ANNA, code)
    # now verified as that customer: the case is theirs to see
    assert await w.keys("status") == ["status.case"]
    assert reference in w.chat.texts("tg-anna")[-1]
    await assert_code_never_in_clear(w, code, caplog)


async def assert_code_never_in_clear(w: World, code: str, caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if code in r.getMessage()]
    async with w.rt.sessions() as s:
        tps = (await s.execute(select(Touchpoint))).scalars().all()
        outbox = (await s.execute(select(OutboxMessage))).scalars().all()
    # only the customer's own message carries it
    clear = [t for t in tps if code in (t.text or "") + json.dumps(t.payload)]
    assert [(t.direction, t.text) for t in clear] == [(Direction.IN, code)]
    mails = [t for t in tps if t.payload.get("key") == "link.mail"]
    assert mails and all(MASK in (t.text or "") for t in mails)
    assert all(t.outbox_id and t.conversation_id is None for t in mails)
    assert not [o for o in outbox if code in json.dumps(o.body)]


async def test_no_existing_contact_creates_the_email_identity(world: World) -> None:
    w = world
    await w.say("hello")
    me = await w.contact_of("test", "tg-anna")
    assert await w.request("bob@example.com") == ["link.code_sent"]
    assert await w.contact_of("email", "bob@example.com") is None
    async with w.rt.sessions() as s:
        row = (
            await s.execute(select(OutboxMessage).where(OutboxMessage.channel == "email"))
        ).scalar_one()
        # addressed by the outbox row only: no identity, no conversation before verification
        assert (row.recipient_id, row.identity_id, row.conversation_id) == (
            "bob@example.com",
            None,
            None,
        )
    assert await w.keys(w.code()) == ["link.linked"]
    assert await w.contact_of("email", "bob@example.com") == me
    async with w.rt.sessions() as s:
        kinds = set((await s.execute(select(Touchpoint.kind))).scalars())
    assert "identity_linked" in kinds and "contacts_merged" not in kinds
    # linking it again says so, without a new mail going anywhere but there
    assert await w.request("bob@example.com") == ["link.code_sent"]
    assert await w.keys(w.code()) == ["link.already"]


async def test_an_attacker_sees_no_case_before_or_after_a_wrong_code(world: World) -> None:
    w = world
    anna, reference = await email_customer(w)
    eve = "tg-eve"
    assert await w.keys("status", eve) == ["status.none"]
    assert await w.keys(f"status {reference}", eve) == ["status.not_found"]
    # the reply to a customer's address is the one to an unknown address
    claim = await w.request(ANNA, eve)
    unknown = await w.request("nobody@example.com", "tg-other")
    assert claim == unknown == ["link.code_sent"]
    real = w.code(0)
    wrong = f"{(int(real) + 1) % 10**6:06d}"
    assert await w.keys(wrong, eve) == ["link.wrong_code"]
    # still waiting for a code: the status is shown, then the code asked for again
    assert await w.keys("status", eve) == ["status.none", "link.ask_code"]
    assert await w.keys(f"status {reference}", eve) == ["status.not_found", "link.ask_code"]
    await w.say("cancel", eve)
    assert await w.keys("status", eve) == ["status.none"]
    assert await w.keys(reference, eve) == ["status.not_found"]
    # nothing of the case but the reference eve typed herself ("no case C-… for you")
    said = " ".join(w.chat.texts(eve))
    assert "4711" not in said and "never arrived" not in said and "delivery" not in said.lower()
    async with w.rt.sessions() as s:
        q = select(Touchpoint.payload).where(
            Touchpoint.contact_id != anna, Touchpoint.direction == Direction.OUT
        )
        assert "status.case" not in {p.get("key") for p in (await s.execute(q)).scalars()}
    assert await w.contact_of("email", ANNA) == anna  # nothing merged
    async with w.rt.sessions() as s:
        case = (await s.execute(select(Case))).scalar_one()
        assert case.contact_id == anna


async def test_wrong_codes_count_and_the_fifth_kills_the_code(world: World) -> None:
    w = world
    anna, _ = await email_customer(w)
    await w.request(ANNA)
    real = w.code()
    wrong = f"{(int(real) + 1) % 10**6:06d}"
    for left in (4, 3, 2, 1):
        assert await w.keys(wrong) == ["link.wrong_code"]
        assert f": {left}." in w.chat.texts("tg-anna")[-1]
    assert await w.keys(wrong) == ["link.code_dead"]
    # the right code after that is refused even if the conversation still waits for one
    await set_waiting(w, "tg-anna")
    assert await w.keys(real) == ["link.code_dead"]
    assert await w.contact_of("email", ANNA) == anna
    async with w.rt.sessions() as s:
        assert (await s.execute(select(IdentityLinkCode.attempts))).scalar_one() == 5


async def set_waiting(w: World, user: str) -> None:
    async with w.rt.sessions() as s, s.begin():
        await s.execute(
            update(Conversation)
            .where(Conversation.thread_key == user)
            .values(flow_state=code_state())
        )


async def test_an_expired_code_is_refused(world: World) -> None:
    w = world
    anna, _ = await email_customer(w)
    await w.request(ANNA)
    w.clock[0] += timedelta(minutes=16)
    assert await w.keys(w.code()) == ["link.expired"]
    assert await w.contact_of("email", ANNA) == anna


async def test_a_used_code_is_refused(world: World) -> None:
    w = world
    await w.request("bob@example.com")
    code = w.code()
    assert await w.keys(code) == ["link.linked"]
    await set_waiting(w, "tg-anna")
    assert await w.keys(code) == ["link.expired"]


async def test_a_new_request_replaces_the_old_code(world: World) -> None:
    w = world
    anna, _ = await email_customer(w)
    await w.request(ANNA)
    first = w.code()
    await w.request(ANNA)
    second = w.code()
    if first == second:  # one in a million
        pytest.skip("the same code twice")
    assert await w.keys(first) == ["link.wrong_code"]
    assert await w.contact_of("email", ANNA) == anna
    assert await w.keys(second) == ["link.linked"]
    async with w.rt.sessions() as s:
        q = select(OutboxMessage).where(OutboxMessage.thread_key.startswith("identity-link:"))
        bodies = [o.body["text"] for o in (await s.execute(q)).scalars()]
    assert len(bodies) == 2
    assert all(first not in b and second not in b and MASK in b for b in bodies)


async def test_a_replaced_mail_not_yet_sent_is_not_sent(world: World) -> None:
    w = world
    await w.rt.engine.handle(inbound("link email", user="tg-anna"))
    await w.rt.engine.handle(inbound(ANNA, user="tg-anna"))
    await w.rt.engine.handle(inbound("link email", user="tg-anna"))
    await w.rt.engine.handle(inbound(ANNA, user="tg-anna"))
    await w.rt.dispatcher.drain()
    assert len(w.mail.sent) == 1  # only the live code goes out
    async with w.rt.sessions() as s:
        statuses = (
            await s.execute(
                select(OutboxMessage.status)
                .where(OutboxMessage.channel == "email")
                .order_by(OutboxMessage.id)
            )
        ).scalars()
        assert list(statuses) == [OutboxStatus.FAILED, OutboxStatus.SENT]
    assert await w.keys(w.code()) == ["link.linked"]


async def test_at_most_three_codes_per_hour(world: World) -> None:
    w = world
    for _ in range(3):
        assert await w.request(ANNA) == ["link.code_sent"]
    assert await w.request(ANNA) == ["link.rate_limited", "link.ask_code"]
    assert len(w.mail.sent) == 3
    # the last code still works
    assert await w.keys(w.code()) == ["link.linked"]
    assert await w.request(ANNA) == ["link.rate_limited"]  # and there is none left
    assert await w.keys("123456") != ["link.wrong_code"]  # so this is no code entry
    w.clock[0] += timedelta(minutes=61)
    assert await w.request(ANNA) == ["link.code_sent"]
    assert len(w.mail.sent) == 4


async def test_one_address_gets_a_limited_number_of_mails(world: World) -> None:
    w = world
    sent = [await w.request(ANNA, f"tg-{n}") for n in range(6)]
    assert sent == [["link.code_sent"]] * 5 + [["link.rate_limited"]]
    assert len(w.mail.sent) == 5


async def test_german_customer_gets_german_mail(world: World) -> None:
    w = world
    await w.rt.engine.handle(inbound("Hallo", user="tg-de", locale="de"))
    assert await w.keys("E-Mail verknüpfen", "tg-de") == ["link.ask_email"]
    assert await w.keys("keine adresse", "tg-de") == ["errors.email", "link.ask_email"]
    assert await w.keys("de@example.com", "tg-de") == ["link.code_sent"]
    assert w.mail.sent[-1].locale == "de"
    assert "Code" in w.mail.sent[-1].text and "gültig" in w.mail.sent[-1].text


async def test_the_sent_mail_keeps_no_code_in_the_outbox(world: World) -> None:
    """A code that simply expires unused leaves no clear copy behind in the outbox."""
    w = world
    await w.request(ANNA)
    code = w.code()  # it was sent in clear
    async with w.rt.sessions() as s:
        bodies = list(
            (
                await s.execute(select(OutboxMessage.body).where(OutboxMessage.channel == "email"))
            ).scalars()
        )
    assert bodies and all(code not in str(b) for b in bodies)
    assert all("masked_text" not in b and "••••••" in b["text"] for b in bodies)


def test_linking_is_offered_only_with_an_email_channel(sqlite_url: str) -> None:
    assert flow_options(make_settings(sqlite_url, email=MAIL)).email_linking
    assert not flow_options(make_settings(sqlite_url)).email_linking  # config.yaml: no mail


async def test_the_limits_come_from_the_configuration(db_url: str) -> None:
    settings = make_settings(db_url, identity_link={"code_minutes": 2, "max_attempts": 1})
    rt = Runtime(settings, channels=[])
    assert rt.engine.actions.links.limits.code_minutes == 2
    assert rt.engine.actions.links.limits.max_attempts == 1
    assert rt.engine.actions.links.limits.codes_per_identity_hour == 3  # the default
    await rt.db.dispose()


# ---- an imported customer record holds the address only in its profile -------------------


async def imported(w: World, external_id: str, email: str) -> int:
    """A contact as `cicbot import contacts` makes it (a crm identity), with one order."""
    async with w.rt.sessions() as s, s.begin():
        identity = await queries.create_contact_with_identity(
            s, "crm", external_id, name="Anna Import", locale="de", source="import"
        )
        contact = await s.get(Contact, identity.contact_id)
        assert contact is not None
        contact.email = email
        s.add(
            Order(
                external_id=f"order-{external_id}",
                contact_id=contact.id,
                amount_cents=12_900,
                ordered_at=w.clock[0] - timedelta(days=30),
            )
        )
        return contact.id


async def test_the_imported_record_with_that_address_is_merged(world: World) -> None:
    w = world
    record = await imported(w, "K-1001", "Anna@Example.com")
    assert await w.keys("hello") == ["menu.greeting"]
    chat_contact = await w.contact_of("test", "tg-anna")
    assert await w.request(ANNA) == ["link.code_sent"]
    assert await w.contact_of("crm", "K-1001") == record  # a claim links nothing
    assert await w.keys(w.code()) == ["link.linked"]
    assert await w.contact_of("email", ANNA) == chat_contact
    assert await w.contact_of("crm", "K-1001") == chat_contact  # the record is this customer
    async with w.rt.sessions() as s:
        assert await s.get(Contact, record) is None
        order = (await s.execute(select(Order))).scalar_one()
        assert order.contact_id == chat_contact
        audits = [
            p
            for p in (
                await s.execute(
                    select(Touchpoint.payload).where(Touchpoint.kind == "identity_linked")
                )
            ).scalars()
        ]
    assert {a["merged_contact_id"] for a in audits} == {record}


async def test_two_records_with_that_address_are_left_to_a_person(world: World) -> None:
    w = world
    first, second = await imported(w, "K-1", ANNA), await imported(w, "K-2", ANNA)
    await w.say("hello")
    chat_contact = await w.contact_of("test", "tg-anna")
    await w.request(ANNA)
    assert await w.keys(w.code()) == ["link.linked"]  # the address is linked, nothing merged
    assert await w.contact_of("email", ANNA) == chat_contact
    assert {await w.contact_of("crm", "K-1"), await w.contact_of("crm", "K-2")} == {first, second}
    async with w.rt.sessions() as s:
        notes = (
            await s.execute(select(Touchpoint.payload).where(Touchpoint.kind == "link_ambiguous"))
        ).scalars()
        assert [n["contact_ids"] for n in notes] == [[first, second]]


async def guess(w: World, user: str, n: int = 5) -> list[list[str]]:
    """`user` asks for a code to Anna's address and types `n` wrong ones."""
    assert await w.request(ANNA, user) == ["link.code_sent"]
    wrong = f"{(int(w.code()) + 1) % 10**6:06d}"
    return [await w.keys(wrong, user) for _ in range(n)]


async def test_an_address_is_locked_after_100_wrong_codes_across_identities(
    world: World,
) -> None:
    """NIST SP 800-63B 5.2.2: at most 100 failed attempts on one account. Rotating chat
    identities gets around the per-code and per-identity limits, not this one: the 100th
    wrong code for the address locks it for linking, whoever typed them, until a person
    unlocks it."""
    from bot import identity_link

    w = world
    anna, _ = await email_customer(w)
    # four hours at the hourly mail limit of the address: 4 x 5 identities x 5 guesses
    for hour in range(4):
        w.clock[0] += timedelta(minutes=61)
        for i in range(5 if hour < 3 else 1):
            answers = await guess(w, f"att-{hour}-{i}")
            assert answers == [["link.wrong_code"]] * 4 + [["link.code_dead"]]
    # 80 wrong so far; the owner asks for a code meanwhile
    w.clock[0] += timedelta(minutes=61)
    assert await w.request(ANNA, "tg-anna") == ["link.code_sent"]
    owners = w.code()
    for i in range(3):
        await guess(w, f"att-last-{i}")
    answers = await guess(w, "att-last-3")
    assert answers == [["link.wrong_code"]] * 4 + [["link.locked"]]  # the 100th
    # locked: the owner's live code no longer links, and no new code is mailed to anyone
    assert await w.keys(owners, "tg-anna") == ["link.locked"]
    sent = len(w.mail.sent)
    w.clock[0] += timedelta(days=30)  # no time window: it stays locked
    assert await w.request(ANNA, "tg-anna") == ["link.locked"]
    assert await w.request(ANNA, "someone-new") == ["link.locked"]
    assert len(w.mail.sent) == sent
    assert await w.contact_of("email", ANNA) == anna
    async with w.rt.sessions() as s:
        [locked] = await identity_link.locked_addresses(s)
    assert (locked.email, locked.failures) == (ANNA, 100)
    # another address is not affected
    assert await w.request("ben@example.com", "tg-ben") == ["link.code_sent"]

    # a person checked it is Anna's and unlocks it: she links it
    async with w.rt.sessions() as s, s.begin():
        assert await identity_link.unlock(s, ANNA.upper(), actor="agent:7")
        assert not await identity_link.unlock(s, ANNA, actor="agent:7")  # not locked any more
    assert await w.request(ANNA, "tg-anna") == ["link.code_sent"]
    assert await w.keys(w.code(), "tg-anna") == ["link.linked"]
    async with w.rt.sessions() as s:
        assert await identity_link.locked_addresses(s) == []


async def test_a_verified_link_resets_the_count_of_wrong_codes(world: World) -> None:
    """The cap counts wrong codes in a row (NIST: consecutive): the owner's link ends a
    series, so old guesses do not add up to lock the address later."""
    from storage.models import IdentityLinkAddress

    w = world
    await guess(w, "att-1", 3)
    assert await w.request(ANNA, "tg-anna") == ["link.code_sent"]
    assert await w.keys(w.code(), "tg-anna") == ["link.linked"]
    async with w.rt.sessions() as s:
        row = (await s.execute(select(IdentityLinkAddress))).scalar_one()
    assert (row.email, row.failures, row.locked_at) == (ANNA, 0, None)


def test_the_command_line_lists_and_unlocks(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession
    from typer.testing import CliRunner

    from bot.cli import app
    from storage.db import run_in_transaction
    from storage.models import IdentityLinkAddress
    from tests.conftest import ROOT

    async def lock(s: AsyncSession) -> None:
        s.add(IdentityLinkAddress(email=ANNA, failures=100, locked_at=datetime.now(UTC)))

    run_in_transaction(sqlite_url, lock)
    monkeypatch.setenv("CICBOT_CONFIG", str(ROOT / "config.yaml"))
    monkeypatch.setenv("CICBOT_DATABASE__URL", sqlite_url)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    r = runner.invoke(app, ["link", "locks"])
    assert r.exit_code == 0 and ANNA in r.output and "100" in r.output, r.output
    r = runner.invoke(app, ["link", "unlock", "Anna@Example.com", "--actor", "erika"])
    assert r.exit_code == 0 and "unlocked" in r.output, r.output
    r = runner.invoke(app, ["link", "unlock", ANNA])
    assert r.exit_code == 1 and "not locked" in r.output
    r = runner.invoke(app, ["link", "locks"])
    assert r.exit_code == 0 and "no locked addresses" in r.output
