"""Passwords and console sessions (bot/desk/auth.py), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from bot.desk import auth
from bot.runtime import Runtime
from storage.models import Agent, AgentRole, AgentSession, SignInAttempt, utcnow

IDLE = timedelta(hours=8)


async def test_password_is_stored_as_argon2id_and_verified(runtime: Runtime) -> None:
    async with runtime.sessions() as s, s.begin():
        agent, _ = await auth.create_agent(
            s, "Anna", AgentRole.AGENT, email="Anna@Example.com", password="correct horse"
        )
    assert agent.password_hash is not None and agent.password_hash.startswith("$argon2id$")
    assert "correct horse" not in agent.password_hash
    async with runtime.sessions() as s, s.begin():
        assert await auth.verify_login(s, "anna@example.com ", "correct horse") is not None
        assert await auth.verify_login(s, "anna@example.com", "wrong horse") is None
        assert await auth.verify_login(s, "nobody@example.com", "correct horse") is None
    with pytest.raises(auth.PasswordError):
        auth.check_password_rules("short")


async def test_two_agents_with_one_email_sign_in_neither(runtime: Runtime) -> None:
    async with runtime.sessions() as s, s.begin():
        for name in ("A", "B"):
            await auth.create_agent(s, name, email="team@example.com", password="shared secret")
        assert await auth.verify_login(s, "team@example.com", "shared secret") is None


async def test_sessions_expire_when_idle_at_their_end_and_on_reset(runtime: Runtime) -> None:
    now = utcnow()
    async with runtime.sessions() as s, s.begin():
        agent, _ = await auth.create_agent(s, "Ben", email="ben@example.com", password="p" * 12)
        token, _row = await auth.start_session(s, agent, now, timedelta(hours=24))
    assert token.startswith(auth.SESSION_PREFIX)
    async with runtime.sessions() as s, s.begin():
        # used every 7 hours it lives on ...
        for hours in (7, 14, 21):
            found = await auth.agent_by_session(s, token, now + timedelta(hours=hours), IDLE)
            assert found is not None and found[0].id == agent.id
        # ... but not past its end
        assert await auth.agent_by_session(s, token, now + timedelta(hours=24), IDLE) is None
        s.expire_all()
        assert await s.get(AgentSession, _row.id) is None  # an expired session is deleted
    async with runtime.sessions() as s, s.begin():
        token, _ = await auth.start_session(s, agent, now, timedelta(hours=24))
        assert await auth.agent_by_session(s, token, now + timedelta(hours=9), IDLE) is None
        token, _ = await auth.start_session(s, agent, now, timedelta(hours=24))
        fresh = await s.get(Agent, agent.id)
        assert fresh is not None
        await auth.set_password(s, fresh, "a new password")
        assert await auth.agent_by_session(s, token, now, IDLE) is None
        token, _ = await auth.start_session(s, agent, now, timedelta(hours=24))
        await auth.revoke(s, agent.id)
        assert await auth.agent_by_session(s, token, now, IDLE) is None


def test_login_throttle_waits_for_the_oldest_of_the_last_attempts() -> None:
    throttle, now = auth.LoginThrottle(limit=3, window=timedelta(minutes=15)), utcnow()
    minute = timedelta(minutes=1)
    assert throttle.wait([now, now], now) == 0
    assert throttle.wait([now - 2 * minute, now - minute, now], now) == 13 * 60
    # attempts older than the window do not count
    assert throttle.wait([now - 20 * minute, now - minute, now], now) == 0
    assert throttle.wait([now, now, now], now + 15 * minute) == 0


async def test_login_attempts_are_counted_in_the_database(runtime: Runtime) -> None:
    throttle, now = auth.LoginThrottle(limit=3, window=timedelta(minutes=15)), utcnow()
    for _ in range(3):
        async with runtime.sessions() as s, s.begin():
            assert await throttle.attempt(s, "A@x.org ", now) == 0
    async with runtime.sessions() as s, s.begin():
        assert await throttle.attempt(s, "a@X.org", now + timedelta(minutes=1)) == 14 * 60
        assert await throttle.attempt(s, "b@x.org", now) == 0
        await throttle.succeeded(s, "b@x.org")
    async with runtime.sessions() as s, s.begin():
        rows = (await s.scalars(select(SignInAttempt.address_hash))).all()
        assert rows == [auth.address_hash("a@x.org")] * 3  # only hashes, never the address
        # a window later the old attempts are gone from the table
        assert await throttle.attempt(s, "c@x.org", now + timedelta(minutes=15)) == 0
    async with runtime.sessions() as s:
        assert (await s.scalars(select(SignInAttempt.address_hash))).all() == [
            auth.address_hash("c@x.org")
        ]
