"""Logs: the redaction filter, JSON lines, and a whole conversation logged at DEBUG
through a real server without the customer's text or address appearing."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.ops import logs
from tests.channels.webchat.helpers import open_socket
from tests.conftest import ROOT, make_settings
from tests.server import free_port, serve

EMAIL = "jane.doe+orders@example-shop.co.uk"
PHONE = "+49 171 2345678"
TELEGRAM = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1"
SLACK = "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy"
API = "cic_Zq3x9R2bL8mN4vT7wY1pK6sD0fG5hJ2e"


def emit(
    logger: str, msg: str, *args: Any, exc: BaseException | None = None, **extra: Any
) -> logging.LogRecord | None:
    """A record as `logger.info(msg, *args, extra=extra)` makes it, after the filter."""
    record = logging.getLogger(logger).makeRecord(
        logger,
        logging.INFO,
        __file__,
        1,
        msg,
        args,
        (type(exc), exc, exc.__traceback__) if exc else None,
        extra=extra,
    )
    return record if logs.RedactFilter().filter(record) else None


def formatted(record: logging.LogRecord | None) -> str:
    assert record is not None
    return logs.JsonLines().format(record)


@pytest.mark.parametrize(
    "secret",
    [
        EMAIL,
        PHONE,
        "0171 2345678",
        "(030) 1234-5678",
        "0049 30 12345678",
        TELEGRAM,
        SLACK,
        "xapp-1-A0123-4567-abcdef0123",
        API,
    ],
)
def test_redacted_in_message_args_extras_and_traceback(secret: str) -> None:
    try:
        raise ValueError(f"could not reach {secret}")
    except ValueError as exc:
        error = exc
    out = formatted(
        emit(
            "bot.x",
            f"customer {secret} said %s",
            f"call {secret}",
            exc=error,
            contact={"address": secret, "nested": [secret]},
            note=secret,
        )
    )
    assert secret not in out
    line = json.loads(out)
    assert line["note"] in (
        "[email]",
        "[phone]",
        "[telegram-token]",
        "[slack-token]",
        "[api-token]",
    )
    assert "ValueError: could not reach [" in line["exc_info"]


def test_ordinary_numbers_survive() -> None:
    text = (
        "outbox row 123456 retry in 1.5s at 2026-11-22 19:38:44; chat 987654321; "
        "127.0.0.1:8000; ts 1700000000.123456; uuid 550e8400-e29b-41d4-a716-446655440000"
    )
    assert logs.redact(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abc.def-ghi",
        "{'authorization': 'Basic dXNlcjpwYXNz'}",
        '"Authorization": "Token 0123456789abcdef"',
        "sent with bearer abc.def-ghi",
    ],
)
def test_authorization_headers(text: str) -> None:
    out = logs.redact(text)
    assert "abc.def-ghi" not in out and "dXNlcjpwYXNz" not in out and "0123456789" not in out
    assert "[redacted]" in out


def test_telegram_token_in_an_api_url() -> None:
    out = logs.redact(f"POST https://api.telegram.org/bot{TELEGRAM}/sendMessage failed")
    assert out == "POST https://api.telegram.org/bot[telegram-token]/sendMessage failed"


def test_uvicorn_access_log_keeps_no_query_values_nor_unsubscribe_tokens() -> None:
    fmt = '%s - "%s %s HTTP/%s" %d'
    rec = emit(
        "uvicorn.access", fmt, "1.2.3.4:5", "GET", "/ws/chat?visitor=v123&name=Jane", "1.1", 101
    )
    out = formatted(rec)
    assert "v123" not in out and "Jane" not in out
    assert "/ws/chat?visitor=[redacted]&name=[redacted]" in out and '" 101' in out
    out = formatted(
        emit("uvicorn.access", fmt, "1.2.3.4:5", "POST", "/unsubscribe/42.AbCd123", "1.1", 200)
    )
    assert "42.AbCd123" not in out
    # elsewhere (a library's message) a query's secrets still go
    out = formatted(emit("httpx", "GET https://x.test/cb?access_token=abc123&page=2"))
    assert "abc123" not in out and "page=2" in out


def test_uvicorn_access_log_keeps_the_language_a_page_asks_for() -> None:
    """Regression (issue 21): `lang=[redacted]`: a language is no one's data."""
    fmt = '%s - "%s %s HTTP/%s" %d'
    path = "/ws/chat?lang=de&name=Jane&language=x"
    out = formatted(emit("uvicorn.access", fmt, "1.2.3.4:5", "GET", path, "1.1", 101))
    assert "?lang=de&name=[redacted]&language=[redacted]" in out


def test_sql_parameters_and_wire_debug_logs() -> None:
    error = "(IntegrityError) dup\n[SQL: INSERT INTO t VALUES (?)]\n[parameters: ('my text',)]"
    assert "my text" not in formatted(emit("bot.delivery.inbox", "failed: %s", error))
    echo = emit("sqlalchemy.engine.Engine", "[%s] %r", "cached since 1s ago", ("my text", 1))
    assert "my text" not in formatted(echo) and "cached since 1s ago" in formatted(echo)
    for name in ("aiosqlite", "websockets.server", "slack_sdk.web.async_base_client"):
        record = logging.getLogger(name).makeRecord(
            name, logging.DEBUG, __file__, 1, "executing %s", ("my text",), None
        )
        assert not logs.RedactFilter().filter(record)


