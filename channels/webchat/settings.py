"""The web chat's settings: the section `webchat` of the configuration."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator

from bot.channel.settings import ChannelSettings, ConfigFile

ORIGIN = re.compile(r"^https?://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")


def _given(secret: SecretStr | None) -> str:
    return secret.get_secret_value() if secret is not None else ""


class WebChatSettings(ChannelSettings):
    """The built-in web chat (channels/webchat/adapter.py, docs/webchat.md)."""

    # signs the visitors' session cookies; without it a key is generated once and kept
    # in key_file (one machine); set it when several machines serve the chat
    secret: SecretStr | None = None  # CICBOT_WEBCHAT__SECRET, at least 32 characters
    key_file: ConfigFile = "data/webchat.key"
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
