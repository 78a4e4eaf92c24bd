"""The agent REST API over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update

from bot.desk import auth
from bot.runtime import Runtime
from storage.models import (
    Agent,
    AgentRole,
    Contact,
    Conversation,
    Identity,
    OutboxMessage,
    Touchpoint,
)
from tests.conftest import RecordingChannel, inbound, make_settings, settled
from tests.server import serve

COMPLAINT = ["complaint", "1", "The parcel arrived soaking wet and torn.", "skip", "4", "2", "yes"]


@dataclass
class Desk:
    url: str
    rt: Runtime
    customer: RecordingChannel
    tokens: dict[str, str]

    def client(self, who: str | None = "anna") -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.AsyncClient(base_url=self.url + "/api/v1", headers=headers, timeout=10)

    async def escalate(self, user: str, *, locale: str = "en", segment: str | None = None) -> int:
        result = await self.rt.engine.handle(inbound("hello", user=user, locale=locale))
        if segment:
            async with self.rt.sessions() as s, s.begin():
                await s.execute(
                    update(Contact)
                    .where(Contact.id == result.contact_id)
                    .values(value_segment=segment)
                )
        result = await self.rt.engine.handle(inbound("human", user=user, locale=locale))
        assert result.conversation_id is not None
        return result.conversation_id

    async def settle(self) -> None:
        """Wait until the dispatcher has sent everything that is due."""
        await settled(self.rt)

    async def sent_to(self, user: str, n: int) -> list[str]:
        async with asyncio.timeout(10):
            while len(self.customer.texts(user)) < n:
                await asyncio.sleep(0.02)
        return self.customer.texts(user)


@pytest.fixture
async def desk(db_url: str) -> AsyncIterator[Desk]:
    rt = Runtime(make_settings(db_url), channels=[])
    rt.channels["test"] = customer = RecordingChannel()
    tokens = {}
    async with serve(rt) as (url, runtime):
        async with runtime.sessions() as s, s.begin():
            for name, role in [
                ("anna", AgentRole.AGENT),
                ("ben", AgentRole.AGENT),
                ("sofia", AgentRole.SUPERVISOR),
                ("root", AgentRole.ADMIN),
                ("gone", AgentRole.AGENT),
            ]:
                agent, tokens[name] = await auth.create_agent(s, name.title(), role)
                if name == "gone":
                    await auth.revoke(s, agent.id)
        yield Desk(url, runtime, customer, tokens)


async def test_authentication_and_roles(desk: Desk) -> None:
    async with desk.client(None) as c:
        r = await c.get("/queue")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "unauthorized"
        r = await c.get("/queue", headers={"Authorization": "Bearer cic_wrong"})
        assert r.status_code == 401
        r = await c.get("/queue", headers={"Authorization": "Basic YTpi"})
        assert r.status_code == 401
    async with desk.client("gone") as c:
        assert (await c.get("/me")).status_code == 401
    async with desk.client("anna") as c:
        assert (await c.get("/me")).json()["name"] == "Anna"
        r = await c.get("/agents")
        assert r.status_code == 403 and "supervisor" in r.json()["error"]["message"]
    async with desk.client("sofia") as c:
        assert len((await c.get("/agents")).json()["items"]) == 5
        assert (await c.post("/agents", json={"name": "X"})).status_code == 403
    async with desk.client("root") as c:
        r = await c.post("/agents", json={"name": "Nina", "role": "agent"})
        assert r.status_code == 201
        token, nina = r.json()["token"], r.json()["id"]
        me = await c.get("/me", headers={"Authorization": f"Bearer {token}"})
        assert me.json()["name"] == "Nina"
        assert (await c.delete(f"/agents/{nina}")).json() == {"ok": True}
        assert (await c.get("/me", headers={"Authorization": f"Bearer {token}"})).status_code == 401
        assert (await c.delete("/agents/999")).status_code == 404


async def test_queue_order_and_pagination(desk: Desk) -> None:
    plain = await desk.escalate("c-plain")
    valued = await desk.escalate("c-valued", segment="A")
    for text in COMPLAINT:  # severity "critical" → priority escalation
        await desk.rt.engine.handle(inbound(text, user="c-critical"))
    async with desk.client() as c:
        page = (await c.get("/queue")).json()
        assert page["total"] == 3
        ids = [i["id"] for i in page["items"]]
        assert ids[1:] == [valued, plain]  # the critical complaint first
        second = (await c.get("/queue", params={"limit": 1, "offset": 1})).json()
        assert [i["id"] for i in second["items"]] == [valued] and second["total"] == 3
        bad = await c.get("/queue", params={"limit": 0})
        assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "limit"


async def test_two_concurrent_claims_one_wins(desk: Desk) -> None:
    conv = await desk.escalate("c1")
    async with desk.client("anna") as a, desk.client("ben") as b:
        ra, rb = await asyncio.gather(
            a.post(f"/conversations/{conv}/claim"), b.post(f"/conversations/{conv}/claim")
        )
    assert sorted([ra.status_code, rb.status_code]) == [200, 409]
    loser = ra if ra.status_code == 409 else rb
    assert "agent" in loser.json()["error"]["message"]
    texts = await desk.sent_to("c1", 3)
    assert texts[-1].endswith("is now taking care of your request.")


async def test_claims_across_two_workers(db_url: str) -> None:
    """Two processes' desks claim the same conversation: exactly one wins."""
    from bot.desk.service import Conflict

    a, b = Runtime(make_settings(db_url), channels=[]), Runtime(make_settings(db_url), channels=[])
    try:
        conv = (await a.engine.handle(inbound("human", user="x"))).conversation_id
        assert conv is not None
        async with a.sessions() as s, s.begin():
            one, _ = await auth.create_agent(s, "One")
            two, _ = await auth.create_agent(s, "Two")
        results = await asyncio.gather(
            a.desk.claim(one, conv), b.desk.claim(two, conv), return_exceptions=True
        )
        assert sum(r is None for r in results) == 1
        assert sum(isinstance(r, Conflict) for r in results) == 1
    finally:
        await a.stop()
        await b.stop()


