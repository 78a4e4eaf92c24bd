"""Settings: config.yaml validated by pydantic, overridable by CICBOT_* environment variables.

Precedence: environment > YAML > defaults. `CICBOT_CONFIG` names the YAML file.
Secret fields may only come from the environment; one found in the YAML stops start-up.
"""

from __future__ import annotations

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

from bot.hours import BusinessHours
from flows.options import ComplaintOptions, KnowledgeBaseOptions, WinbackOptions

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
    lease_seconds: float = Field(default=60.0, gt=0)


class FlowSettings(Section):
    max_failed_answers: int = Field(default=3, ge=1, le=10)
    max_selfservice_misses: int = Field(default=2, ge=1, le=10)


class TelegramSettings(Section):
    """The Telegram channel (channels/telegram.py, docs/telegram.md); on when a token is set."""

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
        if value is not None and value.get_secret_value() \
                and not re.fullmatch(r"\d+:[A-Za-z0-9_-]+", value.get_secret_value()):
            raise ValueError("is not a bot token (digits:letters, as @BotFather gives it)")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _secret_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() \
                and not re.fullmatch(r"[A-Za-z0-9_-]{16,256}", value.get_secret_value()):
            raise ValueError("must be 16-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> TelegramSettings:
        if self.mode == "webhook" and self.token is not None and self.token.get_secret_value() \
                and not (self.webhook_secret and self.webhook_secret.get_secret_value()):
            raise ValueError("mode is webhook but no webhook secret is set "
                             "(CICBOT_TELEGRAM__WEBHOOK_SECRET)")
        return self


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
    complaint: ComplaintOptions
    winback: WinbackOptions
    knowledge_base: KnowledgeBaseOptions = KnowledgeBaseOptions()
    telegram: TelegramSettings = TelegramSettings()
    business_hours: BusinessHours = BusinessHours()

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
    if found:
        envs = ", ".join("CICBOT_" + p.upper().replace(".", "__") for p in found)
        raise ConfigError(
            f"secrets must not be in {config_path}: {', '.join(found)}; "
            f"set them in the environment instead ({envs})"
        )
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from exc
