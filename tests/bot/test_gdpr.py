"""GDPR export and erasure (no personal value left anywhere), on SQLite and PostgreSQL;
merging contacts keeps every touchpoint, case and consent. Retention: test_retention.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select, text

from bot import gdpr
from bot.history import merge_contacts
from bot.runtime import Runtime
from storage import queries
from storage.models import (
    Case,
    Consent,
    Contact,
    DeadLetter,
    IdentityLinkAddress,
    IdentityLinkCode,
    InboxStatus,
    InboxUpdate,
    Order,
    SurveyAnswer,
    Touchpoint,
    utcnow,
)
from tests.conftest import RecordingChannel, inbound, make_settings

USER = "tg-777123"
NAME = "Zephyrine Quxworth"
EMAIL = "zephyrine.q@example.org"
PHONE = "+49 170 5550199"
SECRET = "Parcel for Zephyrine soaked at Blumenweg 17"
COMPLAINT = ["complaint", "1", SECRET, "ORD-99881", "1", "2", "yes"]
PERSONAL = [USER, "Zephyrine", "Quxworth", EMAIL, "5550199", "Blumenweg", "ORD-99881"]


async def _customer(rt: Runtime, user: str = USER, name: str = NAME) -> int:
    """A customer with a complaint, messages, profile, order, ratings, consent and a raw
    platform update; another customer gets other values (the first name swapped in)."""
    first = name.split()[0]
    email = EMAIL.replace("zephyrine", first.lower())
    complaint = [t.replace("Zephyrine", first).replace("99881", user) for t in COMPLAINT]
    if user != USER:
        complaint = [t.replace("Blumenweg", "Hauptstr.") for t in complaint]
    for t in complaint:
        await rt.engine.handle(inbound(t, user=user, sender_name=name, raw={"from": user}))
    await rt.engine.handle(inbound(f"my email is {email}", user=user, sender_name=name))
    await rt.dispatcher.drain()
    async with rt.sessions() as s, s.begin():
        contact = await queries.find_contact(s, f"test:{user}")
        assert contact is not None
        contact.email, contact.phone = email, PHONE.replace("0199", str(len(user)))
        contact.attributes = {"shop_customer": user, "note": name}
        s.add(
            Order(
                external_id=f"O-{len(user)}-{len(name)}",
                contact_id=contact.id,
                amount_cents=1999,
                ordered_at=utcnow(),
            )
        )
        s.add(SurveyAnswer(contact_id=contact.id, survey="csat", question="rating", answer="4"))
        s.add(
            SurveyAnswer(
                contact_id=contact.id, survey="csat", question="comment", answer=f"thanks, {name}"
            )
        )
        await queries.add_consent(
            s,
            contact_id=contact.id,
            purpose="marketing",
            channel="test",
            granted=True,
            source=f"test:{user}",
            text_shown="OK?",
        )
        s.add(
            InboxUpdate(
                channel="test",
                dedupe_key=f"d-{user}",
                partition_key=user,
                payload={"message": {"from": {"id": user, "first_name": name}}},
                status=InboxStatus.DONE,
            )
        )
        identity = await queries.get_identity(s, "test", user)
        assert identity is not None
        s.add(
            DeadLetter(
                source="engine",
                channel="test",
                reference=f"m-{user}",
                contact_id=contact.id,
                error=f"ValueError: {name}",
                payload={"text": f"{name} wrote this"},
            )
        )
        s.add(
            IdentityLinkCode(
                contact_id=contact.id,
                identity_id=identity.id,
                email=email,
                code_hash="0" * 64,
                expires_at=utcnow(),
            )
        )
        guard = select(IdentityLinkAddress.id).where(IdentityLinkAddress.email == email)
        if await s.scalar(guard) is None:  # (two customers may share a first name)
            s.add(IdentityLinkAddress(email=email, failures=2))  # wrong codes typed for it
        return contact.id


async def _scan(rt: Runtime, needles: list[str]) -> list[str]:
    """Every text/JSON value of every table that contains one of the needles."""
    hits = []
    async with rt.sessions() as s:
        for table, column in gdpr.text_columns():
            rows = (await s.execute(text(f'SELECT "{column}" FROM "{table}"'))).scalars().all()
            for value in rows:
                blob = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                for needle in needles:
                    if blob and needle.lower() in blob.lower():
                        hits.append(f"{table}.{column}: {needle}")
    return hits


async def test_export_has_everything(runtime: Runtime) -> None:
    cid = await _customer(runtime)
    async with runtime.sessions() as s:
        doc = await gdpr.export(s, cid)
    json.dumps(doc)  # serialisable
    assert doc["profile"]["email"] == EMAIL and doc["profile"]["name"] == NAME
    assert [i["external_id"] for i in doc["identities"]] == [USER]
    assert doc["consents"][0]["granted"] is True
    assert any(t["text"] == SECRET for t in doc["touchpoints"])
    assert doc["cases"][0]["description"] == SECRET
    assert {a["question"] for a in doc["survey_answers"]} >= {"rating", "comment"}
    assert doc["orders"][0]["amount_cents"] == 1999
    assert doc["dead_letters"][0]["payload"]["text"] == f"{NAME} wrote this"
    assert [(a["email"], a["failures"]) for a in doc["link_addresses"]] == [(EMAIL, 2)]
    async with runtime.sessions() as s:
        with pytest.raises(gdpr.GdprError):
            await gdpr.export(s, 999_999)


async def test_erase_leaves_no_personal_value_anywhere(runtime: Runtime) -> None:
    cid = await _customer(runtime)
    other = await _customer(runtime, user="u-other", name="Bertram Keep")
    assert len(await _scan(runtime, PERSONAL)) > 10  # the scan does find them before
    async with runtime.sessions() as s:
        before = await s.scalar(select(func.count()).select_from(Touchpoint))
    async with runtime.sessions() as s, s.begin():
        result = await gdpr.erase(s, cid, actor="agent:1")
    assert result["counts"]["touchpoints"] > 0
    assert await _scan(runtime, PERSONAL) == []
    async with runtime.sessions() as s:
        # aggregates kept: every touchpoint (plus the erasure record), the case, the rating
        assert await s.scalar(select(func.count()).select_from(Touchpoint)) == before + 1
        case = (await s.execute(select(Case).where(Case.contact_id == cid))).scalar_one()
        assert case.category == "delivery" and case.description == gdpr.ERASED
        rating = await s.scalar(
            select(SurveyAnswer.answer).where(
                SurveyAnswer.contact_id == cid, SurveyAnswer.question == "rating"
            )
        )
        assert rating == "4"
        assert await s.scalar(select(Order.amount_cents).where(Order.contact_id == cid)) == 1999
        record = await s.execute(select(Touchpoint).where(Touchpoint.kind == "gdpr_erased"))
        assert record.scalar_one().actor == "agent:1"
        # the other customer is untouched
        kept = await s.get(Contact, other)
        assert kept is not None and kept.name == "Bertram Keep"
        assert await s.scalar(select(func.count()).select_from(InboxUpdate)) == 1  # the other's
    # the same person writing again is a new, unknown contact
    await runtime.engine.handle(inbound("hello", user=USER))
    async with runtime.sessions() as s:
        again = await queries.find_contact(s, f"test:{USER}")
        assert again is not None and again.id != cid
    async with runtime.sessions() as s, s.begin():
        await gdpr.erase(s, cid, actor="agent:1")  # idempotent


async def _counts(rt: Runtime, cid: int) -> dict[str, int]:
    out: dict[str, Any] = {}
    async with rt.sessions() as s:
        for model in (Touchpoint, Case, Consent, SurveyAnswer, Order):
            out[model.__name__] = await s.scalar(
                select(func.count()).select_from(model).where(model.contact_id == cid)
            )
    return out


async def test_merge_keeps_every_touchpoint_case_and_consent(runtime: Runtime) -> None:
    a = await _customer(runtime, user="web-anna", name="Anna")
    async with runtime.sessions() as s, s.begin():
        s.add(Order(external_id="O-2", contact_id=a, amount_cents=500, ordered_at=utcnow()))
    a_ids = set(await _ids(runtime, a))
    b = await _customer(runtime, user="tg-anna", name="Anna B")
    b_ids = set(await _ids(runtime, b))
    ca, cb = await _counts(runtime, a), await _counts(runtime, b)
    async with runtime.sessions() as s, s.begin():
        result = await merge_contacts(s, a, b, actor="agent:7", reason="same customer")
    assert result["moved"]["touchpoints"] == cb["Touchpoint"]
    merged = await _counts(runtime, a)
    assert merged["Touchpoint"] == ca["Touchpoint"] + cb["Touchpoint"] + 1  # + the audit
    for k in ("Case", "Consent", "SurveyAnswer", "Order"):
        assert merged[k] == ca[k] + cb[k]
    assert a_ids | b_ids < set(await _ids(runtime, a))
    async with runtime.sessions() as s:
        assert await s.get(Contact, b) is None
        assert {i.external_id for i in await queries.identities_of(s, a)} == {"web-anna", "tg-anna"}
        audit = (
            await s.execute(select(Touchpoint).where(Touchpoint.kind == "contacts_merged"))
        ).scalar_one()
        assert audit.actor == "agent:7" and audit.payload["merged_contact_id"] == b
    # the customer on the second channel now lands on the kept contact
    await runtime.engine.handle(inbound("status", user="tg-anna"))
    async with runtime.sessions() as s:
        found = await queries.find_contact(s, "test:tg-anna")
        assert found is not None and found.id == a


async def _ids(rt: Runtime, cid: int) -> list[int]:
    async with rt.sessions() as s:
        return list(
            (await s.execute(select(Touchpoint.id).where(Touchpoint.contact_id == cid)))
            .scalars()
            .all()
        )


async def test_merge_refuses_nonsense(runtime: Runtime) -> None:
    await runtime.engine.handle(inbound("hi"))
    async with runtime.sessions() as s, s.begin():
        c = await queries.find_contact(s, "test:u1")
        assert c is not None
        from bot.history import MergeError

        with pytest.raises(MergeError):
            await merge_contacts(s, c.id, c.id, actor="x", reason="")
        with pytest.raises(MergeError):
            await merge_contacts(s, c.id, 424242, actor="x", reason="")


@pytest.fixture
async def mailing(db_url: str) -> AsyncIterator[Runtime]:
    """A runtime configured with an email channel (so codes can be mailed); not started."""
    mail = {"address": "service@example.com", "smtp": {"host": "127.0.0.1"}}
    rt = Runtime(make_settings(db_url, email=mail), channels=[])
    rt.channels["test"] = RecordingChannel()
    await rt.start(dispatch=False)
    yield rt
    await rt.stop()


async def test_erase_removes_a_verification_mail_to_a_claimed_address(mailing: Runtime) -> None:
    runtime, claimed = mailing, "claimed.only@example.net"
    await runtime.engine.handle(inbound("link my email", user="claimer"))
    await runtime.engine.handle(inbound(claimed, user="claimer"))
    found = await _scan(runtime, [claimed])
    assert {"identity_link_codes.email: " + claimed, "outbox.recipient_id: " + claimed} <= set(
        found
    ), found  # the code's row and its mail in the outbox
    async with runtime.sessions() as s, s.begin():
        contact = await queries.find_contact(s, "test:claimer")
        assert contact is not None
        await gdpr.erase(s, contact.id, actor="agent:1")
    assert await _scan(runtime, [claimed]) == []


async def test_erase_pseudonymises_the_shops_order_number(runtime: Runtime) -> None:
    """The shop's order number finds the person in the shop again: erased with them; the
    amount and time stay for the figures."""
    cid = await _customer(runtime)
    async with runtime.sessions() as s, s.begin():
        s.add(
            Order(
                external_id="WEB-2026-48151623",
                contact_id=cid,
                amount_cents=4999,
                ordered_at=utcnow(),
            )
        )
    async with runtime.sessions() as s, s.begin():
        await gdpr.erase(s, cid, actor="agent:1")
    assert await _scan(runtime, ["48151623"]) == []
    async with runtime.sessions() as s:
        orders = (await s.execute(select(Order).where(Order.contact_id == cid))).scalars().all()
    assert sorted(o.amount_cents for o in orders) == [1999, 4999]
    assert all(o.external_id == f"erased:{o.id}" for o in orders)
