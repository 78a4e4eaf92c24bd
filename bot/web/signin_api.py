"""Signing in to the console with email and password (issue 20, finding 8), and passwords.

`POST /api/v1/auth/login` answers a session token (`cis_…`) that the console sends as its
bearer token, like an API token; it ends after `desk.session_idle_hours` unused, after
`desk.session_max_hours` in any case, on `POST /api/v1/auth/logout`, and when the
password is reset or the agent revoked. API tokens (`cic_…`) stay for integrations.
Failed sign-ins are throttled per email address, counted in the database so every
worker sees the same attempts; every answer to a wrong email or
password is the same 401, after the same Argon2 work.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from bot.desk import auth
from bot.web.api import Admin, AnyAgent, ApiError, BearerRoute, agent_json, runtime_of
from storage.models import Agent, utcnow


class Login(BaseModel):
    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=auth.MAX_PASSWORD)


class PasswordReset(BaseModel):
    # None: a random temporary password, in the answer only
    password: str | None = Field(default=None, max_length=auth.MAX_PASSWORD)


class PasswordChange(BaseModel):
    current: str = Field(min_length=1, max_length=auth.MAX_PASSWORD)
    new: str = Field(min_length=1, max_length=auth.MAX_PASSWORD)


public = APIRouter(prefix="/api/v1/auth", tags=["sign-in"])
router = APIRouter(prefix="/api/v1", tags=["sign-in"], route_class=BearerRoute)
THROTTLE = auth.LoginThrottle()


@public.post("/login", response_model=None)
async def login(request: Request, body: Login) -> dict[str, Any] | JSONResponse:
    """Email and password → a console session token (and when it ends if unused)."""
    rt, now = runtime_of(request), utcnow()
    async with rt.sessions() as s, s.begin():
        wait = await THROTTLE.attempt(s, body.email, now)
    if wait > 0:
        return JSONResponse(
            {"error": {"code": "too_many_attempts", "message": "too many failed sign-ins"}},
            status_code=429,
            headers={"Retry-After": str(math.ceil(wait))},
        )
    desk = rt.settings.desk
    async with rt.sessions() as s, s.begin():
        agent = await auth.verify_login(s, body.email, body.password)
        if agent is None:  # the attempt stays recorded
            raise ApiError(401, "unauthorized", "wrong email or password")
        token, session = await auth.start_session(
            s, agent, now, timedelta(hours=desk.session_max_hours)
        )
        agent.last_seen_at = now
        expires = auth.session_expiry(session, timedelta(hours=desk.session_idle_hours))
        await THROTTLE.succeeded(s, body.email)
    return {"token": token, "expires_at": expires.isoformat(), "agent": agent_json(agent)}


@router.post("/auth/logout")
async def logout(request: Request, agent: AnyAgent) -> dict[str, Any]:
    """End this console session (an API token is not ended here: revoke the agent)."""
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    ended = False
    if token.startswith(auth.SESSION_PREFIX):
        async with runtime_of(request).sessions() as s, s.begin():
            ended = await auth.end_session(s, token)
    return {"ok": True, "ended": ended}


@router.post("/me/password")
async def change_password(
    request: Request, body: PasswordChange, agent: AnyAgent
) -> dict[str, Any]:
    """An agent changes their own password (the current one first); every session ends."""
    async with runtime_of(request).sessions() as s, s.begin():
        me = await s.get(Agent, agent.id)
        assert me is not None
        if me.email is None or await auth.verify_login(s, me.email, body.current) is None:
            raise ApiError(403, "forbidden", "the current password is wrong")
        await _set(s, me, body.new)
    return {"ok": True}


@router.put("/agents/{agent_id}/password")
async def reset_password(
    request: Request, agent_id: int, body: PasswordReset, agent: Admin
) -> dict[str, Any]:
    """An admin sets a password, or a random temporary one (in this answer only); the
    agent's sessions end. The agent needs an email address to sign in with."""
    password = body.password or auth.new_password()
    async with runtime_of(request).sessions() as s, s.begin():
        target = await s.get(Agent, agent_id)
        if target is None:
            raise ApiError(404, "not_found", f"agent {agent_id} not found")
        if not target.email:
            raise ApiError(409, "conflict", f"agent {agent_id} has no email to sign in with")
        await _set(s, target, password)
    return {"ok": True, **({} if body.password else {"password": password})}


async def _set(s: Any, agent: Agent, password: str) -> None:
    try:
        await auth.set_password(s, agent, password)
    except auth.PasswordError as exc:
        raise ApiError(422, "weak_password", str(exc)) from None
