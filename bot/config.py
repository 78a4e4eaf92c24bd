"""Settings: config.yaml validated by pydantic, overridable by CICBOT_* environment variables.

Precedence: environment > YAML > defaults. `CICBOT_CONFIG` names the YAML file.
Secret fields may only come from the environment; one found in the YAML stops start-up.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bot.campaigns.definitions import CampaignSettings
from flows.hours import BusinessHours
from flows.options import (
    ComplaintOptions,
    IdentityLinkOptions,
    KnowledgeBaseOptions,
    WinbackOptions,
)

DEFAULT_CONFIG = "config.yaml"


class ConfigError(Exception):
    """config.yaml or the environment is invalid; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseSettings(Section):
    url: str = "sqlite+aiosqlite:///data/cicbot.db"
    auto_migrate: bool = True
    echo: bool = False


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_format: Literal["text", "json"] = "text"  # json: one object per line (bot/ops/logs.py)
    # GET /metrics from elsewhere than loopback needs this bearer token
    metrics_token: SecretStr | None = None  # CICBOT_SERVER__METRICS_TOKEN
    # a larger request body is refused (413) before it is read; CSV imports and webhooks
    # have their own limits (64 MiB, telegram/slack.max_body_bytes)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    # peers whose X-Forwarded-For / X-Forwarded-Proto are believed (addresses or networks);
    # every other peer is the client itself
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return value


# scheme://host[:port] only: the values also go into the page's CSP (frame-ancestors)
ORIGIN = re.compile(r"^https?://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")


class WebChatSettings(Section):
    """The built-in web chat (channels/webchat/adapter.py, docs/webchat.md)."""

    # signs the visitors' session cookies; without it a key is generated once and kept
    # in key_file (one machine); set it when several machines serve the chat
    secret: SecretStr | None = None  # CICBOT_WEBCHAT__SECRET, at least 32 characters
    key_file: str = "data/webchat.key"
    # origins besides the page's own whose pages may open the chat socket and frame the page
    allowed_origins: list[str] = Field(default_factory=list)
    max_sockets: int = Field(default=1000, ge=1)  # open chat sockets of this process
    max_sockets_per_address: int = Field(default=20, ge=1)  # ... from one client address
    # new conversations: a burst of this many, then refilling evenly over the period
    conversations_per_minute: int = Field(default=60, ge=1)  # all visitors together
    conversations_per_address_hour: int = Field(default=10, ge=1)  # from one client address
    messages_per_address_second: float = Field(default=5.0, gt=0)  # faster ones wait
    # before the first message, the welcome view asks for a name and an email address,
    # both optional; given, they go into the new contact (as Chatwoot's pre-chat form)
    prechat_form: bool = True

    @field_validator("secret")
    @classmethod
    def _secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if _given(value) and len(_given(value)) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not ORIGIN.match(v)]
        if bad:
            raise ValueError(
                f"must be origins such as https://shop.example.com (no path), not {bad[0]!r}"
            )
        return [v.lower() for v in value]


class CompanySettings(Section):
    name: str = "cicbot"
    default_locale: Literal["de", "en"] = "en"
    timezone: str = "Europe/Berlin"


class DispatcherSettings(Section):
    max_attempts: int = Field(default=8, ge=1, le=100)
    base_backoff_seconds: float = Field(default=1.0, gt=0)
    max_backoff_seconds: float = Field(default=300.0, gt=0)
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    concurrency: int = Field(default=16, ge=1, le=1000)
    # an outbox or inbox row's lease (bot/delivery/leases.py): a live worker renews it every
    # heartbeat, a dead worker's runs out after lease_seconds
    lease_seconds: float = Field(default=10.0, gt=0)
    heartbeat_seconds: float = Field(default=2.0, gt=0)
    # inbox: attempts for a row whose processing raised, and in all once a process died
    # while handling it (an update that kills the process is parked, not retried forever)
    inbox_max_attempts: int = Field(default=5, ge=1, le=100)
    inbox_max_crashes: int = Field(default=3, ge=1, le=100)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> DispatcherSettings:
        if self.heartbeat_seconds * 3 > self.lease_seconds:
            raise ValueError("heartbeat_seconds must be at most a third of lease_seconds")
        return self


