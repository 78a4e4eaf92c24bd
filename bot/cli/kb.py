"""`cicbot kb ...`: try, measure and grow the knowledge base (docs/knowledge-base.md)."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bot.cli import common
from bot.knowledge.errors import KBError

if TYPE_CHECKING:
    from bot.config import Settings
    from flows.knowledge import Matcher
    from flows.options import KnowledgeBaseOptions

# the knowledge base's modules (numpy, scikit-learn) are imported by the command that
# uses them, not by every `cicbot` command (bench/cli_startup.py)

kb_app = typer.Typer(help="Knowledge base: match, eval, gaps, import.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

KbOption = Annotated[
    list[Path] | None,
    typer.Option("--kb", help="A knowledge-base YAML file (repeatable); default: config.yaml's."),
]
ThresholdOption = Annotated[
    float | None, typer.Option(help="Default: knowledge_base.threshold of config.yaml.")
]
EncoderOption = Annotated[
    str | None, typer.Option(help="none or e5; default: knowledge_base.encoder.")
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(code)


def _settings(required: bool) -> Settings | None:
    from bot.config import ConfigError, load_settings

    try:
        return load_settings()
    except ConfigError as exc:
        if required:
            raise _fail(str(exc)) from None
        return None


def _options(kb: list[Path] | None, encoder: str | None) -> KnowledgeBaseOptions:
    """The knowledge base of --kb files, or of config.yaml (files and inline entries)."""
    from bot.knowledge.base import load_files
    from flows.options import KnowledgeBaseOptions

    settings = _settings(required=not kb)
    base = settings.knowledge_base if settings is not None else KnowledgeBaseOptions()
    if kb:
        try:
            entries = [loc.entry for loc in load_files(kb)]
        except KBError as exc:
            raise _fail(str(exc)) from None
        base = base.model_copy(update={"entries": entries, "files": [str(p) for p in kb]})
    if encoder is not None:
        base = base.model_copy(update={"encoder": encoder})
    return base


def _matcher(options: KnowledgeBaseOptions) -> Matcher:
    from bot.knowledge.base import build_matcher

    try:
        return build_matcher(options)
    except KBError as exc:
        raise _fail(str(exc)) from None


@kb_app.command("match")
def kb_match(
    text: Annotated[str, typer.Argument(help="A customer's question.")],
    kb: KbOption = None,
    threshold: ThresholdOption = None,
    encoder: EncoderOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The best entry for a question and its confidence, or none."""
    from flows.intents import floor, recognise
    from flows.knowledge_eval import label
    from flows.options import Intent, KnowledgeEntry

    options = _options(kb, encoder)
    limit = options.threshold if threshold is None else threshold
    matcher = _matcher(options)
    # as the bot does: a built-in intent it is sure of first, then the knowledge base
    match = recognise(matcher, text, limit) or matcher.best(text)
    if match is not None and isinstance(match.entry, Intent):
        limit = floor(match.entry, limit)
    answered = match is not None and match.confidence >= limit
    result: dict[str, Any] = {
        "entry": label(match.entry) if answered and match else None,
        "confidence": round(match.confidence, 3) if match else 0.0,
        "threshold": limit,
        "nearest": label(match.entry) if match else None,
        "example": match.example if match else None,
    }
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
        return
    if match is None:
        out.print("none: no word of the question is in the knowledge base", highlight=False)
    elif answered:
        what = (
            f"answer (en): {match.entry.answer.en}"
            if isinstance(match.entry, KnowledgeEntry)
            else "a built-in intent (docs/knowledge-base.md)"
        )
        out.print(
            f"{label(match.entry)}  confidence {match.confidence:.3f} (threshold {limit:.2f})\n"
            f"  nearest example: {match.example}\n  {what}",
            markup=False,
            highlight=False,
        )
    else:
        out.print(
            f"none: confidence {match.confidence:.3f} is below the threshold {limit:.2f} "
            f"(nearest: {label(match.entry)}, {match.example!r}) → the bot says it is not sure",
            markup=False,
            highlight=False,
        )


