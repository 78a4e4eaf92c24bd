"""The email channel's settings: the section `email` of the configuration."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from bot.channel.settings import ChannelSettings, ConfigFile


class EmailImapSettings(ChannelSettings):
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)  # None: 993 with ssl, else 143
    username: str | None = None
    password: SecretStr | None = None  # CICBOT_EMAIL__IMAP__PASSWORD (an app password)
    ssl: bool = True  # implicit TLS (993)
    starttls: bool = False  # with ssl false: STARTTLS on 143, required (never falls back)
    ca_file: ConfigFile | None = None  # a private CA's PEM file; default: the system's CAs
    verify_certificate: bool = True  # false: a test server's throwaway certificate only
    folder: str = "INBOX"
    # after a mail is committed: "seen" flags it \\Seen; "move" moves it to processed_folder
    after_import: Literal["seen", "move"] = "seen"
    processed_folder: str = "cicbot-processed"
    idle: bool = True  # IMAP IDLE where the server has it; polling otherwise
    poll_interval_seconds: float = Field(default=60.0, gt=0)
    idle_timeout_seconds: float = Field(default=25 * 60, gt=0)  # RFC 2177: under 29 min
    timeout_seconds: float = Field(default=30.0, gt=0)


class EmailSmtpSettings(ChannelSettings):
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)  # None: 465 ssl, 587 starttls, 25
    username: str | None = None
    password: SecretStr | None = None  # CICBOT_EMAIL__SMTP__PASSWORD
    starttls: bool = True
    ssl: bool = False  # implicit TLS (465) instead of STARTTLS
    ca_file: ConfigFile | None = None  # a private CA's PEM file; default: the system's CAs
    verify_certificate: bool = True  # false: a test server's throwaway certificate only
    timeout_seconds: float = Field(default=30.0, gt=0)
    idle_close_seconds: float = Field(default=10.0, gt=0)  # a batch's connection is kept


class EmailSettings(ChannelSettings):
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
    trusted_authserv_ids: list[str] = Field(default_factory=list)
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
