"""The agent REST API, `/api/v1`: bearer tokens, roles, pagination, JSON errors.

Roles: agent (work their own conversations, read contacts, update cases), supervisor
(also act on colleagues' conversations, merge contacts, unlock link addresses, see the
agents), admin (also create and revoke agents, GDPR). docs/security.md has the model.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy import String, cast, func, or_, select
from starlette.exceptions import HTTPException

from bot.desk import auth
from bot.desk.service import DeskError, Forbidden, NotFound, Page
from bot.runtime import Runtime
from storage import queries
from storage.models import (
    Agent,
    AgentRole,
    Case,
    CaseStatus,
    Contact,
    Conversation,
    Identity,
    Touchpoint,
    utcnow,
)

RANK = {AgentRole.AGENT: 0, AgentRole.SUPERVISOR: 1, AgentRole.ADMIN: 2}

# A token revoked by the CLI or on another worker is noticed by the stream's own check, at
# most this late; revoked through this worker's API, the stream ends at once (the bus).
RECHECK_SECONDS = 5.0
HEARTBEAT_SECONDS = 15.0
REVOKED = "agent_revoked"  # a bus event for the streams, never sent to a client


class ApiError(DeskError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def runtime_of(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def authenticate(request: Request) -> Agent:
    """The agent whose bearer token the request carries, or ApiError 401."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <token>'")
    rt = runtime_of(request)
    token, now = token.strip(), utcnow()
    agent: Agent | None = None
    async with rt.sessions() as s, s.begin():  # commits an expired session's deletion too
        if token.startswith(auth.SESSION_PREFIX):  # a console sign-in by password
            idle = timedelta(hours=rt.settings.desk.session_idle_hours)
            found = await auth.agent_by_session(s, token, now, idle)
            agent = found[0] if found is not None else None
        else:
            agent = await auth.agent_by_token(s, token)
        if agent is not None:
            agent.last_seen_at = now
    if agent is None and token.startswith(auth.SESSION_PREFIX):
        raise ApiError(401, "session_expired", "the session has ended; sign in again")
    if agent is None:
        raise ApiError(401, "unauthorized", "unknown or revoked token")
    return agent


