"""Signing in with email and password over real HTTP (bot/web/signin_api.py): sessions,
expiry, sign-out, password reset by an admin and one's own change, the API token kept."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import update

from bot.desk import auth
from bot.runtime import Runtime
from storage.models import AgentRole, AgentSession, utcnow
from tests.conftest import make_settings
from tests.server import serve

PASSWORD = "Kundenservice 2026!"


@dataclass
class Site:
    url: str
    rt: Runtime
    tokens: dict[str, str]
    ids: dict[str, int]

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url + "/api/v1", headers=headers, timeout=10)


@pytest.fixture
async def site(db_url: str) -> AsyncIterator[Site]:
    async with serve(make_settings(db_url)) as (url, rt):
        tokens, ids = {}, {}
        async with rt.sessions() as s, s.begin():
            for name, role, password in [
                ("anna", AgentRole.AGENT, PASSWORD),
                ("ben", AgentRole.AGENT, None),
                ("root", AgentRole.ADMIN, None),
            ]:
                agent, tokens[name] = await auth.create_agent(
                    s, name.title(), role, email=f"{name}@example.com", password=password
                )
                ids[name] = agent.id
        yield Site(url, rt, tokens, ids)


async def login(site: Site, email: str, password: str) -> httpx.Response:
    async with site.client() as c:
        return await c.post("/auth/login", json={"email": email, "password": password})


async def test_sign_in_use_and_sign_out(site: Site) -> None:
    r = await login(site, "ANNA@example.com", PASSWORD)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token"].startswith("cis_") and body["agent"]["name"] == "Anna"
    assert body["agent"]["has_password"] is True and "password_hash" not in body["agent"]
    async with site.client(body["token"]) as c:
        assert (await c.get("/me")).json()["id"] == site.ids["anna"]
        assert (await c.get("/queue")).status_code == 200
        assert (await c.post("/auth/logout")).json() == {"ok": True, "ended": True}
        gone = await c.get("/me")
        assert gone.status_code == 401 and gone.json()["error"]["code"] == "session_expired"
    # the API token still works, for integrations
    async with site.client(site.tokens["anna"]) as c:
        assert (await c.get("/me")).status_code == 200


async def test_wrong_email_or_password_is_one_answer(site: Site) -> None:
    for email, password in [
        ("anna@example.com", "not the password"),
        ("nobody@example.com", PASSWORD),
        ("ben@example.com", PASSWORD),  # no password set
    ]:
        r = await login(site, email, password)
        assert r.status_code == 401
        assert r.json()["error"] == {"code": "unauthorized", "message": "wrong email or password"}


async def test_failed_sign_ins_are_throttled(site: Site) -> None:
    for _ in range(5):
        assert (await login(site, "anna@example.com", "guess guess")).status_code == 401
    r = await login(site, "anna@example.com", PASSWORD)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert (await login(site, "root@example.com", "guess guess")).status_code == 401


async def test_two_workers_share_the_throttle(site: Site) -> None:
    """Attempts are counted in the database: a second worker on the same database does
    not grant five more guesses (it did while each process counted its own)."""
    async with serve(make_settings(site.rt.settings.database.url)) as (url, _):
        second = Site(url, site.rt, site.tokens, site.ids)
        for worker in [site, second, site, second, site]:
            assert (await login(worker, "anna@example.com", "guess guess")).status_code == 401
        for worker in [second, site]:
            assert (await login(worker, "anna@example.com", PASSWORD)).status_code == 429


async def test_a_successful_sign_in_clears_the_attempts(site: Site) -> None:
    for _ in range(4):
        assert (await login(site, "anna@example.com", "guess guess")).status_code == 401
    assert (await login(site, "anna@example.com", PASSWORD)).status_code == 200
    for _ in range(4):
        assert (await login(site, "anna@example.com", "guess guess")).status_code == 401
    assert (await login(site, "anna@example.com", PASSWORD)).status_code == 200


async def test_an_idle_or_old_session_ends(site: Site) -> None:
    desk = site.rt.settings.desk
    token = (await login(site, "anna@example.com", PASSWORD)).json()["token"]
    idle = timedelta(hours=desk.session_idle_hours, seconds=1)
    async with site.rt.sessions() as s, s.begin():
        await s.execute(update(AgentSession).values(last_used_at=utcnow() - idle))
    async with site.client(token) as c:
        r = await c.get("/me")
        assert r.status_code == 401 and r.json()["error"]["code"] == "session_expired"
    token = (await login(site, "anna@example.com", PASSWORD)).json()["token"]
    async with site.rt.sessions() as s, s.begin():
        await s.execute(update(AgentSession).values(expires_at=AgentSession.created_at))
    async with site.client(token) as c:
        assert (await c.get("/me")).status_code == 401


async def test_admin_resets_a_password_and_the_sessions_end(site: Site) -> None:
    token = (await login(site, "anna@example.com", PASSWORD)).json()["token"]
    async with site.client(site.tokens["ben"]) as c:  # not an admin
        assert (await c.put(f"/agents/{site.ids['anna']}/password", json={})).status_code == 403
    async with site.client(site.tokens["root"]) as c:
        r = await c.put(f"/agents/{site.ids['anna']}/password", json={})
        assert r.status_code == 200
        temporary = r.json()["password"]
        weak = await c.put(f"/agents/{site.ids['ben']}/password", json={"password": "short"})
        assert weak.status_code == 422 and weak.json()["error"]["code"] == "weak_password"
        assert (await c.put("/agents/999999/password", json={})).status_code == 404
    async with site.client(token) as c:
        assert (await c.get("/me")).status_code == 401  # signed out everywhere
    assert (await login(site, "anna@example.com", PASSWORD)).status_code == 401
    fresh = await login(site, "anna@example.com", temporary)
    assert fresh.status_code == 200
    # she chooses her own; the current one is needed
    async with site.client(fresh.json()["token"]) as c:
        wrong = await c.post("/me/password", json={"current": "nope", "new": "mein neues Passwort"})
        assert wrong.status_code == 403
        ok = await c.post("/me/password", json={"current": temporary, "new": "mein neues Passwort"})
        assert ok.status_code == 200
    assert (await login(site, "anna@example.com", "mein neues Passwort")).status_code == 200
