"""The engine end to end on SQLite and PostgreSQL: one transaction per message."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select, update

from bot.conversation.engine import Engine, HandleResult
from bot.runtime import Runtime
from storage.models import (
    Case,
    Consent,
    Contact,
    Conversation,
    Direction,
    Identity,
    OutboxMessage,
    OutboxStatus,
    Touchpoint,
)
from tests.conftest import RecordingChannel, inbound, make_settings, recorder

COMPLAINT = ["complaint", "1", "The parcel arrived soaking wet and torn.", "skip", "1", "2", "yes"]


async def count(rt: Runtime, model: type, *where: object) -> int:
    async with rt.sessions() as s:
        q = select(func.count()).select_from(model)
        for w in where:
            q = q.where(w)  # type: ignore[arg-type]
        return int(await s.scalar(q) or 0)


async def history(rt: Runtime, user: str = "u1") -> list[tuple[str, str, str]]:
    async with rt.sessions() as s:
        rows = (await s.execute(select(Touchpoint).order_by(Touchpoint.id))).scalars().all()
    return [(t.direction, t.kind, t.text or "") for t in rows]


async def test_complaint_end_to_end(runtime: Runtime) -> None:
    for text in COMPLAINT:
        await runtime.engine.handle(inbound(text))
    await runtime.dispatcher.drain()
    texts = recorder(runtime).texts()
    ref = re.search(r"C-\d{4}-\d{6}", texts[-1])
    assert ref, texts[-1]
    async with runtime.sessions() as s:
        case = (await s.execute(select(Case))).scalar_one()
    assert case.reference == ref.group(0)
    assert (case.category, case.severity, case.desired_resolution) == (
        "delivery",
        "low",
        "replacement",
    )
    assert case.order_reference is None and case.status == "new"
    assert case.sla_due_at is not None and case.sla_due_at > case.created_at
    # the history has every message in and out, in order
    rows = await history(runtime)
    assert [t for d, _, t in rows if d == "in"] == COMPLAINT
    assert [t for d, k, t in rows if d == "out"] == texts
    assert ("internal", "case_opened", "") in rows
    # nothing left in the outbox
    assert await count(runtime, OutboxMessage, OutboxMessage.status != OutboxStatus.SENT) == 0


async def test_same_platform_id_twice_one_touchpoint_one_reply(runtime: Runtime) -> None:
    msg = inbound("hello", mid="tg-42")
    first = await runtime.engine.handle(msg)
    second = await runtime.engine.handle(msg)
    assert not first.duplicate and second.duplicate and second.outbox_ids == []
    await runtime.dispatcher.drain()
    assert len(recorder(runtime).sent) == 1
    assert await count(runtime, Touchpoint, Touchpoint.direction == Direction.IN) == 1


async def test_concurrent_redelivery_one_reply(runtime: Runtime) -> None:
    msg = inbound("hello", mid="slack-retry-1")
    results = await asyncio.gather(*(runtime.engine.handle(msg) for _ in range(5)))
    assert sum(not r.duplicate for r in results) == 1
    await runtime.dispatcher.drain()
    assert len(recorder(runtime).sent) == 1


async def test_redelivery_to_second_worker_is_deduped(db_url: str) -> None:
    """Two processes' engines (separate pools) get the same platform message."""
    a, b = Runtime(make_settings(db_url), channels=[]), Runtime(make_settings(db_url), channels=[])
    try:
        msg = inbound("hello", mid="webhook-retry-7")
        results = await asyncio.gather(a.engine.handle(msg), b.engine.handle(msg))
        assert sorted(r.duplicate for r in results) == [False, True]
        assert await count(a, OutboxMessage) == 1
    finally:
        await a.stop()
        await b.stop()


