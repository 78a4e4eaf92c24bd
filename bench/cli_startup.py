"""Start-up time of the `cicbot` command: the median wall time of 5 runs each.

    .venv/bin/python bench/cli_startup.py [--runs N]

Runs `cicbot --version`, `cicbot --help`, `cicbot cases list` and `cicbot campaigns list`
as an operator would, each a fresh process, against a copy of config.yaml in a temporary
folder with its own migrated SQLite database (migrated once before timing). Targets (issue
21, on the 2-core development machine): `--help` under 0.5 s, a listing under 1.5 s.

Python's bytecode cache is on (PYTHONDONTWRITEBYTECODE removed), as on an operator's
machine: the first run of a fresh install compiles every module it imports (`first s`,
seconds; `uv sync --compile-bytecode`, as the Makefile does, compiles them at install),
the median is of the runs after it. The machine's load average is printed with the
figures: on 2 shared cores it moves them by a factor of two.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CICBOT = Path(sys.executable).with_name("cicbot")
COMMANDS = [
    ("--version", 0.5),
    ("--help", 0.5),
    ("cases list", 1.5),
    ("campaigns list", 1.5),
]


def _time(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system, what the load of others does not inflate)"""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([str(CICBOT), *args], env=env, cwd=cwd, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory(prefix="cicbot-bench-") as tmp:
        folder = Path(tmp)
        shutil.copy(ROOT / "config.yaml", folder / "config.yaml")
        shutil.copytree(ROOT / "kb", folder / "kb")
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("CICBOT_") and k != "PYTHONDONTWRITEBYTECODE"
        }
        env["CICBOT_CONFIG"] = str(folder / "config.yaml")
        subprocess.run(
            [str(CICBOT), "db", "upgrade"], env=env, cwd=folder, check=True, capture_output=True
        )
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, {runs} runs each")
        print(
            f"{'command':<22}{'first s':>8}{'median s':>10}{'min s':>8}{'max s':>8}"
            f"{'CPU s':>7}  target (median)"
        )
        for command, target in COMMANDS:
            try:
                first, _ = _time(command.split(), env, folder)
                both = [_time(command.split(), env, folder) for _ in range(runs)]
            except subprocess.CalledProcessError as exc:
                print(
                    f"cicbot {command:<15}  failed (exit {exc.returncode}): {exc.stderr[-200:]!r}"
                )
                continue
            times = [wall for wall, _ in both]
            median = statistics.median(times)
            cpu = statistics.median(c for _, c in both)
            verdict = "ok" if median < target else "SLOW"
            print(
                f"cicbot {command:<15}{first:>8.2f}{median:>10.2f}"
                f"{min(times):>8.2f}{max(times):>8.2f}{cpu:>7.2f}"
                f"  < {target} s {verdict}"
            )


if __name__ == "__main__":
    main()