class LimitsSettings(Section):
    """Per-identity flood control (bot/delivery/flood.py): `burst` messages at once, then
    `messages_per_second`; faster messages wait, in order, none is dropped."""

    messages_per_second: float = Field(default=2.0, gt=0)
    burst: int = Field(default=10, ge=1, le=1000)
    max_identities: int = Field(default=10_000, ge=1)  # senders remembered at once
    # PostgreSQL: one limit for all workers (table flood_marks), not one per process
    shared: bool = True


class DeskSettings(Section):
    """The agent desk (README, "Agents")."""

    # a customer who writes again within this many hours of an agent resolving their
    # conversation reaches that agent again (the conversation reopens, as in Chatwoot);
    # later, or 0, a new conversation with the bot starts
    reopen_hours: float = Field(default=72, ge=0, le=24 * 90)
    # a console sign-in (email + password) lasts this long without use, at most max
    session_idle_hours: float = Field(default=8, gt=0, le=24 * 30)
    session_max_hours: float = Field(default=24, gt=0, le=24 * 90)


class FlowSettings(Section):
    max_failed_answers: int = Field(default=3, ge=1, le=10)
    max_selfservice_misses: int = Field(default=2, ge=1, le=10)


class TelegramSettings(Section):
    """The Telegram channel (channels/telegram/, docs/telegram.md); on when a token is set."""

    token: SecretStr | None = None  # CICBOT_TELEGRAM__TOKEN, from @BotFather
    webhook_secret: SecretStr | None = None  # CICBOT_TELEGRAM__WEBHOOK_SECRET
    mode: Literal["polling", "webhook"] = "polling"
    api_base: str = "https://api.telegram.org"
    # webhook mode: the public HTTPS URL of POST /webhooks/telegram; when set, cicbot calls
    # setWebhook with it (and the secret) at start
    webhook_url: str | None = None
    polling_timeout: int = Field(default=25, ge=0, le=50)  # long-poll seconds
    request_timeout: float = Field(default=20.0, gt=0, le=300)  # one Bot API call
    rate_per_second: float = Field(default=30.0, gt=0)  # whole bot, in any one second
    chat_rate_per_second: float = Field(default=1.0, gt=0)  # per chat, after a burst of
    chat_burst: int = Field(default=3, ge=1, le=30)
    max_body_bytes: int = Field(default=1 << 20, ge=4096)  # a webhook body; larger → 413
    max_depth: int = Field(default=32, ge=8, le=200)  # JSON nesting of an update
    # bounds checked before aiogram's models see an update (channels/telegram/raw.py)
    max_nodes: int = Field(default=5000, ge=100)  # objects and arrays in one update
    # a rich_message's formatting, weighed by nesting (about 0.2 s of validation)
    max_rich_text_cost: int = Field(default=5000, ge=100)
    # validation runs in worker processes (bot/channel/sandbox.py); one over budget is parked
    parse_budget_seconds: float = Field(default=2.0, gt=0, le=60)
    parse_workers: int = Field(default=2, ge=1, le=32)

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http(s) URL such as https://api.telegram.org")
        return value.rstrip("/")

    @field_validator("webhook_url")
    @classmethod
    def _https_url(cls, value: str | None) -> str | None:
        if value and not re.match(r"^https://[^/\s]+", value):
            raise ValueError("Telegram only calls HTTPS webhooks: must start with https://")
        return value or None

    @field_validator("token")
    @classmethod
    def _token_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if (
            value is not None
            and value.get_secret_value()
            and not re.fullmatch(r"\d+:[A-Za-z0-9_-]+", value.get_secret_value())
        ):
            raise ValueError("is not a bot token (digits:letters, as @BotFather gives it)")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _secret_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if (
            value is not None
            and value.get_secret_value()
            and not re.fullmatch(r"[A-Za-z0-9_-]{16,256}", value.get_secret_value())
        ):
            raise ValueError("must be 16-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> TelegramSettings:
        if (
            self.mode == "webhook"
            and self.token is not None
            and self.token.get_secret_value()
            and not (self.webhook_secret and self.webhook_secret.get_secret_value())
        ):
            raise ValueError(
                "mode is webhook but no webhook secret is set (CICBOT_TELEGRAM__WEBHOOK_SECRET)"
            )
        return self


class EmailImapSettings(Section):
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)  # None: 993 with ssl, else 143
    username: str | None = None
    password: SecretStr | None = None  # CICBOT_EMAIL__IMAP__PASSWORD (an app password)
    ssl: bool = True  # implicit TLS (993)
    starttls: bool = False  # with ssl false: STARTTLS on 143, required (never falls back)
    ca_file: str | None = None  # a private CA's PEM file; default: the system's CAs
    verify_certificate: bool = True  # false: a test server's throwaway certificate only
    folder: str = "INBOX"
    # after a mail is committed: "seen" flags it \\Seen; "move" moves it to processed_folder
    after_import: Literal["seen", "move"] = "seen"
    processed_folder: str = "cicbot-processed"
    idle: bool = True  # IMAP IDLE where the server has it; polling otherwise
    poll_interval_seconds: float = Field(default=60.0, gt=0)
    idle_timeout_seconds: float = Field(default=25 * 60, gt=0)  # RFC 2177: under 29 min
    timeout_seconds: float = Field(default=30.0, gt=0)


