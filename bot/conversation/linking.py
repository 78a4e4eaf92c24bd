"""Verified email links: a one-time code is mailed to the address a customer claims on
another channel; typing it back on that channel links the email identity (docs/crm.md).

Runs inside the engine's transaction (bot/conversation/actions.py). The code exists in clear only in
the mail: the table keeps its SHA-256, the history a masked copy of the mail, and the
outbox row's copy is masked once the mail is sent (bot/delivery/dispatcher.py), or before that when
the code is used, dead or replaced. The mail is
addressed by the outbox row alone (no identity, no conversation), so nothing is attached
to the customer's contact before the code comes back, and no case reference of the
requesting conversation ends up in its subject.

Guessing: a code dies after `max_attempts` wrong entries, an identity and an address get a
few codes an hour, and wrong codes for one address count across every identity that asks
for it (`identity_link_addresses`): at `max_failures_per_address` (NIST SP 800-63B: at most
100) the address is locked for linking, with no time window, until a person unlocks it
(`unlock`: `cicbot link unlock`, `DELETE /api/v1/link-locks/{id}`). A verified link ends a
series of wrong codes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from bot.conversation.turn import Turn
from bot.crm.history import MergeError, merge_contacts
from flows.link import CODE_LENGTH
from flows.model import Reply
from flows.options import IdentityLinkOptions
from storage import queries
from storage.models import (
    Contact,
    Direction,
    Identity,
    IdentityLinkAddress,
    IdentityLinkCode,
    OutboxMessage,
    OutboxStatus,
)
from storage.queries import MASKED_TEXT, masked

log = logging.getLogger(__name__)
EMAIL = "email"
MASK = "•" * CODE_LENGTH


def code_hash(identity_id: int, email: str, code: str) -> str:
    """SHA-256 of the code, bound to who asked and for which address."""
    return hashlib.sha256(f"{identity_id}:{email}:{code}".encode()).hexdigest()


def mail_thread(code_id: int) -> str:
    return f"identity-link:{code_id}"


class IdentityLinker:
    def __init__(self, company: str, limits: IdentityLinkOptions | None = None) -> None:
        self.company = company
        self.limits = limits or IdentityLinkOptions()

    async def request(self, turn: Turn, email: str) -> None:
        """Mail a new code to `email` (replacing any earlier one), unless rate-limited.
        The reply is the same whether or not the address belongs to a customer."""
        s, ctx, now = turn.session, turn.ctx, turn.ctx.now
        if await is_locked(s, email):
            turn.note("link_code_refused", reason="address_locked")
            return self._end(turn, "link.locked")
        hour = now - timedelta(hours=1)
        by_identity = await _count(s, IdentityLinkCode.identity_id == turn.identity.id, hour)
        by_address = await _count(s, IdentityLinkCode.email == email, hour)
        if (
            by_identity >= self.limits.codes_per_identity_hour
            or by_address >= self.limits.codes_per_address_hour
        ):
            turn.note("link_code_refused", reason="rate_limit")
            turn.replies.append(Reply("link.rate_limited", ctx.t("link.rate_limited")))
            if await self._live(s, turn.identity.id, now):
                # the last code still works: keep waiting for it
                turn.replies.append(Reply("link.ask_code", ctx.t("link.ask_code")))
            else:
                turn.conversation.flow_state = {}
            return
        await self._retire(s, turn.identity.id, now)
        code = f"{secrets.randbelow(10**CODE_LENGTH):0{CODE_LENGTH}d}"
        row = IdentityLinkCode(
            contact_id=turn.contact.id,
            identity_id=turn.identity.id,
            email=email,
            code_hash=code_hash(turn.identity.id, email, code),
            attempts=0,
            created_at=now,
            expires_at=now + timedelta(minutes=self.limits.code_minutes),
        )
        s.add(row)
        await s.flush()
        minutes = self.limits.code_minutes
        params: dict[str, Any] = {"company": self.company, "minutes": minutes}
        masked = ctx.t("link.mail", code=MASK, **params)
        # the masked text rides along: the dispatcher swaps it in once the mail is sent,
        # _mask when the code is of no more use before that
        body = {
            "text": ctx.t("link.mail", code=code, **params),
            "locale": ctx.locale,
            MASKED_TEXT: masked,
        }
        out = await queries.enqueue(
            s,
            channel=EMAIL,
            recipient_id=email,
            thread_key=mail_thread(row.id),
            body=body,
            conversation_id=None,
            identity_id=None,
        )
        queries.add_touchpoint(
            s,
            contact_id=turn.contact.id,
            conversation_id=None,
            channel=EMAIL,
            direction=Direction.OUT,
            kind="message",
            actor="bot",
            text=masked,
            payload={"key": "link.mail", "to": email, "link_code_id": row.id},
            outbox_id=out,
        )
        turn.note("link_code_requested", email=email, link_code_id=row.id)
        log.info("identity link: code row %s mailed for identity %s", row.id, turn.identity.id)
        reply = ctx.t("link.code_sent", email=email, minutes=minutes)
        turn.replies.append(Reply("link.code_sent", reply))

    async def verify(self, turn: Turn, code: str) -> None:
        """Check `code` against this identity's newest code; link on a match."""
        s, ctx, now = turn.session, turn.ctx, turn.ctx.now
        q = (
            select(IdentityLinkCode)
            .where(IdentityLinkCode.identity_id == turn.identity.id)
            .order_by(IdentityLinkCode.id.desc())
            .limit(1)
            .with_for_update()
        )
        row = (await s.execute(q)).scalar_one_or_none()
        if row is None:
            return self._end(turn, "link.no_code")
        if await is_locked(s, row.email):
            await self._retire(s, turn.identity.id, now)
            return self._end(turn, "link.locked")
        if row.used_at is not None or row.expires_at <= now:
            await self._retire(s, turn.identity.id, now)
            return self._end(turn, "link.expired")
        if row.attempts >= self.limits.max_attempts:
            return self._end(turn, "link.code_dead")
        row.attempts += 1
        expected = code_hash(turn.identity.id, row.email, code)
        if not hmac.compare_digest(expected, row.code_hash):
            turn.note("link_code_failed", link_code_id=row.id, attempts=row.attempts)
            if await self._failed(s, row.email, now):
                turn.note("link_address_locked", link_code_id=row.id)
                return self._end(turn, "link.locked")
            left = self.limits.max_attempts - row.attempts
            if left <= 0:
                await _mask(s, row)
                return self._end(turn, "link.code_dead")
            turn.replies.append(Reply("link.wrong_code", ctx.t("link.wrong_code", left=left)))
            return None
        row.used_at = now
        await _mask(s, row)
        await s.execute(  # the owner got in: a series of wrong codes ends here
            update(IdentityLinkAddress)
            .where(IdentityLinkAddress.email == row.email.lower())
            .values(failures=0, updated_at=now)
        )
        turn.conversation.flow_state = {}
        await self._link(turn, row)
        return None

    async def _failed(self, s: AsyncSession, email: str, now: datetime) -> bool:
        """Count a wrong code for the address, whoever typed it (one statement: identities
        guessing at once all count); True if this one locks it."""
        insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
        table = IdentityLinkAddress
        stmt = (
            insert(table)
            .values(email=email.lower(), failures=1, created_at=now, updated_at=now)
            .on_conflict_do_update(
                index_elements=["email"],
                set_={"failures": table.failures + 1, "updated_at": now},
            )
            .returning(table.id, table.failures, table.locked_at)
        )
        row_id, failures, locked_at = (await s.execute(stmt)).one()
        if locked_at is not None or failures < self.limits.max_failures_per_address:
            return locked_at is not None
        await s.execute(update(table).where(table.id == row_id).values(locked_at=now))
        # every live code for the address dies with the lock, whoever asked for it
        codes = await s.execute(select(IdentityLinkCode).where(IdentityLinkCode.email == email))
        for code in codes.scalars():
            if code.used_at is None and code.expires_at > now:
                code.expires_at = now
            await _mask(s, code)
        log.warning("identity link: an address was locked after %d wrong codes", failures)
        return True

    async def _profile_match(self, turn: Turn, email: str) -> int | None:
        """The one other contact whose profile has this address (an imported customer
        record); with several, none: a person decides (a note in the history says so)."""
        ids = (
            (
                await turn.session.execute(
                    select(Contact.id)
                    .where(func.lower(Contact.email) == email, Contact.id != turn.contact.id)
                    .order_by(Contact.id)
                    .limit(5)
                )
            )
            .scalars()
            .all()
        )
        if len(ids) > 1:
            turn.note("link_ambiguous", email=email, contact_ids=list(ids))
            return None
        return ids[0] if ids else None

    async def _link(self, turn: Turn, row: IdentityLinkCode) -> None:
        s, ctx, contact = turn.session, turn.ctx, turn.contact
        email = row.email
        found = await queries.get_identity(s, EMAIL, email)
        merged: int | None = None
        if found is None:
            # no mail from this address yet: an imported contact may hold it in its profile
            merged = await self._profile_match(turn, email)
        else:
            merged = found.contact_id if found.contact_id != contact.id else None
        reply = "link.already" if found is not None and merged is None else "link.linked"
        if merged is not None:
            try:
                await merge_contacts(
                    s,
                    contact.id,
                    merged,
                    actor=f"customer:{turn.identity.channel}",
                    reason="verified email link",
                )
            except MergeError as exc:  # the other contact was erased meanwhile
                turn.note("link_failed", email=email, reason=exc.code)
                turn.replies.append(Reply("link.failed", ctx.t("link.failed")))
                return
            if found is not None:
                await s.refresh(found)  # merge_contacts moved it with a bulk update
        if found is None:
            found = Identity(contact_id=contact.id, channel=EMAIL, external_id=email)
            s.add(found)
            await s.flush()
        if not contact.email:
            contact.email = email
        audit = {
            "email": email,
            "identity_id": turn.identity.id,
            "email_identity_id": found.id,
            "merged_contact_id": merged,
            "link_code_id": row.id,
            "verified_by": "email_code",
        }
        # the audit on both sides of the link: the asking channel's conversation, the email
        turn.note("identity_linked", **audit)
        queries.add_touchpoint(
            s,
            contact_id=contact.id,
            conversation_id=None,
            channel=EMAIL,
            direction=Direction.INTERNAL,
            kind="identity_linked",
            actor="bot",
            payload={**audit, "linked_channel": turn.identity.channel},
        )
        turn.replies.append(Reply(reply, ctx.t(reply, email=email)))

    async def _live(self, s: AsyncSession, identity_id: int, now: datetime) -> bool:
        q = select(IdentityLinkCode.id).where(
            IdentityLinkCode.identity_id == identity_id,
            IdentityLinkCode.used_at.is_(None),
            IdentityLinkCode.expires_at > now,
            IdentityLinkCode.attempts < self.limits.max_attempts,
        )
        return (await s.execute(q.limit(1))).first() is not None

    def _end(self, turn: Turn, key: str) -> None:
        turn.conversation.flow_state = {}
        turn.replies.append(Reply(key, turn.ctx.t(key)))

    async def _retire(self, s: AsyncSession, identity_id: int, now: datetime) -> None:
        """End the identity's live codes (a new one replaces them) and mask the mails of
        every code that can no longer be used."""
        rows = (
            (
                await s.execute(
                    select(IdentityLinkCode).where(IdentityLinkCode.identity_id == identity_id)
                )
            )
            .scalars()
            .all()
        )
        for row in rows:
            if row.used_at is None and row.expires_at > now:
                row.expires_at = now
            await _mask(s, row)


