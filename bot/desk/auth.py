"""Agents and their API tokens. A token is shown once; only its SHA-256 is stored
(tokens are 256 random bits, so a fast hash is enough, as for GitHub's tokens)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Agent, AgentRole, utcnow

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
) -> tuple[Agent, str]:
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
    return True