class EmailSmtpSettings(Section):
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)  # None: 465 ssl, 587 starttls, 25
    username: str | None = None
    password: SecretStr | None = None  # CICBOT_EMAIL__SMTP__PASSWORD
    starttls: bool = True
    ssl: bool = False  # implicit TLS (465) instead of STARTTLS
    ca_file: str | None = None  # a private CA's PEM file; default: the system's CAs
    verify_certificate: bool = True  # false: a test server's throwaway certificate only
    timeout_seconds: float = Field(default=30.0, gt=0)
    idle_close_seconds: float = Field(default=10.0, gt=0)  # a batch's connection is kept


class EmailSettings(Section):
    """The email channel (channels/email/adapter.py, docs/email.md); on when `address` and the
    SMTP host are set (IMAP, for reading, is optional)."""

    address: str | None = None  # the mailbox customers write to (the From of our mail)
    display_name: str | None = None  # default: company.name
    imap: EmailImapSettings = EmailImapSettings()
    smtp: EmailSmtpSettings = EmailSmtpSettings()
    max_message_bytes: int = Field(default=25 << 20, ge=1024)  # larger: headers only kept
    max_attachment_bytes: int = Field(default=10 << 20, ge=0)  # larger: flagged over_cap
    public_url: str | None = None  # https://... base of the unsubscribe links
    unsubscribe_secret: SecretStr | None = None  # CICBOT_EMAIL__UNSUBSCRIBE_SECRET
    # authserv-ids (RFC 8601) of the receiving servers whose Authentication-Results are
    # believed: a sender counts as verified only with dmarc=pass from one of them
    trusted_authserv_ids: list[str] = []
    max_header_bytes: int = Field(default=256 << 10, ge=4096)  # the header block parsed
    max_header_line_bytes: int = Field(default=16 << 10, ge=1024)  # one header with its folds

    @field_validator("address")
    @classmethod
    def _address_shape(cls, value: str | None) -> str | None:
        if value and not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+", value):
            raise ValueError("is not an email address such as service@example.com")
        return value or None

    @model_validator(mode="after")
    def _credentials(self) -> EmailSettings:
        """A configured mailbox without its login refuses to start, naming what is missing
        (rather than retrying a failing login forever)."""
        if not self.enabled:
            return self
        missing = []
        if self.imap.host and not self.imap.username:
            missing.append("email.imap.username")
        if self.imap.host and self.imap.password is None:
            missing.append("CICBOT_EMAIL__IMAP__PASSWORD (environment)")
        if self.smtp.username and self.smtp.password is None:
            missing.append("CICBOT_EMAIL__SMTP__PASSWORD (environment)")
        if self.smtp.password is not None and not self.smtp.username:
            missing.append("email.smtp.username")
        if missing:
            raise ValueError("the email channel needs its login: set " + ", ".join(missing))
        return self

    @property
    def enabled(self) -> bool:
        """Mail can be sent: the channel starts, and codes (identity links) can go out."""
        return bool(self.address and self.smtp.host)


SLACK_CHANNEL_ID = re.compile(r"^[CG][A-Z0-9]{2,30}$")