async def test_reply_note_and_silence_while_agent_owns(desk: Desk) -> None:
    conv = await desk.escalate("c2", locale="de")
    async with desk.client("anna") as c, desk.client("ben") as ben, desk.client("sofia") as sup:
        assert (
            await c.post(f"/conversations/{conv}/reply", json={"text": "Hi"})
        ).status_code == 409
        assert (await c.post(f"/conversations/{conv}/claim")).status_code == 200
        r = await c.post(
            f"/conversations/{conv}/reply", json={"text": "Guten Tag, ich helfe gern."}
        )
        assert r.status_code == 200 and r.json()["outbox_id"] > 0
        assert (
            await ben.post(f"/conversations/{conv}/reply", json={"text": "x"})
        ).status_code == 403
        assert (
            await sup.post(
                f"/conversations/{conv}/reply", json={"text": "Ergänzung der Teamleitung."}
            )
        ).status_code == 200
        assert (
            await c.post(
                f"/conversations/{conv}/note", json={"text": "Kunde ist VIP, Kulanz prüfen"}
            )
        ).status_code == 200
        assert (await c.post(f"/conversations/{conv}/reply", json={"text": ""})).status_code == 422
        # the customer writes; the bot stays silent, the agent sees it in the timeline
        await desk.rt.engine.handle(
            inbound("Danke! Wann kommt der Ersatz?", user="c2", locale="de")
        )
        detail = (await c.get(f"/conversations/{conv}")).json()
    texts = await desk.sent_to("c2", 5)
    assert texts[-2:] == ["Guten Tag, ich helfe gern.", "Ergänzung der Teamleitung."]
    assert texts[-3].endswith("kümmert sich jetzt um Ihr Anliegen.")
    assert not any("VIP" in t for t in texts)  # internal notes never reach the customer
    await asyncio.sleep(0.2)
    assert len(desk.customer.texts("c2")) == 5
    kinds = [(t["direction"], t["kind"], t["actor"]) for t in detail["timeline"]]
    assert ("internal", "note", f"agent:{detail['assignee']}") in kinds
    assert detail["timeline"][-1]["text"] == "Danke! Wann kommt der Ersatz?"
    assert detail["status"] == "agent" and detail["contact"]["locale"] == "de"


