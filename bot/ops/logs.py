"""Logging for `cicbot serve`: human-readable text or JSON lines, both redacted.

`RedactFilter` sits on the handler, so it sees every record, ours and the libraries'
(uvicorn's access log included), and rewrites message, arguments, extras and traceback
before any formatter runs. It is defence in depth: our own log calls name ids, kinds and
lengths, never a customer's text, but an exception message or a library may carry
anything. What a pattern cannot recognise (a free sentence) must therefore stay out of
log calls; the wire-level DEBUG logs of client libraries, which dump payloads, are dropped.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

from pydantic import BaseModel, SecretStr
from pythonjsonlogger.json import JsonFormatter

Sub = tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]

_SEP = r"['\"]?\s*[:=]\s*['\"]?"  # a header or a key: value, quoted or not
_QUERY_SECRETS = r"token|access_token|key|secret|password|passwd|sig|signature|code|auth"


def _phone(m: re.Match[str]) -> str:
    # 7-15 digits (E.164); fewer are ids, times or amounts
    digits = sum(ch.isdigit() for ch in m.group(0))
    return "[phone]" if 7 <= digits <= 15 else m.group(0)


PATTERNS: tuple[Sub, ...] = (
    # Authorization headers and bearer tokens, in any quoting
    (
        re.compile(rf"(?i)(\bauthorization{_SEP})(?:(?:bearer|basic|token)\s+)?[^\s'\",}}]+"),
        r"\1[redacted]",
    ),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"), "Bearer [redacted]"),
    # Telegram bot tokens (also inside a Bot API URL: /bot123:ABC.../sendMessage)
    (re.compile(r"(?<!\d)\d{5,12}:[A-Za-z0-9_-]{30,}"), "[telegram-token]"),
    # Slack tokens: bot, user, app-level, refresh, configuration
    (re.compile(r"\bx(?:ox[abprse]|app)-[A-Za-z0-9-]+"), "[slack-token]"),
    (re.compile(r"\bcic_[A-Za-z0-9_-]{20,}"), "[api-token]"),  # agent API tokens (bot/desk/auth.py)
    # secrets in query strings and the unsubscribe link's path
    (re.compile(rf"(?i)([?&;](?:{_QUERY_SECRETS})[^=&\s\"]*=)[^&\s\"']+"), r"\1[redacted]"),
    (re.compile(r"(/unsubscribe/)[^\s\"'?/]+"), r"\1[redacted]"),
    # SQLAlchemy error messages quote the statement's parameters (customer texts)
    (re.compile(r"\[parameters: .*?\](?=\s*(?:\n|\(Background|$))", re.S), "[parameters redacted]"),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "[email]"),
    # phone numbers: international (+49 …, 0049 …) or national with a leading 0
    (re.compile(r"(?<![\w+.])(?:\+|00)[1-9][\d ()/.-]{5,20}\d"), _phone),
    (re.compile(r"(?<![\w.:/-])\(?0\d{1,5}\)?[ /-]?\d[\d -]{3,14}\d(?![\w.:])"), _phone),
)

# client libraries whose DEBUG records carry request and response bodies or SQL parameters
WIRE_LOGGERS = (
    "aiosqlite",
    "aioimaplib",
    "aiosmtplib",
    "aiohttp.client",
    "websockets",
    "wsproto",
    "hpack",
    "httpcore",
    "slack_sdk",
    "slack_bolt",
    "channels.slack.adapter.bolt",
    "aiogram",
    "asyncpg",
    "psycopg",
)
_WIRE_PACKAGES = {name.split(".")[0] for name in WIRE_LOGGERS} - {"channels"}
# uvicorn: the query string of a web-chat socket carries the visitor's name; every value
# is redacted but the language a page asks for (`lang=de` is no one's data)
_UVICORN_QUERY = re.compile(r"([?&](?!(?:lang|locale)=)[^=&\s\"]+=)[^&\s\"]*")
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's coloured copy of the message: rebuilt from it below
}


def redact(text: str) -> str:
    for pattern, repl in PATTERNS:
        text = pattern.sub(repl, text)
    return text


MIN_SECRET = 8  # shorter configured secrets are not replaced (they would hit ordinary text)


def secret_values(model: BaseModel) -> list[str]:
    """The values of every SecretStr field of the settings, the channels' sections included
    (each channel's model declares its own secrets), longest first."""
    found: set[str] = set()
    for name in type(model).model_fields:
        value = getattr(model, name, None)
        if isinstance(value, SecretStr):
            found.add(value.get_secret_value())
        elif isinstance(value, BaseModel):
            found.update(secret_values(value))
    return sorted((v for v in found if len(v) >= MIN_SECRET), key=len, reverse=True)


class RedactFilter(logging.Filter):
    def __init__(self, secrets: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__()
        # the configured secrets themselves, whatever their shape: no pattern needs to know
        # a channel's token format for it to stay out of the logs
        self._secrets = re.compile("|".join(re.escape(v) for v in secrets)) if secrets else None

    def _redact(self, text: str) -> str:
        if self._secrets is not None:
            text = self._secrets.sub("[secret]", text)
        return redact(text)

    def _redact_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._redact(value)
        if isinstance(value, dict):
            return {k: self._redact_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._redact_value(v) for v in value]
        if isinstance(value, int | float | bool) or value is None:
            return value
        return self._redact(str(value))

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO and _is_wire(record):
            return False
        if record.name.startswith("sqlalchemy.engine") and record.msg == "[%s] %r":
            # database.echo: the statement is logged on its own; its parameters here
            stats = record.args[0] if isinstance(record.args, tuple) and record.args else ""
            record.msg, record.args = "[%s] [parameters redacted]", (stats,)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: log what there is rather than nothing
            message = f"{record.msg!r} {record.args!r}"
        if record.name.startswith("uvicorn"):
            message = _UVICORN_QUERY.sub(r"\1[redacted]", message)
        record.msg, record.args = self._redact(message), ()
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text, record.exc_info = self._redact(text), None
        elif record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD:
                record.__dict__[key] = self._redact_value(value)
        record.__dict__.pop("color_message", None)
        return True


def _is_wire(record: logging.LogRecord) -> bool:
    # uvicorn hands the websockets library its own "uvicorn.error" logger: frames are
    # logged under that name, so the emitting module's package counts as well
    name = record.name
    return _package(record.pathname) in _WIRE_PACKAGES or any(
        name == w or name.startswith(w + ".") for w in WIRE_LOGGERS
    )


def _package(path: str) -> str:
    parts = path.replace("\\", "/").rsplit("/site-packages/", 1)
    return parts[1].split("/", 1)[0] if len(parts) == 2 else ""


class JsonLines(JsonFormatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, extras."""

    def __init__(self) -> None:
        super().__init__(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def json_handler(stream: IO[str] | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLines())
    return handler


def install(
    handler: logging.Handler, level: str | int, secrets: list[str] | tuple[str, ...] = ()
) -> None:
    """Make `handler`, redacted, the root logger's only handler; `secrets`: the configured
    secret values (`secret_values(settings)`), replaced wherever they appear."""
    handler.addFilter(RedactFilter(secrets))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
