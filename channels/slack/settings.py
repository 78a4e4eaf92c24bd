"""The Slack channel's settings: the section `slack` of the configuration."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator, model_validator

from bot.channel.settings import ChannelSettings

SLACK_CHANNEL_ID = re.compile(r"^[CG][A-Z0-9]{2,30}$")


def _given(secret: SecretStr | None) -> str:
    return secret.get_secret_value() if secret is not None else ""


class SlackSettings(ChannelSettings):
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

    @property
    def enabled(self) -> bool:
        """A bot token is set: the channel starts."""
        return bool(_given(self.bot_token))

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
