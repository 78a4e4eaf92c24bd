"""The CRM API over real HTTP (SQLite and PostgreSQL): timeline, merge with audit,
imports, value, lifecycle, analytics and GDPR, with their roles; `contacts show` options."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import func, select

from bot import auth
from bot.runtime import Runtime
from storage.models import AgentRole, Contact, Touchpoint
from tests.conftest import RecordingChannel, inbound, make_settings
from tests.server import serve


@dataclass
class Api:
    url: str
    rt: Runtime
    tokens: dict[str, str]

    def client(self, who: str) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return httpx.AsyncClient(base_url=self.url + "/api/v1", headers=headers, timeout=20)

    async def contact(self, user: str, *texts: str) -> int:
        result = None
        for t in texts:
            result = await self.rt.engine.handle(inbound(t, user=user))
        assert result is not None
        return result.contact_id


@pytest.fixture
async def api(db_url: str) -> AsyncIterator[Api]:
    rt = Runtime(make_settings(db_url), channels=[])
    rt.channels["test"] = RecordingChannel()
    tokens = {}
    async with serve(rt) as (url, runtime):
        async with runtime.sessions() as s, s.begin():
            for name, role in [
                ("agent", AgentRole.AGENT),
                ("sup", AgentRole.SUPERVISOR),
                ("admin", AgentRole.ADMIN),
            ]:
                _, tokens[name] = await auth.create_agent(s, name, role)
        yield Api(url, runtime, tokens)


async def test_merge_over_the_api_keeps_history_and_audits(api: Api) -> None:
    a = await api.contact("web-1", "hello", "complaint")
    b = await api.contact("tg-1", "hello", "status")
    async with api.rt.sessions() as s:
        total = await s.scalar(select(func.count()).select_from(Touchpoint))
    async with api.client("agent") as c:
        # a plain agent may not merge: joining two people's histories is a supervisor's call
        r = await c.post(f"/contacts/{a}/merge", json={"other_id": b, "reason": "looks alike"})
        assert r.status_code == 403 and "supervisor" in r.json()["error"]["message"]
    async with api.rt.sessions() as s:
        assert await s.get(Contact, b) is not None  # nothing merged
    async with api.client("sup") as c:
        r = await c.post(
            f"/contacts/{a}/merge", json={"other_id": b, "reason": "same person, checked ID"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["moved"]["identities"] == 1
        r = await c.get(f"/contacts/{a}/timeline", params={"limit": 200})
        body = r.json()
        assert body["total"] == total + 1  # every touchpoint and the audit record
        assert body["items"][0]["kind"] == "contacts_merged"
        assert body["items"][0]["actor"].startswith("agent:")
        assert {t["channel"] for t in body["items"]} == {"test", "crm"}
        r = await c.get(
            f"/contacts/{a}/timeline", params={"kind": "message", "limit": 2, "offset": 1}
        )
        assert r.json()["limit"] == 2 and len(r.json()["items"]) == 2
        assert (await c.get(f"/contacts/{b}")).status_code == 404
        r = await c.post(f"/contacts/{a}/merge", json={"other_id": b, "reason": "again"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await c.post(f"/contacts/{a}/merge", json={"other_id": a, "reason": "self"})
        assert r.status_code == 422
        r = await c.post(f"/contacts/{a}/merge", json={"other_id": b})
        assert r.status_code == 422  # a reason is required


async def test_import_value_lifecycle_and_analytics_over_the_api(api: Api) -> None:
    contacts = "external_id,name,email\nK-1,Anna,anna@example.com\nK-2,Ben,\n"
    orders = (
        "order_id,customer_id,amount,ordered_at\nO-1,K-1,100.00,2026-11-01\nO-2,K-2,5,2026-11-02\n"
    )
    async with api.client("agent") as c:
        assert (await c.post("/import/contacts", content=contacts)).status_code == 403
        assert (await c.get("/analytics")).status_code == 403
    async with api.client("sup") as c:
        r = await c.post("/import/contacts", content=contacts, headers={"content-type": "text/csv"})
        assert r.status_code == 200 and r.json()["created"] == 2, r.text
        r = await c.post(
            "/import/orders", content=orders + "O-3,K-9,1,2026-11-02\nO-4,K-1,x,2026-11-02\n"
        )
        assert r.status_code == 422
        assert [e["line"] for e in r.json()["error"]["rows"]] == [4, 5]
        r = await c.post("/import/orders", content=orders)
        assert r.status_code == 200, r.text
        assert r.json()["created"] == 2 and r.json()["value"]["customers_with_orders"] == 2
        r = await c.post("/import/orders", content="nothing,useful\n1,2\n")
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_file"
        assert (await c.post("/crm/value")).status_code == 200
        assert (await c.post("/crm/lifecycle")).status_code == 200
        r = await c.get("/contacts", params={"q": "anna@"})
        anna = r.json()["items"][0]
        assert anna["value_segment"] == "A" and anna["attributes"]["value"]["orders"] == 1
        r = await c.get("/analytics", params={"days": 7})
        assert r.status_code == 200 and set(r.json()) >= {"channels", "csat", "sla", "self_service"}
        r = await c.get("/analytics", params={"since": "2026-02-01", "until": "2026-01-01"})
        assert r.status_code == 422


async def test_gdpr_over_the_api_is_admin_only(api: Api) -> None:
    cid = await api.contact("u-gdpr", "hello")
    async with api.client("sup") as c:
        assert (await c.get(f"/contacts/{cid}/export")).status_code == 403
        assert (await c.post(f"/contacts/{cid}/erase")).status_code == 403
    async with api.client("admin") as c:
        r = await c.get(f"/contacts/{cid}/export")
        assert r.status_code == 200
        assert r.json()["identities"][0]["external_id"] == "u-gdpr"
        r = await c.post(f"/contacts/{cid}/erase")
        assert r.status_code == 200 and r.json()["counts"]["identities"] == 1
        doc = (await c.get(f"/contacts/{cid}/export")).json()
        assert "u-gdpr" not in str(doc)
        assert (await c.get("/contacts/99999/export")).status_code == 404
        r = await c.post("/gdpr/retention", json={"days": 1})
        assert r.status_code == 200 and r.json()["retention_days"] == 1
        assert r.json()["purged"]["touchpoints"] == 0
    async with api.rt.sessions() as s:
        contact = await s.get(Contact, cid)
        assert contact is not None and contact.attributes["erased"] is True


async def test_locked_link_addresses_over_the_api(api: Api) -> None:
    from storage.models import IdentityLinkAddress, utcnow

    async with api.rt.sessions() as s, s.begin():
        row = IdentityLinkAddress(email="anna@example.com", failures=100, locked_at=utcnow())
        s.add(IdentityLinkAddress(email="ben@example.com", failures=3))  # not locked
        s.add(row)
    async with api.client("agent") as c:
        assert (await c.get("/link-locks")).status_code == 403
        assert (await c.delete(f"/link-locks/{row.id}")).status_code == 403
    async with api.client("sup") as c:
        listed = (await c.get("/link-locks")).json()["items"]
        assert [(i["id"], i["email"], i["failures"]) for i in listed] == [
            (row.id, "anna@example.com", 100)
        ]
        assert (await c.delete(f"/link-locks/{row.id}")).status_code == 200
        assert (await c.get("/link-locks")).json()["items"] == []
        r = await c.delete(f"/link-locks/{row.id}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
