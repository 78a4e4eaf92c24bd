"""The console's inbox API over real HTTP (bot/web/inbox_api.py): the All tab, search
across contacts and messages, canned replies kept by admins; SQLite and PostgreSQL."""

from __future__ import annotations

from tests.bot.web.test_api import Desk, desk  # noqa: F401 (the fixture)
from tests.conftest import inbound


async def test_all_shows_colleagues_open_conversations(desk: Desk) -> None:  # noqa: F811
    waiting = await desk.escalate("c20")
    bens = await desk.escalate("c21")
    async with desk.client("ben") as c:
        assert (await c.post(f"/conversations/{bens}/claim")).status_code == 200
    await desk.rt.engine.handle(inbound("just asking", user="c22"))  # the bot's: not listed
    async with desk.client("sofia") as c:
        everything = (await c.get("/conversations")).json()
    got = {item["id"]: (item["status"], item["assignee"]) for item in everything["items"]}
    ben_id = (await _me(desk, "ben"))["id"]
    assert got == {waiting: ("queued", None), bens: ("agent", ben_id)}
    assert everything["total"] == 2
    async with desk.client("anna") as c:  # agents may look too, as in Chatwoot
        assert (await c.get("/conversations")).json()["total"] == 2
        mine = (await c.get("/conversations/mine")).json()
        assert mine["total"] == 0
    async with desk.client(None) as c:
        assert (await c.get("/conversations")).status_code == 401


async def _me(desk: Desk, who: str) -> dict[str, object]:  # noqa: F811
    async with desk.client(who) as c:
        me: dict[str, object] = (await c.get("/me")).json()
        return me


async def test_search_finds_contacts_and_messages(desk: Desk) -> None:  # noqa: F811
    await desk.rt.engine.handle(inbound("Mein Paket 4711 ist beschädigt", user="erika"))
    await desk.rt.engine.handle(inbound("hello", user="max"))
    async with desk.client() as c:
        found = (await c.get("/search", params={"q": "paket 4711"})).json()
        assert [m["text"] for m in found["messages"]] == ["Mein Paket 4711 ist beschädigt"]
        assert found["messages"][0]["conversation_id"] is not None
        by_id = (await c.get("/search", params={"q": "max"})).json()
        assert len(by_id["contacts"]) == 1 and by_id["contacts"][0]["conversation_id"]
        # LIKE's wildcards are literal
        assert (await c.get("/search", params={"q": "%"})).json() == {
            "contacts": [],
            "messages": [],
        }
        assert (await c.get("/search", params={"q": ""})).status_code == 422


async def test_canned_replies_admins_keep_agents_read(desk: Desk) -> None:  # noqa: F811
    body = {"short_code": "lieferung", "text": "Ihre Sendung ist unterwegs."}
    async with desk.client("anna") as c:
        assert (await c.put("/canned/lieferung", json=body)).status_code == 403
    async with desk.client("root") as c:
        saved = await c.put("/canned/lieferung", json=body)
        assert saved.status_code == 200 and saved.json()["short_code"] == "lieferung"
        body2 = {"short_code": "/Danke", "text": "Vielen Dank für Ihre Geduld!"}
        assert (await c.put("/canned/danke", json=body2)).status_code == 200
        bad = await c.put("/canned/x y", json={"short_code": "x y", "text": "t"})
        assert bad.status_code == 422
        mismatch = await c.put("/canned/a", json={"short_code": "b", "text": "t"})
        assert mismatch.status_code == 422
        replaced = {"short_code": "lieferung", "text": "Ihr Paket kommt morgen."}
        assert (await c.put("/canned/lieferung", json=replaced)).status_code == 200
    async with desk.client("anna") as c:
        items = (await c.get("/canned")).json()["items"]
        assert [(i["short_code"], i["text"]) for i in items] == [
            ("danke", "Vielen Dank für Ihre Geduld!"),
            ("lieferung", "Ihr Paket kommt morgen."),
        ]
        assert (await c.delete("/canned/danke")).status_code == 403
    async with desk.client("root") as c:
        assert (await c.delete("/canned/danke")).status_code == 200
        assert (await c.delete("/canned/danke")).status_code == 404
