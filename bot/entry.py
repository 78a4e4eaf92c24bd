"""The `cicbot` command's entry point, kept light on purpose.

multiprocessing runs the program's main script again in every worker process it starts
(the sandbox's validators, bot/sandbox.py); the `cicbot` script imports only this module,
so a worker starts in a fraction of a second with aiogram alone, instead of importing the
whole application (the CLI pulls in scikit-learn and the rest: seconds, and twice the
memory, per worker). The CLI is imported when the command runs.
"""

from __future__ import annotations


def main() -> None:
    from bot.cli import main as cli

    cli()
