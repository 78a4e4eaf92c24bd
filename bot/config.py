"""Settings: config.yaml validated by pydantic, overridable by CICBOT_* environment variables.

Precedence: environment > YAML > defaults. `CICBOT_CONFIG` names the YAML file.
Secret fields may only come from the environment; one found in the YAML stops start-up.

The core's sections are defined here; each channel's section is its own model
(channels/<name>/settings.py), found through the `cicbot.channel_settings` entry points
and added to `Settings` as the section `<name>`: adding a channel edits nothing here.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from bot.campaigns.definitions import CampaignSettings
from bot.channel.settings import InConfigFolder
from bot.crm.settings import CrmSettings
from bot.delivery.settings import DispatcherSettings
from flows.hours import BusinessHours
from flows.options import (
    ComplaintOptions,
    IdentityLinkOptions,
    KnowledgeBaseOptions,
    WinbackOptions,
)

DEFAULT_CONFIG = "config.yaml"
# defined by the packages that use them (which do not import this module); named here too
__all__ = ["ConfigError", "CrmSettings", "DispatcherSettings", "Settings", "load_settings"]


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
class CompanySettings(Section):
    name: str = "cicbot"
    default_locale: Literal["de", "en"] = "en"
    timezone: str = "Europe/Berlin"


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


class CampaignsSection(Section):
    """Scheduled follow-ups (bot/campaigns/runs.py, docs/campaigns.md)."""

    scheduler: bool = True  # `cicbot serve` runs the schedule (one leader per database)
    builtin: bool = True  # the built-in csat, winback and reminder campaigns (redefine by name)
    # the built-in reminder: a flow abandoned this long ago gets its open question re-asked
    reminder_after_hours: float = Field(default=24, gt=0, le=24 * 30)
    # deliveries of a run in flight at once (each its own transaction on its own contact)
    concurrency: int = Field(default=4, ge=1, le=64)
    definitions: list[CampaignSettings] = []


class CoreSettings(BaseSettings):
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

    def channel(self, name: str) -> BaseModel | None:
        """The section of channel `name` (its own model), or None if no such channel."""
        return getattr(self, name, None) if name in channel_settings_models() else None


@cache
def channel_settings_models() -> dict[str, type[BaseModel]]:
    """The channels' settings models (`cicbot.channel_settings`), by section name. Cheap:
    a settings module imports pydantic only, never its platform library."""
    models: dict[str, type[BaseModel]] = {}
    for ep in entry_points(group="cicbot.channel_settings"):
        model = ep.load()
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"entry point {ep.value} is not a settings model")
        if ep.name in CoreSettings.model_fields:
            raise TypeError(f"channel {ep.name!r} would hide the core's section of that name")
        models[ep.name] = model
    return models


def _with_channels() -> type[CoreSettings]:
    fields: dict[str, Any] = {
        name: (model, Field(default_factory=model))
        for name, model in sorted(channel_settings_models().items())
    }
    return create_model("Settings", __base__=CoreSettings, __module__=__name__, **fields)


if TYPE_CHECKING:
    Settings = CoreSettings
else:
    Settings = _with_channels()


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


def _file_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of every field marked `ConfigFile` (bot/channel/settings.py)."""
    paths: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if any(isinstance(m, InConfigFolder) for m in _metadata(ann, field.metadata)):
            paths.append(prefix + name)
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            paths.extend(_file_paths(ann, f"{prefix}{name}."))
    return paths


def _metadata(ann: Any, metadata: list[Any]) -> list[Any]:
    """A field's Annotated metadata, also inside an optional (`ConfigFile | None`)."""
    found = list(metadata)
    for arg in get_args(ann):
        found.extend(getattr(arg, "__metadata__", ()))
    return found


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
    from sqlalchemy.engine import make_url  # only here: a second's import for `--help`
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return False  # validated, with its own message, when the database is opened
    return bool(parsed.password) or "password" in {k.lower() for k in parsed.query}