async def test_fifty_messages_at_once_in_order(runtime: Runtime) -> None:
    messages = COMPLAINT + [f"note {i}" for i in range(50 - len(COMPLAINT))]
    batch = [inbound(t, user="burst") for t in messages]
    await asyncio.gather(*(runtime.engine.handle(m) for m in batch))
    rows = await history(runtime)
    assert [t for d, _, t in rows if d == "in"] == messages  # handled in arrival order
    assert await count(runtime, Case) == 1  # the flow saw its answers in order
    assert await count(runtime, Conversation) == 1
    # each message's replies directly follow it: one transaction per message
    seen_in = 0
    for d, _, t in rows:
        if d == "in":
            assert t == messages[seen_in]
            seen_in += 1
    async with runtime.sessions() as s:
        conv = (await s.execute(select(Conversation))).scalar_one()
    assert conv.flow_state.get("flow") is None


async def test_two_workers_same_customer_serialized(db_url: str) -> None:
    """Messages of one customer split across two engines keep the flow consistent."""
    a, b = Runtime(make_settings(db_url), channels=[]), Runtime(make_settings(db_url), channels=[])
    try:
        await a.engine.handle(inbound("complaint", user="w"))
        # every answer is sent to both workers at once (a platform redelivering to another
        # worker): exactly one of each pair is processed, in order
        for text in COMPLAINT[1:]:
            m = inbound(text, user="w")
            results = await asyncio.gather(a.engine.handle(m), b.engine.handle(m))
            assert sorted(r.duplicate for r in results) == [False, True]
        assert await count(a, Case) == 1
        assert await count(a, Touchpoint, Touchpoint.direction == Direction.IN) == len(COMPLAINT)
    finally:
        await a.stop()
        await b.stop()


async def test_bad_input_gets_clear_reply_nothing_lost(runtime: Runtime) -> None:
    big = "x" * 100_000
    # a customer each: misses in a row would otherwise (rightly) hand over to a human
    cases = {
        "empty": inbound("", user="b1"),
        "big": inbound(big, user="b2"),
        "control": inbound("hel\x00lo\x07\x1b[31m", user="b3"),
        "emoji": inbound("😀🙈👍🏽", user="b4"),
        "unknown_button": inbound("", payload="f:nosuchflow:step:value", user="b5"),
        "junk_payload": inbound("", payload="\x00" * 50, user="b6"),
    }
    for name, msg in cases.items():
        result = await runtime.engine.handle(msg)
        assert result.replies, f"{name}: no reply"
    await runtime.dispatcher.drain()
    texts = recorder(runtime).texts()
    assert any("didn't receive any text" in t for t in texts)
    assert any("don't know that button" in t for t in texts)
    async with runtime.sessions() as s:
        stored = (
            (
                await s.execute(
                    select(Touchpoint.text)
                    .where(Touchpoint.direction == Direction.IN)
                    .order_by(Touchpoint.id)
                )
            )
            .scalars()
            .all()
        )
    assert stored[1] == big  # kept whole
    assert "\x00" not in stored[2] and "\x1b" not in stored[2]
    assert stored[3] == "😀🙈👍🏽"
    assert len(stored) == len(cases)


async def test_bad_input_inside_a_flow_reprompts(runtime: Runtime) -> None:
    for text in ["complaint", "1", ""]:
        await runtime.engine.handle(inbound(text))
    await runtime.dispatcher.drain()
    texts = recorder(runtime).texts()
    assert texts[-2] == "Please answer with a short text."
    assert texts[-1] == "Please describe what happened."


async def test_locale_from_hint_and_switch(runtime: Runtime) -> None:
    await runtime.engine.handle(inbound("hallo", user="de1", locale="de-AT"))
    await runtime.engine.handle(inbound("language en", user="de1", locale="de-AT"))
    await runtime.engine.handle(inbound("menu", user="de1", locale="de-AT"))
    await runtime.dispatcher.drain()
    texts = recorder(runtime).texts()
    assert texts[0].startswith("Hallo")
    assert texts[1] == "Okay, I'll continue in English."
    assert texts[2].startswith("Hello")


