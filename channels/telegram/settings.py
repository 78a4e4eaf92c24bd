"""The Telegram channel's settings: the section `telegram` of the configuration."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from bot.channel.settings import ChannelSettings


class TelegramSettings(ChannelSettings):
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

    @property
    def enabled(self) -> bool:
        """A token is set: the channel starts (the CLI asks this without importing aiogram)."""
        return self.token is not None and bool(self.token.get_secret_value())

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