def _format_errors(err: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line a bad key: its dotted name, what is wrong, a "did you mean" for a
    misspelt key, and the environment variable when the value came from one."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc) or "(top level)"
        line = f"  {key}: {e['msg']}"
        if e["type"] == "extra_forbidden" and model is not None:
            known = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
            if close:
                line += f"; did you mean {'.'.join([*loc[:-1], close[0]])}?"
        env = "CICBOT_" + "__".join(loc).upper()
        if loc and env in os.environ:
            line += f" (the value comes from the environment variable {env})"
        lines.append(line)
    return "invalid configuration:\n" + "\n".join(lines)


def _fields_at(model: type[BaseModel], path: list[str]) -> list[str]:
    """The keys a section of the settings accepts (list indexes stepped over)."""
    current: Any = model
    for part in path:
        if part.isdigit():
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = field.annotation
        for arg in getattr(current, "__args__", ()):  # X | None, list[X]
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                current = arg
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def load_settings(path: str | Path | None = None, *, knowledge_base: bool = True) -> Settings:
    """Read and validate the configuration, or raise ConfigError naming the bad key.
    `knowledge_base=False` leaves the files `knowledge_base.files` names unread (a command
    that does not answer questions: a base of thousands of examples takes a second)."""
    if path is not None:
        os.environ["CICBOT_CONFIG"] = str(path)
    config_path = Path(os.environ.get("CICBOT_CONFIG", DEFAULT_CONFIG))
    if not config_path.is_file():
        where = config_path.absolute().parent
        raise ConfigError(
            f"config file not found: {config_path.name} in {where} "
            "(run cicbot in the folder of config.yaml, or set CICBOT_CONFIG to its path)"
        )
    try:
        text = config_path.read_text(encoding="utf-8")
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ten times faster
        raw = yaml.load(text, Loader=loader) or {}  # noqa: S506 - a safe loader
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
        raise ConfigError(_format_errors(exc, Settings)) from exc
    _resolve_paths(settings, config_path.absolute().parent)
    return _with_knowledge_base(settings, config_path) if knowledge_base else settings


def _resolve_paths(settings: Settings, folder: Path) -> None:
    """Relative paths (the SQLite file, the web chat's key, CA files, the matcher cache)
    are relative to config.yaml's folder, whatever the working directory: `cicbot` run
    from elsewhere with CICBOT_CONFIG uses the same database, not a new empty one."""
    settings.database.url = sqlite_url_in(settings.database.url, folder)
    for dotted in _file_paths(type(settings)):
        *parents, name = dotted.split(".")
        section: Any = settings
        for part in parents:
            section = getattr(section, part, None)
        value = getattr(section, name, None)
        if isinstance(value, str) and value:
            setattr(section, name, str(_in(folder, value)))
    kb = settings.knowledge_base
    if kb.cache_dir.strip():  # the flows' options are frozen: a copy
        cache = str(_in(folder, os.path.expandvars(kb.cache_dir)))
        settings.knowledge_base = kb.model_copy(update={"cache_dir": cache})


def _in(folder: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else folder / path


def sqlite_url_in(url: str, folder: Path) -> str:
    """A SQLite URL with a relative file made absolute against `folder`; others as given."""
    if not url.startswith("sqlite"):
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # refused with its own message when the database is opened
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return url
    if Path(database).is_absolute():
        return url
    return parsed.set(database=str(folder / database)).render_as_string(hide_password=False)


def _with_knowledge_base(settings: Settings, config_path: Path) -> Settings:
    """The entries of the files `knowledge_base.files` names, validated with file and line."""
    from bot.knowledge.base import KBError, with_files

    try:
        kb = with_files(settings.knowledge_base, config_path.resolve().parent)
    except KBError as exc:
        raise ConfigError(f"knowledge_base: {exc}") from exc
    return settings.model_copy(update={"knowledge_base": kb})


def channels_on(settings: Settings, exclude: tuple[str, ...] = ("console",)) -> list[str]:
    """The installed channels (entry points `cicbot.channels`) whose section turns them on
    (`enabled`, where the section has it): the channels a runtime would start, known
    without importing their adapters (aiogram alone takes seconds)."""
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="cicbot.channels")} - set(exclude)
    return sorted(n for n in names if getattr(getattr(settings, n, None), "enabled", True))


def notices(settings: Settings) -> list[str]:
    """Settings that are valid but do nothing as set: said at start (`cicbot serve`)."""
    found = []
    slack = getattr(settings, "slack", None)
    if getattr(slack, "agent_channel", None) and not getattr(slack, "enabled", False):
        found.append(
            "slack.agent_channel is set but the Slack channel is off (no "
            "CICBOT_SLACK__BOT_TOKEN): escalations reach agents in the console (/agent) only"
        )
    return found