async def test_resolve_closes_conversation_and_case(desk: Desk) -> None:
    for text in COMPLAINT:
        await desk.rt.engine.handle(inbound(text, user="c3"))
    conv = (await desk.rt.engine.handle(inbound("human", user="c3"))).conversation_id
    async with desk.client() as c:
        queue = (await c.get("/queue")).json()
        conv = queue["items"][0]["id"]
        await c.post(f"/conversations/{conv}/claim")
        r = await c.post(f"/conversations/{conv}/resolve")
        assert r.status_code == 200 and len(r.json()["resolved_cases"]) == 1
        ref = r.json()["resolved_cases"][0]
        case = (await c.get(f"/cases/{ref}")).json()
        assert case["status"] == "resolved" and case["resolved_at"]
        assert (await c.get(f"/conversations/{conv}")).json()["status"] == "closed"
        assert (await c.post(f"/conversations/{conv}/resolve")).status_code == 409
    await desk.settle()
    assert "marked as resolved" in desk.customer.texts("c3")[-1]
    # the customer writes again: the conversation reopens for Anna, who resolved it
    result = await desk.rt.engine.handle(inbound("The replacement has not arrived.", user="c3"))
    assert result.conversation_id == conv and result.status == "agent"
    assert result.replies == [
        "Thank you, I've reopened your request. Anna took care of it and will answer you here."
    ]
    async with desk.client() as c:
        mine = (await c.get("/conversations/mine")).json()["items"]
        assert [m["id"] for m in mine] == [conv]
        detail = (await c.get(f"/conversations/{conv}")).json()
        kinds = [(t["kind"], t["text"]) for t in detail["timeline"][-3:]]
        assert kinds[0] == ("reopened", None)
        assert kinds[1] == ("message", "The replacement has not arrived.")


async def _resolved_by(desk: Desk, user: str, who: str = "anna") -> int:
    conv = await desk.escalate(user)
    async with desk.client(who) as c:
        assert (await c.post(f"/conversations/{conv}/claim")).status_code == 200
        assert (await c.post(f"/conversations/{conv}/resolve")).status_code == 200
    return conv


async def test_a_follow_up_after_the_reopen_window_starts_with_the_bot(desk: Desk) -> None:
    conv = await _resolved_by(desk, "c10")
    async with desk.rt.sessions() as s, s.begin():
        closed = await s.get(Conversation, conv)
        assert closed is not None and closed.closed_at is not None
        closed.closed_at -= timedelta(hours=desk.rt.settings.desk.reopen_hours, minutes=1)
    result = await desk.rt.engine.handle(inbound("hello again", user="c10"))
    assert result.conversation_id != conv and result.status == "bot"


async def test_a_follow_up_for_a_revoked_agent_goes_to_the_queue(desk: Desk) -> None:
    conv = await _resolved_by(desk, "c11", "ben")
    async with desk.rt.sessions() as s, s.begin():
        ben = (await s.execute(select(Agent).where(Agent.name == "Ben"))).scalar_one()
        await auth.revoke(s, ben.id)
    result = await desk.rt.engine.handle(inbound("still broken", user="c11"))
    assert result.conversation_id == conv and result.status == "queued"
    async with desk.client() as c:
        assert [q["id"] for q in (await c.get("/queue")).json()["items"]] == [conv]


async def test_reopening_can_be_switched_off(db_url: str) -> None:
    settings = make_settings(db_url)
    settings = settings.model_copy(
        update={"desk": settings.desk.model_copy(update={"reopen_hours": 0})}
    )
    rt = Runtime(settings, channels=[])
    rt.channels["test"] = RecordingChannel()
    await rt.start(dispatch=False)
    try:
        assert rt.engine.reopen_window is None
    finally:
        await rt.stop()