@kb_app.command("eval")
def kb_eval(
    queries: Annotated[
        Path | None,
        typer.Option(
            "--queries",
            help="CSV with columns text, expected (empty/oos). Without it: the calibration "
            "on the base's own held-out examples.",
        ),
    ] = None,
    kb: KbOption = None,
    threshold: ThresholdOption = None,
    encoder: EncoderOption = None,
    target: Annotated[
        float, typer.Option("--target-precision", min=0.5, max=0.999, help="For the suggestion.")
    ] = 0.9,
) -> None:
    """JSON: in-scope accuracy, out-of-scope recall and precision, p50/p99 ms, a table of
    how other thresholds trade them, the calibration (reliability bins, expected
    calibration error) and the threshold suggested for a target precision."""
    from bot.knowledge.base import read_queries
    from flows.knowledge_eval import evaluate, self_check

    options = _options(kb, encoder)
    rows = None
    if queries is not None:
        try:
            rows = read_queries(queries)
        except KBError as exc:
            raise _fail(str(exc)) from None
    matcher = _matcher(options)
    if rows is None:
        print(json.dumps(self_check(matcher, target), indent=2))
        return
    limit = options.threshold if threshold is None else threshold
    try:
        figures = evaluate(matcher, rows, limit, target=target)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    print(json.dumps(figures, indent=2))


@kb_app.command("gaps")
def kb_gaps(
    days: Annotated[int, typer.Option(help="Look this many days back.")] = 30,
    limit: Annotated[int, typer.Option(help="Show at most this many questions.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The questions customers asked most often that got no answer (contact history)."""
    from bot.knowledge.base import gaps_from, selfservice_rows
    from storage.db import run_in_transaction
    from storage.models import utcnow

    settings = _settings(required=True)
    assert settings is not None
    since = utcnow() - timedelta(days=days)

    rows = run_in_transaction(common.ready(settings), lambda s: selfservice_rows(s, since))
    report = gaps_from(rows, limit)
    if as_json:
        print(
            json.dumps(
                {
                    "days": days,
                    "asked": report.asked,
                    "answered": report.answered,
                    "answered_share": round(report.answered_share, 4),
                    "gaps": [
                        {
                            "question": g.question,
                            "count": g.count,
                            "last": g.last.isoformat(),
                            "nearest": g.nearest,
                            "confidence": round(g.confidence, 3),
                        }
                        for g in report.gaps
                    ],
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return
    out.print(
        f"last {days} days: {report.asked} self-service questions, {report.answered} answered "
        f"by the bot ({report.answered_share:.0%}), {report.asked - report.answered} not",
        highlight=False,
    )
    table = Table("times", "question (latest wording)", "nearest entry", "mean conf.", "last (UTC)")
    for g in report.gaps:
        table.add_row(
            str(g.count),
            Text(g.question[:120]),
            Text(g.nearest or "-"),
            f"{g.confidence:.2f}",
            g.last.strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)


@kb_app.command("import")
def kb_import(
    csv_file: Annotated[Path, typer.Argument(help="CSV with columns question, answer_id.")],
    kb: KbOption = None,
) -> None:
    """Add the CSV's questions as examples of their entries, in the entries' YAML files."""
    from bot.knowledge.base import import_examples, resolve

    files = kb
    if not files:
        settings = _settings(required=True)
        assert settings is not None
        base = Path(os.environ.get("CICBOT_CONFIG", "config.yaml")).resolve().parent
        try:
            files = [resolve(f, base) for f in settings.knowledge_base.files]
        except KBError as exc:
            raise _fail(str(exc)) from None
        if not files:
            raise _fail("config.yaml names no knowledge_base.files; use --kb FILE")
    try:
        report = import_examples(csv_file, files)
    except KBError as exc:
        raise _fail(str(exc)) from None
    total = sum(report.added.values())
    out.print(
        f"{total} examples added to {len(report.added)} entries"
        f" ({report.duplicates} already known, skipped)",
        highlight=False,
    )
    for eid, n in sorted(report.added.items()):
        out.print(f"  {eid}: +{n}", markup=False, highlight=False)