def test_json_lines() -> None:
    stream = io.StringIO()
    handler = logs.json_handler(stream)
    handler.addFilter(logs.RedactFilter())
    logger = logging.getLogger("tests.jsonlines")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("row %s from %s", 7, EMAIL, extra={"channel": "telegram", "n": 3})
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            logger.exception("multi\nline")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "row 7 from [email]"
    assert first["level"] == "WARNING" and first["logger"] == "tests.jsonlines"
    assert first["channel"] == "telegram" and first["n"] == 3
    assert first["time"].endswith("+00:00") and "T" in first["time"]
    assert second["message"] == "multi\nline" and "ZeroDivisionError" in second["exc_info"]


# ---- end to end: a conversation over the web chat, everything logged at DEBUG ----------

SENTENCE = "The turquoise parcel never arrived at my cottage behind the mill"


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """(what logs.install's JSON handler wrote, what an unfiltered handler saw first)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    raw, redacted = io.StringIO(), io.StringIO()
    logs.install(logs.json_handler(redacted), "debug")
    unfiltered = logging.StreamHandler(raw)
    root.handlers.insert(0, unfiltered)  # sees each record before the filter rewrites it
    try:
        yield redacted, raw
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


async def test_a_conversation_logs_no_text_nor_address(
    db_url: str, captured: tuple[io.StringIO, io.StringIO]
) -> None:
    redacted, raw = captured
    texts = [f"Hello, my address is {EMAIL}", SENTENCE, f"call me on {PHONE}"]
    # log_config=None: uvicorn's own loggers (access log, WebSocket frames) reach the root
    async with serve(make_settings(db_url), log_config=None, log_level="debug") as (base, _):
        async with await open_socket(base, name="Jane") as ws:
            assert json.loads(await ws.recv())["type"] == "history"
            for text in texts:
                frame = {"type": "message", "id": str(uuid.uuid4()), "text": text}
                await ws.send(json.dumps(frame))
                async with asyncio.timeout(10):
                    while json.loads(await ws.recv())["type"] != "message":
                        pass
    # the test can fail: unfiltered, the WebSocket frames (and on SQLite aiosqlite's
    # statements) carry the customer's words
    assert "behind the mill" in raw.getvalue()
    out = redacted.getvalue()
    assert len(out.splitlines()) > 10
    for line in out.splitlines():
        json.loads(line)
    for secret in (EMAIL, "example-shop", PHONE, "2345678", "Jane", "turquoise", "the mill"):
        assert secret not in out, secret


# ---- `cicbot serve --log-format json`, the installed console script --------------------


async def test_serve_json_lines_with_a_redacted_access_log(tmp_path: Path) -> None:
    token = "metrics-" + uuid.uuid4().hex
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CICBOT_")}
    env.update(
        CICBOT_CONFIG=str(ROOT / "config.yaml"),
        CICBOT_DATABASE__URL=f"sqlite+aiosqlite:///{tmp_path}/cicbot.db",
        CICBOT_SERVER__METRICS_TOKEN=token,
        NO_COLOR="1",
    )
    err = (tmp_path / "stderr").open("w+", encoding="utf-8")
    cicbot = str(ROOT / ".venv" / "bin" / "cicbot")
    proc = await asyncio.create_subprocess_exec(
        *(cicbot, "serve", "--port", str(port), "--log-format", "json"),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            async with asyncio.timeout(60):
                while True:
                    assert proc.returncode is None, "cicbot serve exited"
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get("/healthz")).status_code == 200:
                            break
                    await asyncio.sleep(0.1)
            auth = {"Authorization": f"Bearer {token}"}
            assert (await http.get("/metrics", headers=auth)).status_code == 200
            assert (await http.get("/metrics")).status_code == 401
            await http.get(f"/api/v1/events?token={token}&email={EMAIL}")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        err.seek(0)
        output = err.read()
        err.close()
    lines = [json.loads(line) for line in output.splitlines()]
    access = [x["message"] for x in lines if x["logger"] == "uvicorn.access"]
    assert any('"GET /metrics HTTP/1.1" 200' in m for m in access), access
    assert any("/api/v1/events?token=[redacted]&email=[redacted]" in m for m in access), access
    assert token not in output and EMAIL not in output
    assert {"time", "level", "logger", "message"} <= set(lines[0])


def test_configured_secrets_of_any_shape_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A channel's secret that no pattern knows (the web chat's key, a signing secret) is
    redacted because its settings model declares it SecretStr: found, not listed."""
    from bot.config import load_settings

    chat_key = "f00dfacef00dfacef00dfacef00dfacef00dface"  # hex: no pattern matches it
    signing = "8f14e45fceea167a5a36dedd4bea2543"
    monkeypatch.setenv("CICBOT_WEBCHAT__SECRET", chat_key)
    monkeypatch.setenv("CICBOT_SLACK__SIGNING_SECRET", signing)
    settings = load_settings(ROOT / "config.yaml")
    found = logs.secret_values(settings)
    assert chat_key in found and signing in found
    assert logs.redact(f"key {chat_key}") == f"key {chat_key}"  # the patterns alone miss it
    record = logging.getLogger("t").makeRecord(
        "t", logging.INFO, __file__, 1, "key=%s sig %s", (chat_key, signing), None
    )
    assert logs.RedactFilter(found).filter(record)
    text = logs.JsonLines().format(record)
    assert chat_key not in text and signing not in text and "[secret]" in text
