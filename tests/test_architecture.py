"""The import contracts of `make lint` (pyproject.toml [tool.importlinter], checked by
import-linter's `lint-imports`): they hold on the code, and they catch what they are for
(a cycle, also one only through `if TYPE_CHECKING:`; an import up the layers; a channel
reaching past the channel contract) when it is injected into a copy of the code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "channels", "flows", "storage")
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the copy, before the installed tree
    return subprocess.run(
        [str(LINT), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(
            ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "static")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def inject(path: Path, lines: str) -> None:
    text = path.read_text("utf-8")
    path.write_text(text + "\n" + lines + "\n", "utf-8")


def test_the_code_keeps_the_contracts(copy: Path) -> None:
    result = lint(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_type_only_cycle_fails(copy: Path) -> None:
    # storage.queries imports storage.models; the other way round only for type hints
    inject(
        copy / "storage" / "models.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from storage import queries",
    )
    result = lint(copy)
    assert result.returncode != 0
    assert "no import cycles, at any depth BROKEN" in result.stdout


def test_an_upward_import_fails(copy: Path) -> None:
    # the channel contract is the bottom layer: it must not know the runtime
    inject(
        copy / "bot" / "channel" / "messages.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from bot.runtime import Runtime",
    )
    result = lint(copy)
    assert result.returncode != 0
    assert "each layer imports only the layers below it BROKEN" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("channels/webchat/adapter.py", "from storage import queries", "channels translate"),
        ("channels/email/adapter.py", "import bot.runtime", "channels translate"),
        ("bot/runtime.py", "import channels.console.adapter", "nothing in bot, flows or storage"),
        ("flows/complaint.py", "import storage.models", "flows are pure"),
    ],
)
def test_reaching_past_a_boundary_fails(copy: Path, module: str, line: str, contract: str) -> None:
    inject(copy / module, line)
    result = lint(copy)
    assert result.returncode != 0
    assert contract in result.stdout


def test_the_channels_contract_names_every_package_of_bot_but_the_contract() -> None:
    """A new package in bot/ is forbidden to channels without anyone remembering to."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    [contract] = [
        c
        for c in config["tool"]["importlinter"]["contracts"]
        if c["id"] == "channels-through-the-contract"
    ]
    packages = {
        f"bot.{p.stem}"
        for p in (ROOT / "bot").iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and p.stem != "__init__")
    }
    assert set(contract["forbidden_modules"]) == (packages - {"bot.channel"}) | {"storage", "flows"}