async def test_human_request_queues_conversation(runtime: Runtime) -> None:
    await runtime.engine.handle(inbound("Mensch", locale="de"))
    await runtime.engine.handle(inbound("noch da?", locale="de"))
    await runtime.engine.handle(inbound("hallo?", locale="de"))
    async with runtime.sessions() as s:
        conv = (await s.execute(select(Conversation))).scalar_one()
    assert conv.status == "queued" and conv.priority > 0 and conv.queued_at is not None
    await runtime.dispatcher.drain()
    # an honest hand-over message, one acknowledgement while waiting, then silence
    assert len(recorder(runtime).sent) == 2


async def test_opt_out_and_opt_in_store_evidence(runtime: Runtime) -> None:
    await runtime.engine.handle(inbound("start"))
    await runtime.engine.handle(inbound("yes"))
    await runtime.engine.handle(inbound("STOP"))
    async with runtime.sessions() as s:
        rows = (await s.execute(select(Consent).order_by(Consent.id))).scalars().all()
    assert [(c.purpose, c.granted) for c in rows] == [("marketing", True), ("marketing", False)]
    assert "news and offers" in (rows[0].text_shown or "")
    assert rows[0].channel == "test"


async def test_case_status_only_for_own_cases(runtime: Runtime) -> None:
    for text in COMPLAINT:
        await runtime.engine.handle(inbound(text, user="owner"))
    await runtime.dispatcher.drain()
    ref = re.search(r"C-\d{4}-\d{6}", recorder(runtime).texts()[-1]).group(0)  # type: ignore[union-attr]
    await runtime.engine.handle(inbound(f"status {ref}", user="owner"))
    await runtime.engine.handle(inbound(f"status {ref}", user="stranger"))
    await runtime.dispatcher.drain()
    mine, theirs = recorder(runtime).texts("owner")[-1], recorder(runtime).texts("stranger")[-1]
    assert ref in mine and "received, not yet processed" in mine
    assert "couldn't find" in theirs and "delivery" not in theirs.lower()


async def test_proactive_csat_survey_records_answers(runtime: Runtime) -> None:
    from storage.models import SurveyAnswer

    for text in COMPLAINT:
        await runtime.engine.handle(inbound(text, user="c"))
    await runtime.dispatcher.drain()
    ref = re.search(r"C-\d{4}-\d{6}", recorder(runtime).texts()[-1]).group(0)  # type: ignore[union-attr]
    started = await runtime.engine.start_flow("test", "c", "csat", extra={"case_reference": ref})
    assert started is not None and "resolved" in started.replies[0]
    # a second campaign while the survey runs does not interrupt it
    assert await runtime.engine.start_flow("test", "c", "winback") is None
    await runtime.engine.handle(inbound("4", user="c"))
    await runtime.engine.handle(inbound("Quick and friendly, thanks", user="c"))
    async with runtime.sessions() as s:
        answers = (await s.execute(select(SurveyAnswer).order_by(SurveyAnswer.id))).scalars().all()
        case = (await s.execute(select(Case))).scalar_one()
    assert [(a.survey, a.question, a.answer) for a in answers] == [
        ("csat", "rating", "4"),
        ("csat", "comment", "Quick and friendly, thanks"),
    ]
    assert all(a.case_id == case.id for a in answers)


async def test_proactive_winback_changes_lifecycle(runtime: Runtime) -> None:
    from storage.models import Contact

    await runtime.engine.handle(inbound("hallo", user="w", locale="de"))
    assert await runtime.engine.start_flow("test", "w", "winback") is not None
    for text in ["Der Preis", "2", "günstiger", "nein"]:
        await runtime.engine.handle(inbound(text, user="w", locale="de"))
    async with runtime.sessions() as s:
        contact = (await s.execute(select(Contact))).scalar_one()
    assert contact.lifecycle_phase == "lost"
    await runtime.dispatcher.drain()
    assert "20 %" in " ".join(recorder(runtime).texts())  # the price offer from config.yaml


