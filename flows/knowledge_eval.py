"""Measuring the matcher on labelled questions (`cicbot kb eval`, bench/faq.py).

A question is in scope when it names the entry that should answer it, out of scope
(None) when the bot has no answer for it and should say so.

- in-scope accuracy: in-scope questions answered with the right entry (a refusal is a miss);
- out-of-scope recall: out-of-scope questions refused (confidence below the threshold);
- out-of-scope precision: refused questions that were indeed out of scope;
- p50 / p99 ms: one question at a time, as the bot asks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from flows.knowledge import Match, Matcher

TABLE_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def _figures(
    expected: Sequence[str | None], got: Sequence[str | None], conf: np.ndarray, threshold: float
) -> dict[str, Any]:
    ins = np.array([e is not None for e in expected], bool)
    answered = conf >= threshold
    right = np.array([g is not None and g == e for g, e in zip(got, expected, strict=True)])
    refused = ~answered
    n_in, n_out = int(ins.sum()), int((~ins).sum())
    return {
        "threshold": round(threshold, 3),
        "in_scope_accuracy": _ratio(int((right & answered & ins).sum()), n_in),
        "oos_recall": _ratio(int((refused & ~ins).sum()), n_out),
        "oos_precision": _ratio(int((refused & ~ins).sum()), int(refused.sum())),
        "answered": _ratio(int(answered.sum()), len(expected)),
        "wrong_answers": _ratio(int((answered & ~right).sum()), int(answered.sum())),
    }


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def evaluate(
    matcher: Matcher,
    queries: Sequence[tuple[str, str | None]],
    threshold: float,
    thresholds: Sequence[float] = TABLE_THRESHOLDS,
) -> dict[str, Any]:
    """Figures at `threshold` and a table of how other thresholds trade them."""
    known = {e.id for e in matcher.entries}
    unknown = sorted({e for _, e in queries if e is not None and e not in known})
    if unknown:
        raise ValueError(f"expected ids not in the knowledge base: {', '.join(unknown)}")
    results: list[Match | None] = []
    times: list[float] = []
    for text, _ in queries:
        t0 = time.perf_counter()
        results.append(matcher.best(text))
        times.append(time.perf_counter() - t0)
    expected = [e for _, e in queries]
    got = [m.entry.id if m else None for m in results]
    conf = np.array([m.confidence if m else 0.0 for m in results])
    ins = np.array([e is not None for e in expected], bool)
    top1 = sum(g == e for g, e in zip(got, expected, strict=True) if e is not None)
    ms = np.array(times) * 1000 if times else np.zeros(1)
    return {
        "queries": len(queries),
        "in_scope": int(ins.sum()),
        "out_of_scope": int((~ins).sum()),
        **_figures(expected, got, conf, threshold),
        "in_scope_top1": _ratio(top1, int(ins.sum())),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "entries": len(matcher.entries),
        "examples": len(matcher.examples),
        "table": [_figures(expected, got, conf, t) for t in thresholds],
    }