async def test_hand_back_and_transfer(desk: Desk) -> None:
    conv = await desk.escalate("c4")
    async with desk.client("anna") as c, desk.client("ben") as ben:
        await c.post(f"/conversations/{conv}/claim")
        ben_id = (await ben.get("/me")).json()["id"]
        assert (
            await c.post(f"/conversations/{conv}/transfer", json={"agent_id": 999})
        ).status_code == 404
        r = await c.post(f"/conversations/{conv}/transfer", json={"agent_id": ben_id})
        assert r.json()["assignee"] == ben_id
        assert (await c.post(f"/conversations/{conv}/handback")).status_code == 403
        mine = (await ben.get("/conversations/mine")).json()["items"]
        assert [m["id"] for m in mine] == [conv]
        assert (await ben.post(f"/conversations/{conv}/handback")).status_code == 200
    texts = await desk.sent_to("c4", 4)
    assert "virtual assistant again" in texts[-1]
    result = await desk.rt.engine.handle(inbound("when are you open?", user="c4"))
    assert result.status == "bot" and "Monday to Friday" in result.replies[0]


async def test_contacts_search_and_timeline(desk: Desk) -> None:
    await desk.escalate("search-me")
    async with desk.rt.sessions() as s, s.begin():
        contact = (await s.execute(select(Contact))).scalars().first()
        assert contact is not None
        contact.name, contact.email = "Jürgen Beispiel", "juergen@example.com"
        s.add(Identity(contact_id=contact.id, channel="email", external_id="juergen@example.com"))
    async with desk.client() as c:
        for q in ["jürgen", "JUERGEN@example", "search-me", str(contact.id)]:
            found = (await c.get("/contacts", params={"q": q})).json()
            assert [i["id"] for i in found["items"]] == [contact.id], q
        assert (await c.get("/contacts", params={"q": "nobody"})).json()["total"] == 0
        detail = (await c.get(f"/contacts/{contact.id}")).json()
        assert {i["channel"] for i in detail["identities"]} == {"test", "email"}
        tl = (await c.get(f"/contacts/{contact.id}/timeline", params={"limit": 2})).json()
        assert tl["total"] >= 4 and len(tl["items"]) == 2
        assert tl["items"][0]["id"] > tl["items"][1]["id"]  # newest first
        inbound_only = (
            await c.get(f"/contacts/{contact.id}/timeline", params={"kind": "escalated"})
        ).json()
        assert [t["kind"] for t in inbound_only["items"]] == ["escalated"]
        assert (await c.get("/contacts/999999")).json()["error"]["code"] == "not_found"


async def test_case_list_filter_and_status_update_notifies(desk: Desk) -> None:
    for text in [*COMPLAINT[:4], "1", "2", "ja"]:
        await desk.rt.engine.handle(inbound(text, user="c5", locale="de"))
    async with desk.client() as c:
        cases = (await c.get("/cases", params={"status": "new"})).json()
        assert cases["total"] == 1
        ref = cases["items"][0]["reference"]
        assert (await c.get("/cases", params={"severity": "critical"})).json()["total"] == 0
        assert (await c.get("/cases", params={"status": "bogus"})).status_code == 422
        r = await c.patch(f"/cases/{ref}", json={"status": "in_progress"})
        assert r.status_code == 200 and r.json()["status"] == "in_progress"
        assert (await c.patch("/cases/C-1999-000001", json={"status": "closed"})).status_code == 404
    await desk.settle()
    assert desk.customer.texts("c5")[-1] == f"Neuigkeiten zu Ihrem Fall {ref}: in Bearbeitung."


