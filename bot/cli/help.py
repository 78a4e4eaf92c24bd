"""Help pages an operator reads: no `<bool>`/`<str>` markers, no `{name}` in usage lines,
no line broken mid-sentence where a docstring wraps.

typer 0.29 shows every option's Python type in angle brackets (`--json <bool>`) and a
required argument in braces; click's conventions are kept instead: flags show nothing,
values their kind in capitals (TEXT, INTEGER, PATH), arguments their name in capitals.
And a command's docstring is one paragraph whose source lines are joined, so the
command list does not break "complaints, SLA,\\n CSAT" where the source did.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import typer
from typer import core

_KINDS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "Path": "PATH"}


def _option_kind(self: core.TyperOption, ctx: Any) -> str | None:
    if self.metavar is not None:
        return self.metavar
    if self.is_flag or self.count:
        return None
    label = self.display_type(ctx).strip("<>")
    label = re.sub(r"^list\[(.*)\]$", r"\1", label)
    if "|" in label:  # choices: shown as they are typed
        return label
    return _KINDS.get(label, label.upper())


def _argument_kind(self: core.TyperArgument, ctx: Any) -> str | None:
    return None  # the argument's name says it


def _usage_name(self: core.TyperArgument) -> str:
    name = self.display_name_raw.upper()
    name = name if self.required else f"[{name}]"
    return name + ("..." if self.nargs != 1 else "")


core.TyperOption.display_type_rich = _option_kind  # type: ignore[method-assign]
core.TyperArgument.display_type_rich = _argument_kind  # type: ignore[method-assign,assignment]
core.TyperArgument._usage_display_name = _usage_name  # type: ignore[method-assign]


def joined(text: str | None) -> str | None:
    """Paragraphs kept, the lines within each joined."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def tidy(app: typer.Typer) -> None:
    """Every command's and group's help, its lines joined (see the module's docstring)."""
    for command in app.registered_commands:
        command.help = joined(command.help or inspect.getdoc(command.callback))
    for group in app.registered_groups:
        if group.typer_instance is not None:
            tidy(group.typer_instance)