class SlackSettings(Section):
    """The Slack channel (channels/slack/adapter.py, docs/slack.md); on when a bot token is set.

    Customers write in DMs with the app or in `customer_channels`; escalations from every
    channel are posted as cards to `agent_channel`, where agents claim and answer them.
    """

    bot_token: SecretStr | None = None  # CICBOT_SLACK__BOT_TOKEN, xoxb-...
    signing_secret: SecretStr | None = None  # CICBOT_SLACK__SIGNING_SECRET (HTTP mode)
    app_token: SecretStr | None = None  # CICBOT_SLACK__APP_TOKEN, xapp-...: Socket Mode
    api_base: str = "https://slack.com/api/"  # slack_sdk's base URL
    agent_channel: str | None = None  # channel id (C...) of the agent desk; None: no desk
    customer_channels: list[str] = Field(default_factory=list)  # ids where every message counts
    channel_rate_per_second: float = Field(default=1.0, gt=0)  # chat.postMessage per channel
    channel_burst: int = Field(default=3, ge=1, le=30)  # ... after a burst of this many
    request_timeout: int = Field(default=15, ge=1, le=300)  # one Web API call, seconds
    max_body_bytes: int = Field(default=1 << 20, ge=4096)  # an HTTP request; larger → 413
    user_cache_seconds: float = Field(default=86400.0, ge=0)  # users.info answers are kept
    card_messages: int = Field(default=5, ge=0, le=20)  # the last messages shown on a card
    # open a conversation in the person's DM with the app: the slash command, and the
    # callback id of the message shortcut "Send to support" (both in the app's manifest)
    support_command: str = "/support"
    support_shortcut: str = "send_to_support"

    @field_validator("support_command")
    @classmethod
    def _command_shape(cls, value: str) -> str:
        if not re.fullmatch(r"/[a-z0-9_-]{1,31}", value):
            raise ValueError("must be a slash command such as /support (lower case, at most 32)")
        return value

    @field_validator("api_base")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http(s) URL such as https://slack.com/api/")
        return value.rstrip("/") + "/"

    @field_validator("agent_channel")
    @classmethod
    def _agent_channel_id(cls, value: str | None) -> str | None:
        if value and not SLACK_CHANNEL_ID.match(value):
            raise ValueError("must be a channel id such as C0123456789 (not a #name)")
        return value or None

    @field_validator("customer_channels")
    @classmethod
    def _customer_channel_ids(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not SLACK_CHANNEL_ID.match(v)]
        if bad:
            raise ValueError(f"must be channel ids such as C0123456789, not {bad[0]!r}")
        return value

    @field_validator("bot_token")
    @classmethod
    def _bot_token_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if _given(value) and not _given(value).startswith("xoxb-"):
            raise ValueError("is not a bot token (xoxb-...)")
        return value

    @field_validator("app_token")
    @classmethod
    def _app_token_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if _given(value) and not _given(value).startswith("xapp-"):
            raise ValueError("is not an app-level token (xapp-...)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SlackSettings:
        if self.agent_channel and self.agent_channel in self.customer_channels:
            raise ValueError("agent_channel must not also be a customer channel")
        if _given(self.bot_token) and not _given(self.app_token):
            if not _given(self.signing_secret):
                raise ValueError(
                    "a bot token is set but neither a signing secret (HTTP mode, "
                    "CICBOT_SLACK__SIGNING_SECRET) nor an app token (Socket Mode, "
                    "CICBOT_SLACK__APP_TOKEN)"
                )
        return self


def _given(secret: SecretStr | None) -> str:
    return secret.get_secret_value() if secret is not None else ""


class CrmSettings(Section):
    """Contact history, customer value, lifecycle and privacy (docs/crm.md)."""

    retention_days: int = Field(default=1095, ge=1)  # bot/crm/retention.py, docs/security.md
    at_risk_after_days: int = Field(default=90, ge=1)  # active → at_risk without order/contact
    lost_after_days: int = Field(default=180, ge=1)  # → lost without order or contact
    value_window_days: int = Field(default=730, ge=1)  # orders counted for RFM and CLV
    clv_horizon_years: float = Field(default=3.0, gt=0)  # the CLV estimate looks this far
    segment_a_share: float = Field(default=0.2, gt=0, lt=1)  # top share by CLV → A
    segment_b_share: float = Field(default=0.3, gt=0, lt=1)  # the next share → B; rest C
    service_need_contacts: int = Field(default=5, ge=1)  # inbound msgs + cases in 90 days → high
    import_max_rows: int = Field(default=1_000_000, ge=1)

    @model_validator(mode="after")
    def _order(self) -> CrmSettings:
        if self.lost_after_days <= self.at_risk_after_days:
            raise ValueError("lost_after_days must be greater than at_risk_after_days")
        if self.segment_a_share + self.segment_b_share >= 1:
            raise ValueError("segment_a_share + segment_b_share must be below 1")
        return self


class CampaignsSection(Section):
    """Scheduled follow-ups (bot/campaigns/runs.py, docs/campaigns.md)."""

    scheduler: bool = True  # `cicbot serve` runs the schedule (one leader per database)
    builtin: bool = True  # the built-in csat, winback and reminder campaigns (redefine by name)
    # the built-in reminder: a flow abandoned this long ago gets its open question re-asked
    reminder_after_hours: float = Field(default=24, gt=0, le=24 * 30)
    # deliveries of a run in flight at once (each its own transaction on its own contact)
    concurrency: int = Field(default=4, ge=1, le=64)
    definitions: list[CampaignSettings] = []


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CICBOT_",
        env_nested_delimiter="__",
        extra="forbid",
        yaml_file=DEFAULT_CONFIG,
    )

    company: CompanySettings = CompanySettings()
    database: DatabaseSettings = DatabaseSettings()
    server: ServerSettings = ServerSettings()
    dispatcher: DispatcherSettings = DispatcherSettings()
    flows: FlowSettings = FlowSettings()
    desk: DeskSettings = DeskSettings()
    limits: LimitsSettings = LimitsSettings()
    complaint: ComplaintOptions
    winback: WinbackOptions
    knowledge_base: KnowledgeBaseOptions = KnowledgeBaseOptions()
    identity_link: IdentityLinkOptions = IdentityLinkOptions()
    telegram: TelegramSettings = TelegramSettings()
    slack: SlackSettings = SlackSettings()
    email: EmailSettings = EmailSettings()
    webchat: WebChatSettings = WebChatSettings()
    business_hours: BusinessHours = BusinessHours()
    crm: CrmSettings = CrmSettings()
    campaigns: CampaignsSection = Field(default_factory=lambda: CampaignsSection())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = os.environ.get("CICBOT_CONFIG", DEFAULT_CONFIG)
        return (
            init_settings,
            env_settings,
            YamlConfigSettingsSource(settings_cls, yaml_file=path, yaml_file_encoding="utf-8"),
        )


