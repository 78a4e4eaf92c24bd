"""The schema. Changes go through Alembic migrations (storage/migrations)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets 64-bit ids
BigId = BigInteger().with_variant(Integer(), "sqlite")


class LifecyclePhase(StrEnum):
    PROSPECT = "prospect"
    ACTIVE = "active"
    AT_RISK = "at_risk"
    LOST = "lost"
    TERMINATED = "terminated"


class ConversationStatus(StrEnum):
    BOT = "bot"
    QUEUED = "queued"
    AGENT = "agent"
    CLOSED = "closed"


class Direction(StrEnum):
    IN = "in"
    OUT = "out"
    INTERNAL = "internal"


class CaseStatus(StrEnum):
    NEW = "new"
    IN_PROGRESS = "in_progress"
    WAITING_CUSTOMER = "waiting_customer"
    RESOLVED = "resolved"
    CLOSED = "closed"


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class InboxStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    IGNORED = "ignored"  # not for the engine (group chat, unknown update type): kept as record
    DEAD = "dead"  # could not be processed: kept with its error, the dead-letter queue


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}  # noqa: RUF012


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    phone: Mapped[str | None] = mapped_column(String(40), index=True)
    locale: Mapped[str] = mapped_column(String(8), default="en")
    timezone: Mapped[str | None] = mapped_column(String(64))
    lifecycle_phase: Mapped[str] = mapped_column(String(16), default=LifecyclePhase.ACTIVE)
    value_segment: Mapped[str | None] = mapped_column(String(1))
    source: Mapped[str | None] = mapped_column(String(200))
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    last_contact_at: Mapped[datetime | None] = mapped_column()


class Identity(Base):
    """A contact's address on one channel (Telegram user id, email address, ...)."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("channel", "external_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str | None] = mapped_column(String(200))
    reachable: Mapped[bool] = mapped_column(Boolean, default=True)
    unreachable_reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime | None] = mapped_column()


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        # at most one open conversation per thread; closed ones are history
        Index(
            "uq_conversations_open_thread",
            "channel",
            "thread_key",
            unique=True,
            sqlite_where=text("status != 'closed'"),
            postgresql_where=text("status != 'closed'"),
        ),
        Index("ix_conversations_queue", "status", "priority"),
        # a thread's newest conversation (reopen after resolve: bot/conversation/reopen.py)
        # without reading the table: a new thread's first message asked it of every row
        Index("ix_conversations_thread", "channel", "thread_key", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id"))
    channel: Mapped[str] = mapped_column(String(32))
    thread_key: Mapped[str] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(16), default=ConversationStatus.BOT)
    flow_state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    assignee: Mapped[str | None] = mapped_column(String(200))
    queued_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column()