async def test_outside_business_hours_the_customer_is_told_when(db_url: str) -> None:
    from datetime import UTC, datetime

    sunday = datetime(2026, 11, 22, 15, 0, tzinfo=UTC)
    settings = make_settings(
        db_url, business_hours={"timezone": "Europe/Berlin", "weekly": {"mon": ["08:00-18:00"]}}
    )
    rt = Runtime(settings, channels=[], clock=lambda: sunday)
    rt.channels["test"] = ch = RecordingChannel()
    try:
        await rt.engine.handle(inbound("human", locale="de"))
        await rt.dispatcher.drain()
        assert ch.texts()[0].startswith("Ich übergebe Sie")
        assert ch.texts()[1].endswith("Ihre Nachrichten bleiben bis dahin erhalten.")
        assert "23.11.2026, 08:00 Uhr" in ch.texts()[1]
    finally:
        await rt.stop()


async def test_out_of_hours_the_case_promise_and_the_team_agree(db_url: str) -> None:
    # regression (issue 20, finding 2): on a Saturday "Wir melden uns spätestens bis
    # 06.12.2026, 07:35 Uhr" (a Sunday) was followed by "Unser Team ist gerade nicht im
    # Dienst … ab 07.12.2026, 08:00 Uhr"; the due time counts business hours, and the
    # case (what the agents' case panel shows) keeps the same time
    from datetime import UTC, datetime

    saturday = datetime(2026, 12, 5, 6, 35, tzinfo=UTC)  # 07:35 in Berlin
    week = {d: ["08:00-18:00"] for d in ("mon", "tue", "wed", "thu", "fri")}
    settings = make_settings(db_url, business_hours={"timezone": "Europe/Berlin", "weekly": week})
    rt = Runtime(settings, channels=[], clock=lambda: saturday)
    rt.channels["test"] = ch = RecordingChannel()
    high = ["complaint", "1", "The parcel arrived soaking wet and torn.", "skip", "3", "2", "ja"]
    try:
        await rt.engine.handle(inbound("Sprache Deutsch"))
        for text in high:
            await rt.engine.handle(inbound(text))
        await rt.dispatcher.drain()
        opened, priority, outside = ch.texts()[-3:]
        # high: 8 business hours from Monday 08:00 = Monday 16:00
        assert "07.12.2026, 16:00 Uhr" in opened and "06.12.2026" not in opened
        assert priority.startswith("Weil es für Sie dringend ist")
        assert "ab 07.12.2026, 08:00 Uhr" in outside
        async with rt.sessions() as s:
            case = (await s.execute(select(Case))).scalar_one()
        assert case.sla_due_at == datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
    finally:
        await rt.stop()


async def test_nul_in_sender_name_is_stored_safely(runtime: Runtime) -> None:
    # regression: PostgreSQL refuses NUL; a platform's display name must not break the insert
    result = await runtime.engine.handle(inbound("hello", user="nul", sender_name="Ma\x00x"))
    assert result.replies
    from storage.models import Contact

    async with runtime.sessions() as s:
        contact = (await s.execute(select(Contact))).scalar_one()
    assert contact.name == "Ma\ufffdx"


# a turn of each kind: a new customer (the ORM's way), self-service misses and an answer
# (plain turns with notes), a text longer than a flow reads, a whole complaint (plain
# turns, the case opened the ORM's way), a button, the hand-over and a message to the queue
# (the ORM's way: observers, status changes)
MIXED = [
    ("hello", None),
    ("How long does delivery take?", None),
    ("x" * 5000, None),
    *[(t, None) for t in COMPLAINT],
    ("menu", None),
    (None, "c:status"),
    ("qwertyuiop zxcv", None),
    ("I want to talk to a human", None),
    ("still there?", None),
]


async def _mixed(rt: Runtime, user: str) -> list[Any]:
    results = []
    for text, payload in MIXED:
        results.append(await rt.engine.handle(inbound(text or "", user=user, payload=payload)))
    return results


