"""The terminal chat end to end: the real `cicbot` console script in a subprocess,
answers on stdin, then the history and the cases through the CLI."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

CICBOT = str(ROOT / ".venv" / "bin" / "cicbot")
CASE_REF = re.compile(r"C-\d{4}-\d{6}")
TIMEOUT = 60


@pytest.fixture(scope="session")
def base_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of the subprocesses: the repository's config.yaml with humans on
    duty around the clock (the suite runs at any hour), no CICBOT_* from outside, and
    compiled bytecode cached for the session (PYTHONDONTWRITEBYTECODE makes every start
    compile SQLAlchemy and pydantic anew)."""
    base = tmp_path_factory.getbasetemp()
    config = yaml.safe_load((ROOT / "config.yaml").read_text("utf-8"))
    days = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    config["business_hours"] = {
        "timezone": "UTC",
        "weekly": {day: ["00:00-23:59:59"] for day in days},
    }
    config_path = base / "console-config.yaml"
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True), "utf-8")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CICBOT_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(
        CICBOT_CONFIG=str(config_path),
        COLUMNS="200",
        NO_COLOR="1",
        TERM="dumb",
        PYTHONIOENCODING="utf-8",
        PYTHONPYCACHEPREFIX=str(base / "pycache"),
    )
    return env