class BearerRoute(APIRoute):
    """A route that checks the bearer token before FastAPI reads the body (it reads it
    before any dependency runs): an unauthenticated client cannot make the server read,
    or even receive past its buffers, a large body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def authenticated(request: Request) -> Response:
            request.state.agent = await authenticate(request)
            return await handler(request)

        return authenticated


# the OpenAPI schema's security scheme, so /docs has an "Authorize" button for the token
BEARER = HTTPBearer(
    auto_error=False,
    bearerFormat="cic_…",
    description="An agent's API token (cicbot agents add), or a console session's"
    " (POST /api/v1/auth/login)",
)


async def current_agent(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> Agent:
    agent: Agent | None = getattr(request.state, "agent", None)  # BearerRoute's
    return agent if agent is not None else await authenticate(request)


def role(minimum: AgentRole) -> Callable[[Agent], Coroutine[Any, Any, Agent]]:
    async def check(agent: Annotated[Agent, Depends(current_agent)]) -> Agent:
        if RANK[AgentRole(agent.role)] < RANK[minimum]:
            raise Forbidden(f"this needs the role {minimum} (you are {agent.role})")
        return agent

    return check


AnyAgent = Annotated[Agent, Depends(current_agent)]
Supervisor = Annotated[Agent, Depends(role(AgentRole.SUPERVISOR))]
Admin = Annotated[Agent, Depends(role(AgentRole.ADMIN))]
Limit = Annotated[int, Query(ge=1, le=200)]
Offset = Annotated[int, Query(ge=0)]


# --- JSON shapes ---------------------------------------------------------------


def page(items: Sequence[dict[str, Any]], total: int, limit: int, offset: int) -> dict[str, Any]:
    return {"items": list(items), "total": total, "limit": limit, "offset": offset}


def contact_json(c: Contact) -> dict[str, Any]:
    return {
        "id": c.id,
        "name": c.name,
        "email": c.email,
        "phone": c.phone,
        "locale": c.locale,
        "lifecycle_phase": c.lifecycle_phase,
        "value_segment": c.value_segment,
        "source": c.source,
        "attributes": c.attributes,
        "created_at": c.created_at.isoformat(),
        "last_contact_at": c.last_contact_at.isoformat() if c.last_contact_at else None,
    }


def conversation_json(c: Conversation, contact: Contact | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": c.id,
        "channel": c.channel,
        "status": c.status,
        "priority": c.priority,
        "assignee": int(c.assignee) if c.assignee else None,
        "contact_id": c.contact_id,
        "queued_at": c.queued_at.isoformat() if c.queued_at else None,
        "created_at": c.created_at.isoformat(),
        "updated_at": c.updated_at.isoformat(),
    }
    if contact is not None:
        data["contact"] = {
            "id": contact.id,
            "name": contact.name,
            "value_segment": contact.value_segment,
            "locale": contact.locale,
        }
    return data


def touchpoint_json(t: Touchpoint) -> dict[str, Any]:
    payload = {k: v for k, v in (t.payload or {}).items() if k != "raw"}
    return {
        "id": t.id,
        "conversation_id": t.conversation_id,
        "channel": t.channel,
        "direction": t.direction,
        "kind": t.kind,
        "actor": t.actor,
        "text": t.text,
        "payload": payload,
        "created_at": t.created_at.isoformat(),
    }


def case_json(c: Case) -> dict[str, Any]:
    return {
        "reference": c.reference,
        "status": c.status,
        "category": c.category,
        "description": c.description,
        "order_reference": c.order_reference,
        "severity": c.severity,
        "desired_resolution": c.desired_resolution,
        "priority": c.priority,
        "contact_id": c.contact_id,
        "conversation_id": c.conversation_id,
        "sla_due_at": c.sla_due_at.isoformat() if c.sla_due_at else None,
        "created_at": c.created_at.isoformat(),
        "resolved_at": c.resolved_at.isoformat() if c.resolved_at else None,
    }


def agent_json(a: Agent) -> dict[str, Any]:
    return {
        "id": a.id,
        "name": a.name,
        "email": a.email,
        "role": a.role,
        "active": a.active,
        "slack_user_id": a.slack_user_id,
        "has_password": a.password_hash is not None,
        "last_seen_at": a.last_seen_at.isoformat() if a.last_seen_at else None,
    }


class Text(BaseModel):
    text: str = Field(min_length=1, max_length=20_000)


class Transfer(BaseModel):
    agent_id: int


class CaseUpdate(BaseModel):
    status: CaseStatus


class NewAgent(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    role: AgentRole = AgentRole.AGENT
    email: str | None = Field(default=None, max_length=320)
    slack_user_id: str | None = Field(default=None, max_length=64)
    password: str | None = Field(default=None, max_length=auth.MAX_PASSWORD)


router = APIRouter(prefix="/api/v1", tags=["agent desk"], route_class=BearerRoute)


@router.get("/me")
async def me(agent: AnyAgent) -> dict[str, Any]:
    return agent_json(agent)


@router.get("/queue")
async def queue(
    request: Request, agent: AnyAgent, limit: Limit = 50, offset: Offset = 0
) -> dict[str, Any]:
    """Waiting conversations, most urgent first."""
    result: Page = await runtime_of(request).desk.queue(limit, offset)
    items = [conversation_json(c, k) for c, k in result.items]
    return page(items, result.total, limit, offset)


@router.get("/conversations/mine")
async def mine(request: Request, agent: AnyAgent) -> dict[str, Any]:
    rows = await runtime_of(request).desk.mine(agent)
    return page([conversation_json(c, k) for c, k in rows], len(rows), len(rows), 0)


@router.get("/conversations/{conv_id}")
async def conversation(
    request: Request, conv_id: int, agent: AnyAgent, limit: Limit = 200
) -> dict[str, Any]:
    """The conversation with its customer's whole cross-channel timeline (newest `limit`)."""
    rt = runtime_of(request)
    conv, contact, cases = await rt.desk.conversation(conv_id)
    async with rt.sessions() as s:
        timeline = await queries.timeline(s, contact.id, limit=limit, newest_first=True)
        identities = await queries.identities_of(s, contact.id)
    return {
        **conversation_json(conv, contact),
        "contact": contact_json(contact),
        "identities": [
            {"channel": i.channel, "external_id": i.external_id, "reachable": i.reachable}
            for i in identities
        ],
        "cases": [case_json(c) for c in cases],
        "timeline": [touchpoint_json(t) for t in reversed(timeline)],
    }


@router.post("/conversations/{conv_id}/claim")
async def claim(request: Request, conv_id: int, agent: AnyAgent) -> dict[str, Any]:
    await runtime_of(request).desk.claim(agent, conv_id)
    return {"ok": True, "conversation_id": conv_id, "assignee": agent.id}


