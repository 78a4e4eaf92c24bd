"""The command line as an operator meets it (issue 21): start-up cost, paths relative to
the configuration, an unmigrated database, a second instance."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bot.cli.test_app import CICBOT, base_env, run, write_config
from tests.conftest import ROOT

__all__ = ["base_env"]  # the fixture, shared with test_app.py

HEAVY = ("aiogram", "sklearn", "scipy", "slack_bolt", "alembic", "fastapi", "uvicorn")


def imported(args: list[str], env: dict[str, str], cwd: Path) -> set[str]:
    """The top-level packages a `cicbot` command imported, printed when it exits."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('MODULES', ' '.join(sorted({m.split('.')[0] "
        "for m in sys.modules})), file=sys.stderr))\n"
        f"sys.argv = ['cicbot', *{args!r}]\n"
        "from bot.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("MODULES "))
    return set(line.split()[1:])


def test_version(tmp_path: Path, base_env: dict[str, str]) -> None:
    proc = run("--version", env=base_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("cicbot 0.")


def test_help_imports_neither_the_database_layer_nor_the_platforms(
    tmp_path: Path, base_env: dict[str, str]
) -> None:
    """Regression: `--help` imported aiogram, scikit-learn and SQLAlchemy (8 s)."""
    modules = imported(["--help"], base_env, tmp_path)
    assert not modules & {*HEAVY, "sqlalchemy", "numpy", "pydantic_settings"}


def test_listing_commands_import_no_platform_library(
    tmp_path: Path, sqlite_url: str, base_env: dict[str, str]
) -> None:
    """Regression: `campaigns list` imported aiogram (Telegram not configured) and every
    command scikit-learn; a listing needs the configuration and the database only."""
    env = {**base_env, "CICBOT_CONFIG": str(ROOT / "config.yaml")}
    env["CICBOT_DATABASE__URL"] = sqlite_url
    for args in (["cases", "list"], ["campaigns", "list"], ["campaigns", "status", "csat"]):
        modules = imported(args, env, tmp_path)
        assert not modules & set(HEAVY), (args, modules & set(HEAVY))


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, base_env: dict[str, str]
) -> None:
    """Regression: with CICBOT_CONFIG set, `data/cicbot.db` was opened in the working
    directory: a new empty database (no agents, no history)."""
    folder = tmp_path / "conf"
    folder.mkdir()
    config = write_config(folder, database={"url": "sqlite+aiosqlite:///data/bot.db"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    added = run(
        "agents", "add", "ada", "--role", "admin", env=base_env, cwd=elsewhere, config=config
    )
    assert added.returncode == 0, added.stderr
    assert (folder / "data" / "bot.db").is_file()
    assert not (elsewhere / "data").exists()
    # from the config's folder, from a third place: the same database, the same agent
    for cwd in (folder, tmp_path):
        listed = run("agents", "list", env=base_env, cwd=cwd, config=config)
        assert listed.returncode == 0 and "ada" in listed.stdout, listed.stderr


def test_config_not_found_names_the_folder(tmp_path: Path, base_env: dict[str, str]) -> None:
    env = {k: v for k, v in base_env.items() if k != "CICBOT_CONFIG"}
    proc = subprocess.run(
        [CICBOT, "cases", "list"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert f"config file not found: config.yaml in {tmp_path}" in proc.stderr
    assert "CICBOT_CONFIG" in proc.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["agents", "list"],
        ["cases", "list"],
        ["campaigns", "list"],
        ["contacts", "show", "x:y"],
        ["chat"],
        ["serve", "--port", "free"],
    ],
)
def test_unmigrated_database_without_auto_migrate_says_what_to_run(
    tmp_path: Path, command: list[str], base_env: dict[str, str]
) -> None:
    """Regression: `agents list` printed a 550-line traceback (no such table: agents)."""
    config = write_config(tmp_path, database={"auto_migrate": False})
    db = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    command = [str(free_port()) if part == "free" else part for part in command]
    proc = run(*command, env=base_env, cwd=tmp_path, config=config, db_url=db)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "not migrated" in line and "run `cicbot db upgrade`" in line


def test_unmigrated_database_is_migrated_where_auto_migrate_allows(
    tmp_path: Path, base_env: dict[str, str]
) -> None:
    config = write_config(tmp_path, database={"auto_migrate": True})
    path = tmp_path / "fresh.db"
    db = f"sqlite+aiosqlite:///{path}"
    proc = run("agents", "list", env=base_env, cwd=tmp_path, config=config, db_url=db)
    assert proc.returncode == 0, proc.stderr
    assert "migrating the database" in proc.stderr and "name" in proc.stdout
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM agents").fetchone() == (0,)
    again = run("campaigns", "list", env=base_env, cwd=tmp_path, config=config, db_url=db)
    assert again.returncode == 0 and "migrating" not in again.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serving(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [CICBOT, "serve", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    port = int(args[args.index("--port") + 1])
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("cicbot serve did not start")


def test_second_instance_is_refused_before_it_starts_anything(
    tmp_path: Path, sqlite_url: str, base_env: dict[str, str]
) -> None:
    """Regression: a second `serve` on the same port started completely ("this worker
    leads") and then died with [Errno 98], exit 3, no hint; one on another port but the
    same SQLite file also led the scheduler, without a word."""
    env = {**base_env, "CICBOT_CONFIG": str(ROOT / "config.yaml")}
    env["CICBOT_DATABASE__URL"] = sqlite_url
    env["CICBOT_WEBCHAT__KEY_FILE"] = str(tmp_path / "webchat.key")
    port = free_port()
    first = start_serving(["--port", str(port), "--log-level", "warning"], env, tmp_path)
    try:
        same_port = run("serve", "--port", str(port), env=env, cwd=tmp_path)
        assert same_port.returncode == 1
        [line] = same_port.stderr.strip().splitlines()
        assert f"cannot listen on 127.0.0.1:{port}" in line and "--port" in line
        assert "leads" not in same_port.stderr + same_port.stdout

        same_file = run("serve", "--port", str(free_port()), env=env, cwd=tmp_path)
        assert same_file.returncode == 1
        [line] = same_file.stderr.strip().splitlines()
        assert f"pid {first.pid}" in line and "SQLite is for one process" in line
        assert "leads" not in same_file.stderr + same_file.stdout
    finally:
        first.terminate()
        first.wait(timeout=30)
    # its log went to a pipe: one record a line, not wrapped at 80 columns (Rich did), and
    # it says where agents work and that one must be created first
    assert first.stdout is not None
    lines = first.stdout.read().splitlines()
    [warning] = [x for x in lines if "no agent yet" in x]
    assert "cicbot agents add NAME --role admin" in warning and "/agent" in warning
    assert " WARNING cicbot: " in warning and len(warning) > 100
    # the lock went with the process: the database can be served again
    again = start_serving(["--port", str(port), "--log-level", "warning"], env, tmp_path)
    again.terminate()
    again.wait(timeout=30)


def test_help_pages_show_no_type_markers_and_keep_sentences_whole(
    tmp_path: Path, base_env: dict[str, str]
) -> None:
    """Regression: `--json <bool>`, `{name}` in usage lines, and the command list broke
    the report's description after "SLA," where the docstring's line ended."""
    pages = [
        run(*args, "--help", env=base_env, cwd=tmp_path).stdout
        for args in ([], ["agents", "add"], ["campaigns", "preview"], ["kb", "match"])
    ]
    for page in pages:
        assert "<bool>" not in page and "<str>" not in page and "{name}" not in page, page
    assert "complaints, SLA, CSAT" in pages[0]
    assert "Usage: cicbot agents add [OPTIONS] NAME" in pages[1]
    assert "--role" in pages[1] and "TEXT" in pages[1]