class Touchpoint(Base):
    """Append-only contact history: every message in or out, and internal events."""

    __tablename__ = "touchpoints"
    __table_args__ = (
        # the dedupe key: a platform message is taken in once per channel
        Index(
            "uq_touchpoints_inbound_platform_id",
            "channel",
            "platform_message_id",
            unique=True,
            sqlite_where=text("direction = 'in' AND platform_message_id IS NOT NULL"),
            postgresql_where=text("direction = 'in' AND platform_message_id IS NOT NULL"),
        ),
        Index("ix_touchpoints_contact_time", "contact_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    direction: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(32))
    text: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    actor: Mapped[str] = mapped_column(String(200))
    platform_message_id: Mapped[str | None] = mapped_column(String(200))
    outbox_id: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Case(Base):
    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    reference: Mapped[str | None] = mapped_column(String(32), unique=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"))
    category: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text)
    order_reference: Mapped[str | None] = mapped_column(String(200))
    severity: Mapped[str] = mapped_column(String(16))
    desired_resolution: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(24), default=CaseStatus.NEW, index=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    sla_due_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column()
    closed_at: Mapped[datetime | None] = mapped_column()


class SurveyAnswer(Base):
    __tablename__ = "survey_answers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    survey: Mapped[str] = mapped_column(String(32))
    question: Mapped[str] = mapped_column(String(64))
    answer: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Consent(Base):
    """Append-only consent records; the newest per (contact, purpose) is in force."""

    __tablename__ = "consents"
    __table_args__ = (Index("ix_consents_contact_purpose", "contact_id", "purpose", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    purpose: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str | None] = mapped_column(String(32))
    granted: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(200))
    text_shown: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboxMessage(Base):
    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "status", "next_attempt_at"),
        Index("ix_outbox_recipient", "channel", "recipient_id", "status", "id"),
        # the dispatcher's pick, the oldest unsent row per recipient, reads only these
        Index(
            "ix_outbox_unfinished",
            "channel",
            "recipient_id",
            "id",
            postgresql_where=text("status IN ('pending', 'sending')"),
            sqlite_where=text("status IN ('pending', 'sending')"),
        ),
        # ... and the claim's window, the oldest unsent rows (storage/queries.py heads)
        Index(
            "ix_outbox_unfinished_id",
            "id",
            postgresql_where=text("status IN ('pending', 'sending')"),
            sqlite_where=text("status IN ('pending', 'sending')"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"))
    identity_id: Mapped[int | None] = mapped_column(ForeignKey("identities.id"))
    channel: Mapped[str] = mapped_column(String(32))
    recipient_id: Mapped[str] = mapped_column(String(320))
    thread_key: Mapped[str] = mapped_column(String(320))
    body: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    leased_until: Mapped[datetime | None] = mapped_column()
    leased_by: Mapped[str | None] = mapped_column(String(32))  # boot id (bot/delivery/leases.py)
    last_error: Mapped[str | None] = mapped_column(String(1000))
    platform_message_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()


class InboxUpdate(Base):
    """Raw platform updates persisted before they are acknowledged, processed afterwards."""

    __tablename__ = "inbox"
    __table_args__ = (
        UniqueConstraint("channel", "dedupe_key"),
        Index("ix_inbox_pending", "status", "id"),
        Index("ix_inbox_partition", "channel", "partition_key", "status", "id"),
        # the worker's pick, the oldest unfinished row per chat, reads only these
        Index(
            "ix_inbox_unfinished",
            "channel",
            "partition_key",
            "id",
            postgresql_where=text("status IN ('pending', 'processing')"),
            sqlite_where=text("status IN ('pending', 'processing')"),
        ),
        Index(
            "ix_inbox_unfinished_id",
            "id",
            postgresql_where=text("status IN ('pending', 'processing')"),
            sqlite_where=text("status IN ('pending', 'processing')"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    dedupe_key: Mapped[str] = mapped_column(String(200))
    partition_key: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default=InboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    leased_until: Mapped[datetime | None] = mapped_column()
    leased_by: Mapped[str | None] = mapped_column(String(32))  # boot id (bot/delivery/leases.py)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column()


class AgentRole(StrEnum):
    AGENT = "agent"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"


class Agent(Base):
    """A person answering customers. The API token is stored only as a SHA-256 hash."""

    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(16), default=AgentRole.AGENT)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # the console's sign-in (email + password): an Argon2id hash, None without a password
    password_hash: Mapped[str | None] = mapped_column(String(200))
    slack_user_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime | None] = mapped_column()


class AgentSession(Base):
    """A console sign-in by password: only the SHA-256 of its random token is stored. It
    ends when unused for the idle time, at expires_at in any case, on sign-out, and when
    the agent's password is reset or the agent revoked (bot/desk/auth.py)."""

    __tablename__ = "agent_sessions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class SignInAttempt(Base):
    """A console sign-in attempt by email and password, kept for the throttle's window so
    that every worker counts the same attempts; the address only as a SHA-256 hash (people
    type passwords into the email field). A successful sign-in removes its address's rows."""

    __tablename__ = "sign_in_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    address_hash: Mapped[str] = mapped_column(String(64), index=True)
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class CannedReply(Base):
    """A prepared answer agents insert with `/short_code` in the reply box; admins keep them."""

    __tablename__ = "canned_replies"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    short_code: Mapped[str] = mapped_column(String(64), unique=True)
    text: Mapped[str] = mapped_column(Text)
    created_by: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AgentCard(Base):
    """A card an agent-facing channel posted for a conversation (the Slack agent channel's
    escalation card): where to update it, and the thread under it where agents answer.
    A conversation escalated twice has two cards; the newest is the live one."""

    __tablename__ = "agent_cards"
    __table_args__ = (UniqueConstraint("channel", "container", "message_ref"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    channel: Mapped[str] = mapped_column(String(32))  # the adapter: "slack"
    container: Mapped[str] = mapped_column(String(200))  # Slack: the agent channel's id
    message_ref: Mapped[str] = mapped_column(String(200))  # Slack: the card message's ts
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AgentCardMessage(Base):
    """A message the bot posted in a card's thread (a customer message mirrored there):
    kept so that erasure and retention can delete it in the agent channel (bot/crm/gdpr.py)."""

    __tablename__ = "agent_card_messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    card_id: Mapped[int] = mapped_column(ForeignKey("agent_cards.id"), index=True)
    message_ref: Mapped[str] = mapped_column(String(200))  # Slack: the message's ts
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EmailMailbox(Base):
    """IMAP progress of one mailbox folder: the highest UID taken into the inbox, valid only
    while the folder's UIDVALIDITY stays the same (channels/email/imap.py)."""

    __tablename__ = "email_mailboxes"

    mailbox: Mapped[str] = mapped_column(String(500), primary_key=True)  # user@host:port/folder
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class EmailMessageRef(Base):
    """Message-IDs of the mails in an email thread, ours and the customer's: a reply's
    In-Reply-To / References find the thread (channels/email/adapter.py)."""

    __tablename__ = "email_messages"
    __table_args__ = (Index("ix_email_messages_thread", "thread_key", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[str] = mapped_column(String(500), unique=True)
    thread_key: Mapped[str] = mapped_column(String(320))
    address: Mapped[str] = mapped_column(String(320))  # the customer's address
    direction: Mapped[str] = mapped_column(String(8))
    subject: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Order(Base):
    """A customer's order, imported from the shop (bot/crm/importer.py): the data behind the
    customer value (RFM, lifetime value, segment) and the lifecycle. Amounts in cents."""

    __tablename__ = "orders"
    __table_args__ = (Index("ix_orders_contact_time", "contact_id", "ordered_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(200), unique=True)  # the shop's order id
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    ordered_at: Mapped[datetime] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="completed")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CampaignDefinition(Base):
    """A campaign defined through the API or CLI (config.yaml's own live in the file; a
    stored one with the same name overrides it). `definition` is bot.campaigns.definitions's
    CampaignSettings as JSON."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    definition: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CampaignRun(Base):
    """One run of a campaign. The run key names the firing (a cron time, "once", a manual
    run's stamp): a scheduler firing twice, or a run resumed after a crash, finds the same
    row and so the same deliveries."""

    __tablename__ = "campaign_runs"
    __table_args__ = (UniqueConstraint("campaign", "run_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign: Mapped[str] = mapped_column(String(100), index=True)
    run_key: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running, done
    targeted: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()


class CampaignDelivery(Base):
    """At most one per (run, contact), and one sent per (campaign, subject) — the subject
    is what the message is about, e.g. the resolved case a CSAT survey asks about.
    status: sent, skipped (reason: no_consent, opted_out, capped, unreachable, busy, ...)
    or deferred (quiet hours: a resumed run tries again)."""

    __tablename__ = "campaign_deliveries"
    __table_args__ = (
        UniqueConstraint("run_id", "contact_id"),
        Index(
            "uq_campaign_deliveries_subject",
            "campaign",
            "subject",
            unique=True,
            sqlite_where=text("subject IS NOT NULL AND status = 'sent'"),
            postgresql_where=text("subject IS NOT NULL AND status = 'sent'"),
        ),
        Index("ix_campaign_deliveries_contact_sent", "contact_id", "status", "sent_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("campaign_runs.id"))
    campaign: Mapped[str] = mapped_column(String(100), index=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    subject: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(32))
    channel: Mapped[str | None] = mapped_column(String(32))
    flow: Mapped[str | None] = mapped_column(String(32))
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"))
    outbox_id: Mapped[int | None] = mapped_column(BigId)  # the first message sent
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()


class DeadLetter(Base):
    """Work that could not be done, kept with its error for a person to look at: an inbound
    message whose flow raised (the customer got an apology and a human instead), or a raw
    update the inbox gave up on. Nothing is redelivered from here automatically."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source: Mapped[str] = mapped_column(String(16))  # engine, inbox
    channel: Mapped[str] = mapped_column(String(32))
    reference: Mapped[str | None] = mapped_column(String(200))  # platform id / inbox row id
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"), index=True)
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"))
    error: Mapped[str] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)  # the traceback
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class IdentityLinkCode(Base):
    """A one-time code mailed to an address a customer claims on another channel. Only the
    code's SHA-256 is kept; entering it on `identity_id` within its lifetime merges."""

    __tablename__ = "identity_link_codes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    code_hash: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column()


class IdentityLinkAddress(Base):
    """An address customers asked to link (bot/conversation/linking.py): the wrong codes entered
    for it in a row, by any chat identity. At `identity_link.max_failures_per_address` it
    is locked for linking until a person unlocks it; a verified link resets the count."""

    __tablename__ = "identity_link_addresses"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # lower case
    failures: Mapped[int] = mapped_column(Integer, default=0)
    locked_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class SchedulerJob(Base):
    """APScheduler 3's SQLAlchemyJobStore table, declared here so migrations own it."""

    __tablename__ = "apscheduler_jobs"

    id: Mapped[str] = mapped_column(String(191), primary_key=True)
    next_run_time: Mapped[float | None] = mapped_column(Float(25), index=True)
    job_state: Mapped[bytes] = mapped_column(LargeBinary)


class FloodMark(Base):
    """Flood control shared by the workers on one PostgreSQL (bot/delivery/flood.py): per sender,
    the time (epoch seconds, the database's clock) from which its next message is on time.
    The key is a SHA-256 of channel and partition, not the chat id; rows idle an hour go."""

    __tablename__ = "flood_marks"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    tat: Mapped[float] = mapped_column(Float(53), index=True)