@router.post("/conversations/{conv_id}/reply")
async def reply(request: Request, conv_id: int, body: Text, agent: AnyAgent) -> dict[str, Any]:
    outbox_id = await runtime_of(request).desk.reply(agent, conv_id, body.text)
    return {"ok": True, "outbox_id": outbox_id}


@router.post("/conversations/{conv_id}/note")
async def note(request: Request, conv_id: int, body: Text, agent: AnyAgent) -> dict[str, Any]:
    await runtime_of(request).desk.note(agent, conv_id, body.text)
    return {"ok": True}


@router.post("/conversations/{conv_id}/resolve")
async def resolve(request: Request, conv_id: int, agent: AnyAgent) -> dict[str, Any]:
    refs = await runtime_of(request).desk.resolve(agent, conv_id)
    return {"ok": True, "resolved_cases": refs}


@router.post("/conversations/{conv_id}/handback")
async def handback(request: Request, conv_id: int, agent: AnyAgent) -> dict[str, Any]:
    await runtime_of(request).desk.hand_back(agent, conv_id)
    return {"ok": True}


@router.post("/conversations/{conv_id}/transfer")
async def transfer(
    request: Request, conv_id: int, body: Transfer, agent: AnyAgent
) -> dict[str, Any]:
    rt = runtime_of(request)
    async with rt.sessions() as s:
        to = await s.get(Agent, body.agent_id)
    if to is None:
        raise NotFound(f"agent {body.agent_id} not found")
    await rt.desk.transfer(agent, conv_id, to)
    return {"ok": True, "assignee": to.id}


@router.get("/contacts")
async def contacts(
    request: Request, agent: AnyAgent, q: str = "", limit: Limit = 50, offset: Offset = 0
) -> dict[str, Any]:
    """Search by name, email, phone or a channel id."""
    cond = []
    if q.strip():
        like = f"%{q.strip().lower()}%"
        by_identity = select(Identity.contact_id).where(func.lower(Identity.external_id).like(like))
        cond.append(
            or_(
                func.lower(Contact.name).like(like),
                func.lower(Contact.email).like(like),
                Contact.phone.like(like),
                cast(Contact.id, String) == q.strip(),
                Contact.id.in_(by_identity),
            )
        )
    async with runtime_of(request).sessions() as s:
        total = await s.scalar(select(func.count()).select_from(Contact).where(*cond))
        rows = (
            (
                await s.execute(
                    select(Contact)
                    .where(*cond)
                    .order_by(Contact.id.desc())
                    .limit(limit)
                    .offset(offset)
                )
            )
            .scalars()
            .all()
        )
    return page([contact_json(c) for c in rows], int(total or 0), limit, offset)


@router.get("/contacts/{contact_id}")
async def contact(request: Request, contact_id: int, agent: AnyAgent) -> dict[str, Any]:
    async with runtime_of(request).sessions() as s:
        found = await s.get(Contact, contact_id)
        if found is None:
            raise NotFound(f"contact {contact_id} not found")
        identities = await queries.identities_of(s, contact_id)
        cases = await queries.cases_of_contact(s, contact_id)
    return {
        **contact_json(found),
        "cases": [case_json(c) for c in cases],
        "identities": [
            {"channel": i.channel, "external_id": i.external_id, "reachable": i.reachable}
            for i in identities
        ],
    }


@router.get("/contacts/{contact_id}/timeline")
async def timeline(
    request: Request,
    contact_id: int,
    agent: AnyAgent,
    limit: Limit = 50,
    offset: Offset = 0,
    channel: str | None = None,
    kind: str | None = None,
) -> dict[str, Any]:
    """Every touchpoint of the contact across channels, newest first."""
    cond = [Touchpoint.contact_id == contact_id]
    if channel:
        cond.append(Touchpoint.channel == channel)
    if kind:
        cond.append(Touchpoint.kind == kind)
    async with runtime_of(request).sessions() as s:
        if await s.get(Contact, contact_id) is None:
            raise NotFound(f"contact {contact_id} not found")
        total = await s.scalar(select(func.count()).select_from(Touchpoint).where(*cond))
        rows = (
            (
                await s.execute(
                    select(Touchpoint)
                    .where(*cond)
                    .order_by(Touchpoint.id.desc())
                    .limit(limit)
                    .offset(offset)
                )
            )
            .scalars()
            .all()
        )
    return page([touchpoint_json(t) for t in rows], int(total or 0), limit, offset)


