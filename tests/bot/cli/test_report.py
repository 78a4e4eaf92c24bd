"""`cicbot report`'s printing: durations and shares as people read them (issue 21)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from bot.cli import crm
from bot.crm import analytics
from storage.db import run_in_transaction


def test_durations_read_as_people_say_them() -> None:
    assert [crm.duration(s) for s in (None, 4.4, 200, 7500, 3 * 86400 + 4 * 3600 + 59)] == [
        "-",
        "4 s",
        "3 min 20 s",
        "2 h 05 min",
        "3 d 4 h",
    ]


def test_shares_as_percentages_like_the_console() -> None:
    assert crm.percent(0.6429) == "64.3 %" and crm.percent(None) == "-"


def test_report_without_the_crm_records_row_and_raw_figures(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a "crm" channel row of internal records, "mean s 7500.0", and
    "0.6429 of 14" where the console says 64.3 %."""
    until = datetime.now(UTC)
    r = run_in_transaction(
        sqlite_url, lambda s: analytics.report(s, since=until - timedelta(days=30), until=until)
    )
    r["channels"] = {
        "telegram": {"in": 9, "out": 12, "internal": 3},
        "crm": {"in": 0, "out": 0, "internal": 40},
    }
    r["first_response_seconds"]["agent"] = {"count": 3, "mean": 7500.0, "p50": 200, "p90": 9000}
    r["self_service"] = {"conversations": 14, "without_human": 9, "deflection_rate": 0.6429}
    console = Console(width=200, record=True)
    monkeypatch.setattr(crm, "out", console)
    crm.print_report(r)
    text = console.export_text()
    assert "telegram" in text and "crm " not in text
    assert "2 h 05 min" in text and "3 min 20 s" in text and "7500" not in text
    assert "64.3 % of 14 conversations" in text and "0.6429" not in text