def cicbot(
    *args: str, env: dict[str, str], db_url: str, cwd: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**env, "CICBOT_DATABASE__URL": db_url}
    if stdin is not None:
        answers = cwd / "answers.txt"
        answers.write_text(stdin, "utf-8")
        with answers.open("rb") as fh:
            raw = subprocess.run(
                [CICBOT, *args], stdin=fh, capture_output=True, env=env, cwd=cwd, timeout=TIMEOUT
            )
    else:
        raw = subprocess.run(
            [CICBOT, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=env,
            cwd=cwd,
            timeout=TIMEOUT,
        )
    return subprocess.CompletedProcess(
        raw.args, raw.returncode, raw.stdout.decode("utf-8"), raw.stderr.decode("utf-8")
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def table_rows(output: str) -> list[list[str]]:
    """The rows of a Rich table as cells; a cell wrapped onto more lines is joined."""
    rows: list[list[str]] = []
    for line in output.splitlines():
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        if cells[0]:
            rows.append(cells)
        elif rows:  # continuation of a wrapped row
            rows[-1] = [
                f"{a}\n{b}".strip() if b else a for a, b in zip(rows[-1], cells, strict=True)
            ]
    return rows


GERMAN_ANSWERS = [
    "hallo",  # menu
    "2",  # Beschwerde einreichen
    "1",  # Lieferung
    "Das Paket kam beschädigt an.",
    "überspringen",
    "2",  # Ärgerlich
    "1",  # Erstattung
    "ja",
]
GERMAN_QUESTIONS = [
    "Hallo anna! Ich bin der digitale Assistent der Beispiel GmbH.",
    "Es tut mir leid, dass etwas schiefgelaufen ist.",
    "Worum geht es bei Ihrer Beschwerde?",
    "Bitte beschreiben Sie, was passiert ist.",
    "Haben Sie eine Bestell- oder Rechnungsnummer?",
    "Wie schwer wiegt das Problem für Sie?",
    "Was wünschen Sie sich von uns?",
    "Bitte prüfen Sie Ihre Beschwerde:",
    "Vielen Dank. Ihre Beschwerde ist unter der Nummer",
]


def test_complaint_in_german_then_history_and_cases(
    tmp_path: Path, base_env: dict[str, str]
) -> None:
    db = tmp_path / "fresh" / "console.db"  # does not exist: `chat` migrates it at start
    url = f"sqlite+aiosqlite:///{db}"
    out = ok(
        cicbot(
            "chat",
            "--user",
            "anna",
            "--lang",
            "de",
            env=base_env,
            db_url=url,
            cwd=tmp_path,
            stdin="\n".join(GERMAN_ANSWERS) + "\n",
        )
    )

    lines = out.rstrip("\n").splitlines()
    assert lines[-1].startswith("bot: Vielen Dank.")
    ref = CASE_REF.search(lines[-1])
    assert ref is not None, lines[-1]
    reference = ref.group(0)
    assert lines[-1].endswith(f"„Status {reference}“.")
    # the script echoes each answer, then the bot's replies, in order
    assert [ln[5:] for ln in lines if ln.startswith("you: ")] == GERMAN_ANSWERS
    bot_lines = [ln[5:] for ln in lines if ln.startswith("bot: ")]
    assert len(bot_lines) == len(GERMAN_QUESTIONS)
    for said, expected in zip(bot_lines, GERMAN_QUESTIONS, strict=True):
        assert said.startswith(expected), (said, expected)
    assert "  2) Beschwerde einreichen" in lines

    # the whole timeline, inbound and outbound, oldest first
    shown = ok(cicbot("contacts", "show", "console:anna", env=base_env, db_url=url, cwd=tmp_path))
    assert "anna" in shown.splitlines()[0] and "locale=de" in shown.splitlines()[0]
    assert "console:anna" in shown
    assert f"case {reference}  new  delivery  severity=medium" in shown
    rows = table_rows(shown)
    ids = [int(r[0]) for r in rows]
    assert ids == sorted(ids)
    with sqlite3.connect(db) as conn:
        stored = [r[0] for r in conn.execute("SELECT id FROM touchpoints ORDER BY id")]
    assert ids == stored  # every touchpoint is listed
    assert all(r[2] == "console" for r in rows)
    directions = [r[3] for r in rows]
    assert directions == [
        "in", "out",  # hallo → menu
        "in", "out", "out",  # 2 → intro, category
        "in", "out",  # 1 → description
        "in", "out",  # description → reference
        "in", "out",  # skip → severity
        "in", "out",  # 2 → resolution
        "in", "out",  # 1 → confirmation
        "in", "internal", "out",  # ja → case opened → reference
    ]  # fmt: skip
    inbound = [r for r in rows if r[3] == "in"]
    assert [r[6] for r in inbound] == GERMAN_ANSWERS
    assert [r[4] for r in inbound] == [
        "message",
        "button",
        "button",
        "message",
        "message",
        "button",
        "button",
        "message",
    ]
    assert all(r[5] == "customer" for r in inbound)
    outbound = [r[6].replace("\n", " ") for r in rows if r[3] == "out"]
    for said, expected in zip(outbound, GERMAN_QUESTIONS, strict=True):
        assert said.startswith(expected), (said, expected)
    assert reference in outbound[-1]
    [internal] = [r for r in rows if r[3] == "internal"]
    assert internal[4] == "case_opened" and f"reference={reference}" in internal[6]

    cases = ok(cicbot("cases", "list", env=base_env, db_url=url, cwd=tmp_path))
    [case] = table_rows(cases)
    assert case[:4] == [reference, "new", "delivery", "medium"]


def test_faq_in_english(tmp_path: Path, sqlite_url: str, base_env: dict[str, str]) -> None:
    out = ok(
        cicbot(
            "chat",
            "--user",
            "bob",
            "--lang",
            "en",
            env=base_env,
            db_url=sqlite_url,
            cwd=tmp_path,
            stdin="when are you open?\n",
        )
    )
    assert out.splitlines() == [
        "you: when are you open?",
        "bot: Our customer service is available Monday to Friday, 8 am to 6 pm, and Saturday,"
        " 9 am to 2 pm. You can write to us here in the chat at any time.",
    ]
    shown = ok(
        cicbot("contacts", "show", "console:bob", env=base_env, db_url=sqlite_url, cwd=tmp_path)
    )
    assert "locale=en" in shown
    rows = table_rows(shown)
    assert [(r[3], r[4]) for r in rows] == [
        ("in", "message"),
        ("internal", "selfservice"),
        ("out", "message"),
    ]
    assert "entry=opening_hours" in rows[1][6]


def test_numbers_press_only_the_latest_buttons(
    tmp_path: Path, sqlite_url: str, base_env: dict[str, str]
) -> None:
    """Regressions: "²" and "①" (isdigit, but int() refuses them) typed while buttons were
    shown crashed the chat; and a number typed after a reply without buttons pressed a
    button of an older list: a customer waiting for an agent typed "2" and was taken out
    of the queue ("Beschwerde einreichen" of an earlier list)."""
    answers = ["hallo", "²", "①", "2", "9" * 5000]
    out = ok(
        cicbot(
            "chat",
            "--user",
            "carla",
            "--lang",
            "de",
            env=base_env,
            db_url=sqlite_url,
            cwd=tmp_path,
            stdin="\n".join(answers) + "\n",
        )
    )
    assert [ln[5:] for ln in out.splitlines() if ln.startswith("you: ")] == answers
    bot_lines = [ln[5:] for ln in out.splitlines() if ln.startswith("bot: ")]
    assert bot_lines[0].startswith("Hallo carla!")
    assert bot_lines[1].startswith("Ich bin nicht sicher")  # "²": a question, not a button
    assert bot_lines[2].startswith("Das kann ich leider nicht selbst")  # "①": 2nd miss → queue
    assert bot_lines[3].startswith("Danke, ich habe das für die Kollegin")  # "2": still queued
    assert len(bot_lines) == 4  # the agent reads the rest; no repeated auto-reply
    assert "Sie warten nicht mehr" not in out
    rows = table_rows(
        ok(
            cicbot(
                "contacts", "show", "console:carla", env=base_env, db_url=sqlite_url, cwd=tmp_path
            )
        )
    )
    inbound = [(r[4], r[6].replace("\n", "")) for r in rows if r[3] == "in"]
    assert inbound[:4] == [("message", a) for a in answers[:4]]
    assert inbound[4][1].startswith("9" * 100)  # the table cuts the long one short
    assert [r[4] for r in rows if r[3] == "internal"][-1] == "escalated"


def test_a_chat_prints_only_its_own_users_replies(
    tmp_path: Path, sqlite_url: str, base_env: dict[str, str]
) -> None:
    """Regression (issue 20, finding 10): `cicbot chat --user zed` printed an agent's
    reply meant for another terminal customer; it now waits for that customer's chat."""
    ok(
        cicbot(
            "chat", "--user", "anna", env=base_env, db_url=sqlite_url, cwd=tmp_path, stdin="hallo\n"
        )
    )
    db = sqlite_url.split("///", 1)[1]
    reply = "Hallo Anna, hier ist Ben vom Kundenservice."
    with sqlite3.connect(db) as conn:  # an agent's reply, queued while anna is away
        conn.execute(
            "INSERT INTO outbox (channel, recipient_id, thread_key, body, status, attempts,"
            " next_attempt_at, created_at) VALUES ('console', 'anna', 'anna', ?, 'pending', 0,"
            " '2000-01-01 00:00:00.000000', '2000-01-01 00:00:00.000000')",
            (f'{{"text": "{reply}", "choices": [], "locale": "de", "reply_to": null}}',),
        )
    zed = ok(
        cicbot(
            "chat",
            "--user",
            "zed",
            "--lang",
            "de",
            env=base_env,
            db_url=sqlite_url,
            cwd=tmp_path,
            stdin="hallo\n",
        )
    )
    assert reply not in zed and "Hallo zed!" in zed
    with sqlite3.connect(db) as conn:
        [(status,)] = conn.execute(
            "SELECT status FROM outbox WHERE recipient_id = 'anna' AND body LIKE '%Ben%'"
        ).fetchall()
    assert status == "pending"
    anna = ok(
        cicbot("chat", "--user", "anna", env=base_env, db_url=sqlite_url, cwd=tmp_path, stdin="")
    )
    assert anna.splitlines() == [f"bot: {reply}"]  # shown when she is back