@router.get("/cases")
async def cases(
    request: Request,
    agent: AnyAgent,
    status: CaseStatus | None = None,
    severity: str | None = None,
    category: str | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> dict[str, Any]:
    cond = []
    if status:
        cond.append(Case.status == status)
    if severity:
        cond.append(Case.severity == severity)
    if category:
        cond.append(Case.category == category)
    async with runtime_of(request).sessions() as s:
        total = await s.scalar(select(func.count()).select_from(Case).where(*cond))
        rows = (
            (
                await s.execute(
                    select(Case)
                    .where(*cond)
                    .order_by(Case.priority.desc(), Case.id.desc())
                    .limit(limit)
                    .offset(offset)
                )
            )
            .scalars()
            .all()
        )
    return page([case_json(c) for c in rows], int(total or 0), limit, offset)


@router.get("/cases/{reference}")
async def case(request: Request, reference: str, agent: AnyAgent) -> dict[str, Any]:
    async with runtime_of(request).sessions() as s:
        found = await s.execute(select(Case).where(Case.reference == reference))
        row = found.scalar_one_or_none()
    if row is None:
        raise NotFound(f"case {reference} not found")
    return case_json(row)


@router.patch("/cases/{reference}")
async def update_case(
    request: Request, reference: str, body: CaseUpdate, agent: AnyAgent
) -> dict[str, Any]:
    """Change the status; the customer is told in their language on their channel."""
    updated = await runtime_of(request).desk.set_case_status(agent, reference, body.status)
    return case_json(updated)


@router.get("/agents")
async def agents(request: Request, agent: Supervisor) -> dict[str, Any]:
    async with runtime_of(request).sessions() as s:
        rows = await auth.list_agents(s)
    return page([agent_json(a) for a in rows], len(rows), len(rows), 0)


@router.post("/agents", status_code=201)
async def add_agent(request: Request, body: NewAgent, agent: Admin) -> dict[str, Any]:
    """Create an agent; the token is in this answer only."""
    async with runtime_of(request).sessions() as s, s.begin():
        try:
            created, token = await auth.create_agent(
                s,
                body.name,
                body.role,
                email=body.email,
                slack_user_id=body.slack_user_id,
                password=body.password,
            )
        except auth.PasswordError as exc:
            raise ApiError(422, "weak_password", str(exc)) from None
    return {**agent_json(created), "token": token}


@router.delete("/agents/{agent_id}")
async def revoke_agent(request: Request, agent_id: int, agent: Admin) -> dict[str, Any]:
    rt = runtime_of(request)
    async with rt.sessions() as s, s.begin():
        if not await auth.revoke(s, agent_id):
            raise NotFound(f"agent {agent_id} not found")
    rt.events.publish({"type": REVOKED, "id": agent_id})  # its open streams end now
    return {"ok": True}


@router.get("/events")
async def events(request: Request, agent: AnyAgent) -> StreamingResponse:
    """Server-sent events: `queue` and `conversation` changes, and a heartbeat. The stream
    ends when the agent is revoked."""
    rt = runtime_of(request)

    async def active() -> bool:
        async with rt.sessions() as s:
            return bool(await s.scalar(select(Agent.active).where(Agent.id == agent.id)))

    async def stream() -> AsyncIterator[str]:
        clock = asyncio.get_running_loop().time
        async with rt.events.subscribe() as q:
            yield "event: hello\ndata: {}\n\n"
            checked = beat = clock()
            while not await request.is_disconnected():
                try:
                    event = await asyncio.wait_for(q.get(), RECHECK_SECONDS)
                except TimeoutError:
                    event = None
                if event is not None and event["type"] == REVOKED:
                    if event["id"] == agent.id:
                        return
                    continue
                if event is None or clock() - checked >= 1.0:  # at most one query a second
                    if not await active():
                        return
                    checked = clock()
                if event is not None:
                    yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
                elif clock() - beat >= HEARTBEAT_SECONDS:
                    beat = clock()
                    yield ": heartbeat\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        {"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers
    )


def install(app: FastAPI) -> None:
    """Mount the API and make every error a JSON object {"error": {code, message}}."""
    app.include_router(router)

    @app.exception_handler(DeskError)
    async def desk_error(_: Request, exc: DeskError) -> JSONResponse:
        return _error(exc.status, exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"field": ".".join(str(p) for p in e["loc"][1:]), "message": e["msg"]}
            for e in exc.errors()
        ]
        return _error(422, "invalid_request", "the request is invalid", details=details)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", str(exc.detail))
