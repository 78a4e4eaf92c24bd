"""The webhook channel's settings: the section `webhook` of the configuration."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator, model_validator

from bot.channel.settings import ChannelSettings


class WebhookSettings(ChannelSettings):
    """A generic JSON webhook (channels/webhook/README.md); on when the secret is set.

    Inbound: POST /webhooks/json, signed with the shared secret. Outbound: the bot's
    replies are POSTed to `outbound_url`, signed the same way.
    """

    secret: SecretStr | None = None  # CICBOT_WEBHOOK__SECRET, at least 32 characters
    outbound_url: str | None = None  # where replies are POSTed (http(s)://...)
    max_body_bytes: int = Field(default=64 << 10, ge=1024)  # an inbound body; larger: 413
    max_skew_seconds: int = Field(default=300, ge=1)  # a signature's timestamp may be this old
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)  # one outbound POST

    @field_validator("outbound_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http(s) URL such as https://shop.example.com/bot")
        return value or None

    @field_validator("secret")
    @classmethod
    def _secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and 0 < len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return value

    @model_validator(mode="after")
    def _outbound_with_secret(self) -> WebhookSettings:
        if self.enabled and not self.outbound_url:
            raise ValueError("the webhook channel needs outbound_url for its replies")
        return self

    @property
    def enabled(self) -> bool:
        return self.secret is not None and bool(self.secret.get_secret_value())
