"""The email settings: passwords only from the environment; the channel is off without them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from bot.config import ConfigError, load_settings
from bot.runtime import Runtime
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("CICBOT_") and "__" in key:
            monkeypatch.delenv(key)
    monkeypatch.setenv("CICBOT_CONFIG", str(ROOT / "config.yaml"))


def write(tmp_path: Path, email: dict[str, object]) -> Path:
    data = yaml.safe_load((ROOT / "config.yaml").read_text("utf-8"))
    data["email"] = email
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), "utf-8")
    return path


MAILBOX = {
    "address": "service@shop.test",
    "imap": {"host": "imap.shop.test", "username": "service@shop.test"},
    "smtp": {"host": "smtp.shop.test", "username": "service@shop.test"},
}


@pytest.mark.parametrize("part", ["imap", "smtp"])
def test_password_in_yaml_is_refused(tmp_path: Path, part: str) -> None:
    config = {**MAILBOX, part: {**MAILBOX[part], "password": "hunter2"}}  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match=f"CICBOT_EMAIL__{part.upper()}__PASSWORD"):
        load_settings(write(tmp_path, config))


def test_passwords_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CICBOT_EMAIL__IMAP__PASSWORD", "imap-pw")
    monkeypatch.setenv("CICBOT_EMAIL__SMTP__PASSWORD", "smtp-pw")
    settings = load_settings(write(tmp_path, MAILBOX))
    assert settings.email.imap.password is not None
    assert settings.email.imap.password.get_secret_value() == "imap-pw"
    assert settings.email.smtp.password is not None
    assert "smtp-pw" not in repr(settings.email)
    assert settings.email.imap.folder == "INBOX" and settings.email.smtp.starttls


def test_bad_address_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"email\.address"):
        load_settings(write(tmp_path, {**MAILBOX, "address": "not an address"}))


def test_channel_is_off_without_settings(sqlite_url: str) -> None:
    rt = Runtime(make_settings(sqlite_url), channels=["email"])
    assert "email" not in rt.channels


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"CICBOT_EMAIL__SMTP__PASSWORD": "smtp-pw"}, "CICBOT_EMAIL__IMAP__PASSWORD"),
        ({"CICBOT_EMAIL__IMAP__PASSWORD": "imap-pw"}, "CICBOT_EMAIL__SMTP__PASSWORD"),
    ],
)
def test_a_mailbox_without_its_password_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], missing: str
) -> None:
    """It used to start without a word and fail every login (or send) for ever."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=missing):
        load_settings(write(tmp_path, MAILBOX))


def test_imap_without_a_username_names_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CICBOT_EMAIL__IMAP__PASSWORD", "imap-pw")
    monkeypatch.setenv("CICBOT_EMAIL__SMTP__PASSWORD", "smtp-pw")
    config = {**MAILBOX, "imap": {"host": "imap.shop.test"}}
    with pytest.raises(ConfigError, match=r"email\.imap\.username"):
        load_settings(write(tmp_path, config))


def test_tls_defaults_verify_certificates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CICBOT_EMAIL__IMAP__PASSWORD", "imap-pw")
    monkeypatch.setenv("CICBOT_EMAIL__SMTP__PASSWORD", "smtp-pw")
    email = load_settings(write(tmp_path, MAILBOX)).email
    assert email.imap.ssl and not email.imap.starttls and email.imap.verify_certificate
    assert email.smtp.starttls and not email.smtp.ssl and email.smtp.verify_certificate