async def _count(s: AsyncSession, cond: Any, since: datetime) -> int:
    q = select(func.count()).select_from(IdentityLinkCode)
    return int(await s.scalar(q.where(cond, IdentityLinkCode.created_at > since)) or 0)


async def _mask(s: AsyncSession, code: IdentityLinkCode) -> None:
    """Replace the code in its outbox row; a mail not sent yet is not sent any more."""
    q = select(OutboxMessage).where(
        OutboxMessage.channel == EMAIL,
        OutboxMessage.recipient_id == code.email,  # the outbox's recipient index
        OutboxMessage.thread_key == mail_thread(code.id),
    )
    out = (await s.execute(q)).scalar_one_or_none()
    if out is None or MASKED_TEXT not in out.body:
        return
    values: dict[str, Any] = {"body": masked(out.body)}
    if out.status == OutboxStatus.PENDING:
        values.update(status=OutboxStatus.FAILED, last_error="superseded link code")
    await s.execute(update(OutboxMessage).where(OutboxMessage.id == out.id).values(values))


async def is_locked(s: AsyncSession, email: str) -> bool:
    q = select(IdentityLinkAddress.locked_at).where(IdentityLinkAddress.email == email.lower())
    return await s.scalar(q) is not None


async def locked_addresses(s: AsyncSession) -> list[IdentityLinkAddress]:
    q = select(IdentityLinkAddress).where(IdentityLinkAddress.locked_at.is_not(None))
    return list((await s.execute(q.order_by(IdentityLinkAddress.locked_at))).scalars())


async def unlock(
    s: AsyncSession, email: str | None = None, *, lock_id: int | None = None, actor: str
) -> bool:
    """Lift a lock (a person checked the address is the customer's): the count starts
    again. False if that address (or row) is not locked."""
    table = IdentityLinkAddress
    cond = table.id == lock_id if lock_id is not None else table.email == (email or "").lower()
    result = await s.execute(delete(table).where(cond, table.locked_at.is_not(None)))
    done = bool(getattr(result, "rowcount", 0))
    if done:
        log.info("identity link: an address lock was lifted by %s", actor)
    return done
