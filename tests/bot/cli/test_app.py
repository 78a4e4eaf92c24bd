"""The `cicbot` command line, run as the installed console script."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from bot.channel.messages import InboundMessage
from bot.runtime import Runtime
from storage.migrate import current_head
from tests.conftest import ROOT, TABLES, make_settings

CICBOT = str(ROOT / ".venv" / "bin" / "cicbot")
TIMEOUT = 60


@pytest.fixture(scope="session")
def base_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """No CICBOT_* from outside; compiled bytecode cached for the session
    (PYTHONDONTWRITEBYTECODE makes every start compile SQLAlchemy and pydantic anew)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CICBOT_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(
        COLUMNS="200",
        NO_COLOR="1",
        TERM="dumb",
        PYTHONIOENCODING="utf-8",
        PYTHONPYCACHEPREFIX=str(tmp_path_factory.getbasetemp() / "pycache"),
    )
    return env


def run(
    *args: str,
    env: dict[str, str],
    cwd: Path,
    config: Path | None = None,
    db_url: str | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {**env, "CICBOT_CONFIG": str(config or ROOT / "config.yaml")}
    if db_url:
        env["CICBOT_DATABASE__URL"] = db_url
    return subprocess.run(
        [CICBOT, *args],
        input=stdin or "",
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=cwd,
        timeout=TIMEOUT,
    )


def write_config(tmp_path: Path, **changes: dict[str, object]) -> Path:
    data = yaml.safe_load((ROOT / "config.yaml").read_text("utf-8"))
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), "utf-8")
    return path


