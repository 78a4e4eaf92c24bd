"""Agents, their API tokens, passwords and console sessions. A token is shown once; only
its SHA-256 is stored (tokens are 256 random bits, so a fast hash is enough, as for
GitHub's tokens). Passwords, chosen by people, are stored as Argon2id hashes."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Agent, AgentRole, AgentSession, SignInAttempt, utcnow

TOKEN_PREFIX = "cic_"  # noqa: S105 (a prefix, not a secret)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


async def create_agent(
    s: AsyncSession,
    name: str,
    role: AgentRole = AgentRole.AGENT,
    *,
    email: str | None = None,
    slack_user_id: str | None = None,
    password: str | None = None,
) -> tuple[Agent, str]:
    if password is not None:
        check_password_rules(password)
    token = new_token()
    agent = Agent(
        name=name,
        role=role,
        email=email,
        slack_user_id=slack_user_id,
        token_hash=hash_token(token),
        active=True,
        created_at=utcnow(),
    )
    s.add(agent)
    await s.flush()
    if password is not None:
        await set_password(s, agent, password)
    return agent, token


async def agent_by_token(s: AsyncSession, token: str) -> Agent | None:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    q = select(Agent).where(Agent.token_hash == hash_token(token), Agent.active.is_(True))
    return (await s.execute(q)).scalar_one_or_none()


async def list_agents(s: AsyncSession) -> Sequence[Agent]:
    return (await s.execute(select(Agent).order_by(Agent.id))).scalars().all()


async def revoke(s: AsyncSession, agent_id: int) -> bool:
    agent = await s.get(Agent, agent_id)
    if agent is None:
        return False
    agent.active = False
    agent.token_hash = hash_token(new_token())  # the old token can never match again
    await s.execute(delete(AgentSession).where(AgentSession.agent_id == agent_id))
    return True


# --- passwords and console sessions (issue 20, finding 8) ------------------------------
# Argon2id with argon2-cffi's defaults (RFC 9106's low-memory profile); a hash made with
# older parameters is renewed at the next sign-in. A session token is 256 random bits,
# so, like the API token, only its SHA-256 is stored.

SESSION_PREFIX = "cis_"
MIN_PASSWORD = 10
MAX_PASSWORD = 1000  # Argon2 takes any length; a megabyte "password" would only cost time
_hasher = PasswordHasher()
# verified when no agent has the email, so that a miss takes as long as a wrong password
_DUMMY = _hasher.hash(secrets.token_urlsafe(16))


class PasswordError(ValueError):
    """A password that may not be set (too short or too long)."""


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise PasswordError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise PasswordError(f"a password has at most {MAX_PASSWORD} characters")


def new_password() -> str:
    """A temporary password for an admin's reset: 16 random characters."""
    return secrets.token_urlsafe(12)


async def set_password(s: AsyncSession, agent: Agent, password: str) -> None:
    """Set (or reset) the password and end every console session of the agent."""
    check_password_rules(password)
    agent.password_hash = _hasher.hash(password)
    await s.execute(delete(AgentSession).where(AgentSession.agent_id == agent.id))


async def agent_by_email(s: AsyncSession, email: str) -> Agent | None:
    q = select(Agent).where(
        func.lower(Agent.email) == email.strip().lower(), Agent.active.is_(True)
    )
    found = (await s.execute(q.limit(2))).scalars().all()
    return found[0] if len(found) == 1 else None  # two agents with one email: neither


async def verify_login(s: AsyncSession, email: str, password: str) -> Agent | None:
    """The active agent with this email and password, else None (same time either way)."""
    agent = await agent_by_email(s, email) if len(password) <= MAX_PASSWORD else None
    stored = agent.password_hash if agent is not None else None
    try:
        _hasher.verify(stored or _DUMMY, password[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        return None
    if agent is None or stored is None:
        return None
    if _hasher.check_needs_rehash(stored):
        agent.password_hash = _hasher.hash(password)
    return agent


async def start_session(
    s: AsyncSession, agent: Agent, now: datetime, max_age: timedelta
) -> tuple[str, AgentSession]:
    token = SESSION_PREFIX + secrets.token_urlsafe(32)
    row = AgentSession(
        agent_id=agent.id,
        token_hash=hash_token(token),
        created_at=now,
        last_used_at=now,
        expires_at=now + max_age,
    )
    s.add(row)
    await s.flush()
    return token, row


def session_expiry(row: AgentSession, idle: timedelta) -> datetime:
    """When the session ends if unused from now on: idle time or its end, the earlier."""
    return min(row.last_used_at + idle, row.expires_at)


async def agent_by_session(
    s: AsyncSession, token: str, now: datetime, idle: timedelta
) -> tuple[Agent, AgentSession] | None:
    """The agent of a live session (its use is recorded), else None; an expired session
    is deleted."""
    if not token.startswith(SESSION_PREFIX) or len(token) > 200:
        return None
    q = select(AgentSession).where(AgentSession.token_hash == hash_token(token))
    row = (await s.execute(q)).scalar_one_or_none()
    if row is None:
        return None
    if now >= session_expiry(row, idle):  # (two requests at once may both delete it)
        await s.execute(delete(AgentSession).where(AgentSession.id == row.id))
        return None
    agent = await s.get(Agent, row.agent_id)
    if agent is None or not agent.active:
        return None
    row.last_used_at = now
    return agent, row


async def end_session(s: AsyncSession, token: str) -> bool:
    result = await s.execute(
        delete(AgentSession).where(AgentSession.token_hash == hash_token(token))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class LoginThrottle:
    """Sign-in attempts per email address: after `limit` unsuccessful ones within `window`
    the address waits until the oldest is `window` old. The attempts are rows in the
    database (`SignInAttempt`), so every worker counts the same ones; an attempt is
    recorded before its password is checked, so guesses sent in parallel count too."""

    limit: int = 5
    window: timedelta = timedelta(minutes=15)

    def wait(self, attempts: Sequence[datetime], now: datetime) -> float:
        """Seconds until the address may try again (0: now), given its recorded attempts."""
        recent = sorted(t for t in attempts if now - t < self.window)
        if len(recent) < self.limit:
            return 0.0
        return max(0.0, (recent[-self.limit] + self.window - now).total_seconds())

    async def attempt(self, s: AsyncSession, email: str, now: datetime) -> float:
        """Record an attempt and answer 0, or answer the seconds to wait (nothing recorded)."""
        key = address_hash(email)
        # old attempts of every address go: the table holds one window's worth at most
        await s.execute(
            delete(SignInAttempt).where(SignInAttempt.attempted_at <= now - self.window)
        )
        q = select(SignInAttempt.attempted_at).where(SignInAttempt.address_hash == key)
        wait = self.wait(list((await s.scalars(q)).all()), now)
        if wait == 0:
            s.add(SignInAttempt(address_hash=key, attempted_at=now))
        return wait

    async def succeeded(self, s: AsyncSession, email: str) -> None:
        await s.execute(
            delete(SignInAttempt).where(SignInAttempt.address_hash == address_hash(email))
        )


def address_hash(email: str) -> str:
    return hashlib.sha256(email.strip().casefold().encode("utf-8")).hexdigest()
