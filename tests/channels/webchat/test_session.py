"""The visitor's credential (channels/webchat/session.py): signed ids, and the signing key
from the environment or generated once into a private file."""

from __future__ import annotations

import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import SecretStr

from channels.webchat.session import Sessions, load_key
from channels.webchat.settings import WebChatSettings


def test_a_token_names_its_visitor_and_nothing_else_passes() -> None:
    sessions = Sessions("k" * 64)
    visitor, token = sessions.issue()
    assert sessions.visitor(token) == visitor
    assert len(visitor) >= 24 and token.startswith(visitor + ".")
    other_visitor, _ = sessions.issue()
    assert other_visitor != visitor
    signature = token.rsplit(".", 1)[1]
    for forged in (
        visitor,
        f"{other_visitor}.{signature}",  # another id with this signature
        token + "x",
        "",
        None,
        "a" * 500,
        Sessions("j" * 64).issue()[1],  # signed with another key
    ):
        assert sessions.visitor(forged) is None, forged


def test_the_secret_from_the_environment_is_the_key(tmp_path: Path) -> None:
    settings = WebChatSettings(secret=SecretStr("s" * 40), key_file=str(tmp_path / "k"))
    assert load_key(settings) == "s" * 40
    assert not (tmp_path / "k").exists()  # no file when the secret is set


def test_without_a_secret_a_private_key_file_is_made_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "data" / "webchat.key"
    settings = WebChatSettings(key_file=str(path))
    with caplog.at_level(logging.WARNING):
        first = load_key(settings)
    assert "CICBOT_WEBCHAT__SECRET" in caplog.text and first not in caplog.text
    assert len(first) == 64 and int(first, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(settings) == first  # a restart keeps every visitor's session
    assert os.listdir(path.parent) == ["webchat.key"]  # no temporary file left behind


def test_processes_starting_at_once_agree_on_one_key(tmp_path: Path) -> None:
    settings = WebChatSettings(key_file=str(tmp_path / "webchat.key"))
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: load_key(settings), range(32)))
    assert len(keys) == 1


def test_an_unusable_key_file_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "webchat.key"
    path.write_text("short\n")
    path.chmod(0o600)
    with pytest.raises(ValueError, match="no usable key"):
        load_key(WebChatSettings(key_file=str(path)))