async def test_events_stream_announces_the_queue(desk: Desk) -> None:
    async with desk.client() as c, c.stream("GET", "/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.aiter_lines()
        assert await anext(lines) == "event: hello"
        await desk.escalate("c6")
        async with asyncio.timeout(5):
            async for line in lines:
                if line.startswith("data:") and json.loads(line[5:]).get("type") == "queue":
                    break


async def test_outbox_holds_agent_replies_in_order(desk: Desk) -> None:
    conv = await desk.escalate("c7")
    async with desk.client() as c:
        await c.post(f"/conversations/{conv}/claim")
        for i in range(5):
            await c.post(f"/conversations/{conv}/reply", json={"text": f"part {i}"})
    texts = await desk.sent_to("c7", 8)
    assert texts[-5:] == [f"part {i}" for i in range(5)]
    async with desk.rt.sessions() as s:
        actors = (
            (await s.execute(select(Touchpoint.actor).where(Touchpoint.direction == "out")))
            .scalars()
            .all()
        )
        rows = (await s.execute(select(OutboxMessage))).scalars().all()
        conv_row = await s.get(Conversation, conv)
    assert actors.count(f"agent:{conv_row.assignee}") == 6 if conv_row else False  # joined + 5
    assert all(r.channel == "test" for r in rows)


async def test_notes_follow_the_ownership_rule_of_replies(desk: Desk) -> None:
    conv = await desk.escalate("c8")
    async with desk.client("anna") as c, desk.client("ben") as ben, desk.client("sofia") as sup:
        # waiting in the queue: claim it first, as for a reply
        assert (await c.post(f"/conversations/{conv}/note", json={"text": "x"})).status_code == 409
        assert (await c.post(f"/conversations/{conv}/claim")).status_code == 200
        r = await c.post(f"/conversations/{conv}/note", json={"text": "mine"})
        assert r.status_code == 200
        # a colleague's conversation: refused like a reply; a supervisor may
        r = await ben.post(f"/conversations/{conv}/note", json={"text": "not mine"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        r = await sup.post(f"/conversations/{conv}/note", json={"text": "from the lead"})
        assert r.status_code == 200
        assert (await c.post(f"/conversations/{conv}/resolve")).status_code == 200
        # closed: no more notes from a plain agent, not even the one who had it
        for who in (c, ben):
            r = await who.post(f"/conversations/{conv}/note", json={"text": "late"})
            assert r.status_code == 403, r.text
    async with desk.rt.sessions() as s:
        notes = (
            (
                await s.execute(
                    select(Touchpoint.text)
                    .where(Touchpoint.kind == "note", Touchpoint.conversation_id == conv)
                    .order_by(Touchpoint.id)
                )
            )
            .scalars()
            .all()
        )
    assert notes == ["mine", "from the lead"]


async def _events_end(lines: AsyncIterator[str], within: float) -> list[str]:
    """The stream's remaining lines; fails if it is still open after `within` seconds."""
    seen = []
    async with asyncio.timeout(within):
        async for line in lines:
            seen.append(line)
    return seen


async def test_a_revoked_agents_event_stream_ends_at_once(desk: Desk) -> None:
    async with desk.client("root") as root:
        anna = next(a for a in (await root.get("/agents")).json()["items"] if a["name"] == "Anna")
        async with desk.client("anna") as c, c.stream("GET", "/events") as stream:
            lines = stream.aiter_lines()
            assert await anext(lines) == "event: hello"
            assert (await root.delete(f"/agents/{anna['id']}")).status_code == 200
            await desk.escalate("c9")  # an event it must not get any more
            rest = await _events_end(lines, within=2)
    assert not any("queue" in line for line in rest), rest


async def test_an_event_stream_ends_when_the_agent_is_revoked_elsewhere(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Revoked by `cicbot agents revoke` or on another worker: no event on this worker's bus
    says so; the stream checks the agent before an event (at most once a second) and when
    idle, and ends."""
    from bot.web import api

    monkeypatch.setattr(api, "RECHECK_SECONDS", 0.5)
    async with desk.client("ben") as c, c.stream("GET", "/events") as stream:
        lines = stream.aiter_lines()
        assert await anext(lines) == "event: hello"
        async with desk.rt.sessions() as s, s.begin():
            ben = (await s.execute(select(Agent).where(Agent.name == "Ben"))).scalar_one()
            await auth.revoke(s, ben.id)
        await asyncio.sleep(1.1)  # the stream checks the agent at most once a second
        await desk.escalate("c10")
        rest = await _events_end(lines, within=3)
    assert not any("queue" in line for line in rest), rest