async def _written(rt: Runtime, user: str) -> dict[str, Any]:
    """What a customer's turns wrote, without ids, times and the customer's name."""

    def plain(value: Any) -> Any:
        text = json.dumps(value, default=str).replace(user, "U")
        return json.loads(re.sub(r"C-\d{4}-\d{6}", "C-REF", text))  # the case's reference

    async with rt.sessions() as s:
        identity = (
            await s.execute(select(Identity).where(Identity.external_id == user))
        ).scalar_one()
        contact = await s.get(Contact, identity.contact_id)
        assert contact is not None
        convs = (
            await s.execute(select(Conversation).where(Conversation.contact_id == contact.id))
        ).scalars()
        points = (
            await s.execute(
                select(Touchpoint)
                .where(Touchpoint.contact_id == contact.id)
                .order_by(Touchpoint.id)
            )
        ).scalars()
        cases = (
            await s.execute(select(Case).where(Case.contact_id == contact.id).order_by(Case.id))
        ).scalars()
        outbox = (
            await s.execute(
                select(OutboxMessage)
                .where(OutboxMessage.identity_id == identity.id)
                .order_by(OutboxMessage.id)
            )
        ).scalars()
        return plain(
            {
                "seen": (identity.last_seen_at is not None, contact.last_contact_at is not None),
                "contact": (
                    contact.locale,
                    contact.lifecycle_phase,
                    contact.updated_at > contact.created_at,
                ),
                "conversations": [
                    (c.status, c.flow_state, c.priority, c.queued_at is not None) for c in convs
                ],
                "touchpoints": [
                    (t.direction, t.kind, t.actor, t.text, t.payload, t.outbox_id is not None)
                    for t in points
                ],
                "cases": [
                    (
                        c.reference,
                        c.category,
                        c.description,
                        c.order_reference,
                        c.severity,
                        c.desired_resolution,
                        c.status,
                        c.priority,
                        c.sla_due_at,
                        c.created_at,
                        c.updated_at > c.created_at,
                    )
                    for c in cases
                ],
                "outbox": [
                    (o.channel, o.recipient_id, o.thread_key, o.body, o.status) for o in outbox
                ],
            }
        )


async def test_plain_turns_write_what_the_orm_writes(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plain turn (Core statements, no ORM objects) is a shortcut, not a new behaviour:
    the same conversation through it and through the ORM's way leaves the same rows."""
    fixed = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)  # a Wednesday, the team in
    runtime.engine.clock = lambda: fixed
    plain_turns = 0
    original = Engine._plain_turn

    async def counted(self: Engine, *args: Any) -> HandleResult | None:
        nonlocal plain_turns
        result = await original(self, *args)
        plain_turns += result is not None
        return result

    monkeypatch.setattr(Engine, "_plain_turn", counted)
    with_plain = await _mixed(runtime, "cust-a")
    assert plain_turns == 11  # the shortcut served all but 4 turns (see MIXED)
    assert [r.status for r in with_plain][-2:] == ["queued", "queued"]
    written = await _written(runtime, "cust-a")
    async with runtime.sessions() as s, s.begin():  # out of the queue: the next is number 1
        await s.execute(update(Conversation).values(status="closed"))

    async def never(self: Engine, *args: Any) -> None:
        return None

    monkeypatch.setattr(Engine, "_plain_turn", never)
    with_orm = await _mixed(runtime, "cust-b")
    assert [(r.status, len(r.replies), len(r.outbox_ids)) for r in with_plain] == [
        (r.status, len(r.replies), len(r.outbox_ids)) for r in with_orm
    ]
    assert written == await _written(runtime, "cust-b")


async def test_plain_turn_sees_what_the_turn_before_left_unflushed(runtime: Runtime) -> None:
    """A plain turn after an ORM turn in the same transaction (the inbox's group commit):
    what the ORM left unflushed (the new conversation's flow state) is written before the
    plain turn reads the row."""
    async with runtime.sessions() as s, s.begin():
        # a new customer: the ORM's way; then a plain turn in the flow it started
        first = await runtime.engine.handle_in(s, inbound("complaint", user="g"))
        assert s.dirty  # the flow state, not yet written
        second = await runtime.engine.handle_in(s, inbound("1", user="g"))
    assert first.replies[-1].startswith("What is your complaint about?")
    assert second.replies == ["Please describe what happened."]
    async with runtime.sessions() as s:
        conv = (await s.execute(select(Conversation))).scalar_one()
    assert conv.flow_state["flow"] == "complaint"