def test_help_lists_the_commands(tmp_path: Path, base_env: dict[str, str]) -> None:
    proc = run("--help", env=base_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for command in ("serve", "chat", "db", "contacts", "cases"):
        assert f"│ {command} " in proc.stdout, command
    no_args = run(env=base_env, cwd=tmp_path)  # no_args_is_help
    assert "Usage: cicbot" in no_args.stdout + no_args.stderr


def test_subcommand_help(tmp_path: Path, base_env: dict[str, str]) -> None:
    proc = run("contacts", "--help", env=base_env, cwd=tmp_path)
    assert proc.returncode == 0 and "show" in proc.stdout
    proc = run("chat", "--help", env=base_env, cwd=tmp_path)
    assert proc.returncode == 0 and "--user" in proc.stdout and "--lang" in proc.stdout


def test_contacts_show_unknown_exits_1(
    tmp_path: Path, sqlite_url: str, base_env: dict[str, str]
) -> None:
    proc = run("contacts", "show", "nosuch:x", env=base_env, cwd=tmp_path, db_url=sqlite_url)
    assert proc.returncode == 1
    assert "no contact nosuch:x" in proc.stderr
    assert "Traceback" not in proc.stderr
    # a reference that looks like Rich markup is printed as it is, not interpreted
    proc = run("contacts", "show", "nosuch:[/]", env=base_env, cwd=tmp_path, db_url=sqlite_url)
    assert proc.returncode == 1
    assert "no contact nosuch:[/]" in proc.stderr
    assert "Traceback" not in proc.stderr
    for ref in ("12345", "no-colon-at-all"):
        proc = run("contacts", "show", ref, env=base_env, cwd=tmp_path, db_url=sqlite_url)
        assert proc.returncode == 1 and f"no contact {ref}" in proc.stderr


def test_contacts_show_prints_customer_text_literally(
    tmp_path: Path, sqlite_url: str, base_env: dict[str, str]
) -> None:
    """Regression: customer text and names went through Rich markup: "[/]" in a message
    crashed `contacts show` (MarkupError) and "[bold]" vanished from the history."""
    text = "Mein Code ist [bold]X1[/bold] und [/] :smile:"

    async def seed() -> None:
        runtime = Runtime(make_settings(sqlite_url), channels=[])
        try:
            await runtime.engine.handle(
                InboundMessage(
                    channel="console",
                    sender_id="[red]eve",
                    platform_message_id="m-1",
                    thread_key="[red]eve",
                    text=text,
                    sender_name="[red]eve",
                    locale_hint="de",
                )
            )
        finally:
            await runtime.db.dispose()

    asyncio.run(seed())
    proc = run(
        "contacts", "show", "console:[red]eve", env=base_env, cwd=tmp_path, db_url=sqlite_url
    )
    assert proc.returncode == 0, proc.stderr
    assert "[red]eve" in proc.stdout.splitlines()[0]
    assert "console:[red]eve" in proc.stdout
    assert text in proc.stdout


@pytest.mark.parametrize("command", [["cases", "list"], ["db", "upgrade"], ["serve"], ["chat"]])
def test_invalid_config_exits_2_naming_the_key(
    tmp_path: Path, command: list[str], base_env: dict[str, str]
) -> None:
    config = write_config(tmp_path, server={"port": "abc"})
    proc = run(
        *command,
        env=base_env,
        cwd=tmp_path,
        config=config,
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}",
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "server.port" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.db").exists()


def test_config_errors_name_the_problem(tmp_path: Path, base_env: dict[str, str]) -> None:
    missing = run("cases", "list", env=base_env, cwd=tmp_path, config=tmp_path / "nope.yaml")
    assert missing.returncode == 2 and "config file not found" in missing.stderr

    out_of_range = write_config(tmp_path, server={"port": 70000})
    proc = run("cases", "list", env=base_env, cwd=tmp_path, config=out_of_range)
    assert proc.returncode == 2 and "server.port" in proc.stderr

    secret = write_config(tmp_path, telegram={"token": "123:abc"})
    proc = run("cases", "list", env=base_env, cwd=tmp_path, config=secret)
    assert proc.returncode == 2
    assert "telegram.token" in proc.stderr and "CICBOT_TELEGRAM__TOKEN" in proc.stderr
    assert "123:abc" not in proc.stderr  # the secret is not echoed

    broken = tmp_path / "broken.yaml"
    broken.write_text("server: [port: 1\n", "utf-8")
    proc = run("cases", "list", env=base_env, cwd=tmp_path, config=broken)
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_env_var_overrides_are_validated_too(tmp_path: Path, base_env: dict[str, str]) -> None:
    proc = run("cases", "list", env={**base_env, "CICBOT_SERVER__PORT": "abc"}, cwd=tmp_path)
    assert proc.returncode == 2 and "server.port" in proc.stderr


def test_db_upgrade_creates_the_tables(tmp_path: Path, base_env: dict[str, str]) -> None:
    db = tmp_path / "new" / "dir" / "cicbot.db"
    proc = run("db", "upgrade", env=base_env, cwd=tmp_path, db_url=f"sqlite+aiosqlite:///{db}")
    assert proc.returncode == 0, proc.stderr
    assert "database at revision head" in proc.stdout
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        [(revision,)] = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert set(TABLES) <= tables
    assert revision == current_head()
    # idempotent; and the other commands work on the new database
    again = run("db", "upgrade", env=base_env, cwd=tmp_path, db_url=f"sqlite+aiosqlite:///{db}")
    assert again.returncode == 0, again.stderr
    cases = run("cases", "list", env=base_env, cwd=tmp_path, db_url=f"sqlite+aiosqlite:///{db}")
    assert cases.returncode == 0 and "reference" in cases.stdout


def test_agents_password_reset(tmp_path: Path, base_env: dict[str, str]) -> None:
    """An admin sets an agent's console password on the command line (asked twice, read
    from stdin here), or a random one; the agent then signs in with email and password."""
    from bot.desk import auth
    from storage.db import run_in_transaction

    url = f"sqlite+aiosqlite:///{tmp_path / 'cicbot.db'}"
    assert run("db", "upgrade", env=base_env, cwd=tmp_path, db_url=url).returncode == 0
    added = run(
        "agents",
        "add",
        "Anna",
        "--email",
        "anna@example.com",
        env=base_env,
        cwd=tmp_path,
        db_url=url,
    )
    assert added.returncode == 0, added.stderr
    no_email = run("agents", "add", "Ben", env=base_env, cwd=tmp_path, db_url=url)
    assert no_email.returncode == 0
    typed = "ein gutes Passwort"
    proc = run(
        "agents",
        "password",
        "1",
        env=base_env,
        cwd=tmp_path,
        db_url=url,
        stdin=f"{typed}\n{typed}\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert typed not in proc.stdout and "console sessions ended" in proc.stdout

    def check(password: str) -> bool:
        async def verify(s: object) -> bool:
            return await auth.verify_login(s, "anna@example.com", password) is not None  # type: ignore[arg-type]

        return run_in_transaction(url, verify)

    assert check(typed)
    short = run(
        "agents", "password", "1", env=base_env, cwd=tmp_path, db_url=url, stdin="kurz\nkurz\n"
    )
    assert short.returncode == 2 and "at least" in short.stderr
    rand = run("agents", "password", "1", "--random", env=base_env, cwd=tmp_path, db_url=url)
    assert rand.returncode == 0, rand.stderr
    temporary = rand.stdout.strip().splitlines()[-1]
    assert check(temporary) and not check(typed)
    assert (
        run(
            "agents", "password", "2", "--random", env=base_env, cwd=tmp_path, db_url=url
        ).returncode
        == 1
    )  # no email to sign in with
    assert (
        run(
            "agents", "password", "9", "--random", env=base_env, cwd=tmp_path, db_url=url
        ).returncode
        == 1
    )


def test_canned_replies_on_the_command_line(tmp_path: Path, base_env: dict[str, str]) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cicbot.db'}"
    assert run("db", "upgrade", env=base_env, cwd=tmp_path, db_url=url).returncode == 0
    saved = run(
        "canned",
        "set",
        "/Lieferung",
        "Ihr Paket ist unterwegs.",
        env=base_env,
        cwd=tmp_path,
        db_url=url,
    )
    assert saved.returncode == 0 and "/lieferung saved" in saved.stdout, saved.stderr
    bad = run("canned", "set", "zwei worte", "x", env=base_env, cwd=tmp_path, db_url=url)
    assert bad.returncode == 2
    listed = run("canned", "list", env=base_env, cwd=tmp_path, db_url=url)
    assert "/lieferung" in listed.stdout and "Ihr Paket ist unterwegs." in listed.stdout
    assert (
        run("canned", "remove", "lieferung", env=base_env, cwd=tmp_path, db_url=url).returncode == 0
    )
    assert (
        run("canned", "remove", "lieferung", env=base_env, cwd=tmp_path, db_url=url).returncode == 1
    )