def _secret_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of every SecretStr field, found by walking the settings model."""
    paths: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        if ann is SecretStr or SecretStr in args:
            paths.append(prefix + name)
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            paths.extend(_secret_paths(ann, f"{prefix}{name}."))
    return paths


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _url_password(url: Any) -> bool:
    """True when a database URL carries a password (user:password@ or ?password=)."""
    if not isinstance(url, str):
        return False
    try:
        parsed = make_url(url)
    except ArgumentError:
        return False  # validated, with its own message, when the database is opened
    return bool(parsed.password) or "password" in {k.lower() for k in parsed.query}


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {key}: {e['msg']}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(path: str | Path | None = None) -> Settings:
    """Read and validate the configuration, or raise ConfigError naming the bad key."""
    if path is not None:
        os.environ["CICBOT_CONFIG"] = str(path)
    config_path = Path(os.environ.get("CICBOT_CONFIG", DEFAULT_CONFIG))
    if not config_path.is_file():
        raise ConfigError(f"config file not found: {config_path} (set CICBOT_CONFIG)")
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config_path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_path}: the top level must be a mapping")
    found = [p for p in _secret_paths(Settings) if _lookup(raw, p) not in (None, "")]
    if _url_password(_lookup(raw, "database.url")):
        found.append("database.url")  # the URL itself is no secret, its password is
    if found:
        envs = ", ".join("CICBOT_" + p.upper().replace(".", "__") for p in found)
        hint = (
            " (the whole URL with its password, or the URL without it here and the"
            " password in PGPASSWORD)"
            if "database.url" in found
            else ""
        )
        raise ConfigError(
            f"secrets must not be in {config_path}: {', '.join(found)}; "
            f"set them in the environment instead ({envs}){hint}"
        )
    try:
        settings = Settings()
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from exc
    return _with_knowledge_base(settings, config_path)


def _with_knowledge_base(settings: Settings, config_path: Path) -> Settings:
    """The entries of the files `knowledge_base.files` names, validated with file and line."""
    from bot.knowledge.base import KBError, with_files

    try:
        kb = with_files(settings.knowledge_base, config_path.resolve().parent)
    except KBError as exc:
        raise ConfigError(f"knowledge_base: {exc}") from exc
    return settings.model_copy(update={"knowledge_base": kb})
