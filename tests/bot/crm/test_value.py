"""Customer value: RFM quintiles, CLV, segments A/B/C and value × need classes, on SQLite
and PostgreSQL; the segment feeds the agent queue's priority."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from bot.config import CrmSettings
from bot.crm import value
from bot.runtime import Runtime
from storage.models import Contact, Conversation, Order, utcnow
from tests.conftest import inbound


def test_quintiles() -> None:
    assert value.quintiles([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert value.quintiles([10, 1], higher_is_better=False) == [1, 3]
    assert value.quintiles([5, 5, 5]) == [1, 1, 1]
    assert value.quintiles([]) == []


async def test_segments_from_orders(runtime: Runtime) -> None:
    now = utcnow()
    async with runtime.sessions() as s, s.begin():
        contacts = [Contact(name=f"c{i}", attributes={}) for i in range(11)]
        s.add_all(contacts)
        await s.flush()
        for i, c in enumerate(contacts[:10]):
            # customer i: i+1 orders of (i+1) * 10 €, the last one i*30 days ago
            for k in range(i + 1):
                s.add(
                    Order(
                        external_id=f"O{i}-{k}",
                        contact_id=c.id,
                        amount_cents=(i + 1) * 1000,
                        ordered_at=now - timedelta(days=i * 30 + k),
                    )
                )
        s.add(
            Order(
                external_id="old",
                contact_id=contacts[10].id,
                amount_cents=10**6,
                ordered_at=now - timedelta(days=2000),
            )
        )  # outside the window
        contacts[10].value_segment = "A"  # stale
        ids = [c.id for c in contacts]
    async with runtime.sessions() as s, s.begin():
        result = await value.recompute(s, CrmSettings(), now=now)
    assert result["customers_with_orders"] == 10
    assert (result["segment_A"], result["segment_B"], result["segment_C"]) == (2, 3, 6)
    async with runtime.sessions() as s:
        rows = {c.id: c for c in (await s.execute(select(Contact))).scalars()}
    segs = [rows[i].value_segment for i in ids]
    assert segs[10] == "C" and rows[ids[10]].attributes["value"]["orders"] == 0
    assert segs.count("A") == 2 and segs.count("B") == 3
    best = rows[ids[9]].attributes["value"]
    assert best["f"] == 5 and best["m"] == 5 and best["clv_cents"] > 0
    assert best["class"] in value.CLASSES.values()
    # unchanged data: nothing changes on a second run
    async with runtime.sessions() as s, s.begin():
        assert (await value.recompute(s, CrmSettings(), now=now))["changed"] == 0


async def test_high_need_and_queue_priority(runtime: Runtime) -> None:
    settings = CrmSettings(service_need_contacts=2)
    for t in ("hello", "human"):
        await runtime.engine.handle(inbound(t, user="vip"))
    async with runtime.sessions() as s, s.begin():
        conv = (await s.execute(select(Conversation))).scalar_one()
        plain_priority = conv.priority
        conv.status, conv.priority = "closed", 0
        s.add(
            Order(
                external_id="V1",
                contact_id=conv.contact_id,
                amount_cents=99_900,
                ordered_at=utcnow() - timedelta(days=3),
            )
        )
    async with runtime.sessions() as s, s.begin():
        await value.recompute(s, settings)
    async with runtime.sessions() as s:
        contact = (await s.execute(select(Contact))).scalar_one()
    assert contact.value_segment == "A"
    assert contact.attributes["value"]["class"] == "high_value_high_need"
    await runtime.engine.handle(inbound("human", user="vip"))
    async with runtime.sessions() as s:
        conv = (
            await s.execute(select(Conversation).where(Conversation.status == "queued"))
        ).scalar_one()
    assert conv.priority > plain_priority  # segment A is served first
