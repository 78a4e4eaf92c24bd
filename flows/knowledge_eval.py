"""Measuring the matcher on labelled questions (`cicbot kb eval`, bench/faq.py).

A question is in scope when it names the entry that should answer it, out of scope
(None) when the bot has no answer for it and should say so.

- in-scope accuracy: in-scope questions answered with the right entry (a refusal is a miss);
- out-of-scope recall: out-of-scope questions refused (confidence below the threshold);
- out-of-scope precision: refused questions that were indeed out of scope;
- p50 / p99 ms: one question at a time, as the bot asks;
- calibration: the questions binned by confidence, each bin's share of right answers
  beside its mean confidence (a reliability diagram as a table), and the expected
  calibration error (ECE: the bins' gap weighted by their size); a calibrated matcher
  has small gaps;
- the suggested threshold: the lowest at which the answers given are right at least
  `target` of the time (precision), on these questions.

An expected id may name a built-in intent with an "@" ("@human"): what the matcher
should take the message for.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from flows.knowledge import Entry, Match, Matcher
from flows.options import Intent

TABLE_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
BINS = 10
TARGET_PRECISION = 0.9


def label(entry: Entry) -> str:
    """An entry's id; a built-in intent's with an "@" ("@human")."""
    return f"@{entry.id}" if isinstance(entry, Intent) else entry.id


def reliability(
    conf: np.ndarray, right: np.ndarray, weight: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """Per confidence bin (tenths): count, mean confidence, share right."""
    w = np.ones(len(conf)) if weight is None else weight
    out = []
    for b in range(BINS):
        lo, hi = b / BINS, (b + 1) / BINS
        inside = (conf >= lo) & ((conf < hi) if b < BINS - 1 else (conf <= hi))
        n = float(w[inside].sum())
        if not inside.any():
            continue
        out.append(
            {
                "bin": f"{lo:.1f}-{hi:.1f}",
                "questions": int(inside.sum()),
                "confidence": round(float(np.average(conf[inside], weights=w[inside])), 3),
                "right": round(float(np.average(right[inside], weights=w[inside])), 3),
                "weight": n,
            }
        )
    return out


def expected_calibration_error(
    conf: np.ndarray, right: np.ndarray, weight: np.ndarray | None = None
) -> float:
    bins = reliability(conf, right, weight)
    total = sum(b["weight"] for b in bins)
    if not total:
        return 0.0
    gap = sum(float(b["weight"]) * abs(b["right"] - b["confidence"]) for b in bins)
    return round(float(gap / total), 4)


def suggest_threshold(
    conf: np.ndarray,
    right: np.ndarray,
    target: float = TARGET_PRECISION,
    weight: np.ndarray | None = None,
) -> float | None:
    """The lowest threshold (in hundredths) whose answers are right at least `target` of
    the time; None if no threshold gets there."""
    w = np.ones(len(conf)) if weight is None else weight
    for t in np.round(np.arange(0.05, 1.0, 0.01), 2):
        answered = conf >= t
        if w[answered].sum() > 0 and np.average(right[answered], weights=w[answered]) >= target:
            return float(t)
    return None


def calibration(
    conf: np.ndarray,
    right: np.ndarray,
    weight: np.ndarray | None = None,
    target: float = TARGET_PRECISION,
) -> dict[str, Any]:
    return {
        "ece": expected_calibration_error(conf, right, weight),
        "reliability": [
            {k: v for k, v in b.items() if k != "weight"} for b in reliability(conf, right, weight)
        ],
        "target_precision": target,
        "suggested_threshold": suggest_threshold(conf, right, target, weight),
    }


def _figures(
    expected: Sequence[str | None],
    got: Sequence[str | None],
    conf: np.ndarray,
    threshold: float,
    floor: np.ndarray | None = None,
) -> dict[str, Any]:
    ins = np.array([e is not None for e in expected], bool)
    answered = conf >= (threshold if floor is None else np.maximum(threshold, floor))
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
    target: float = TARGET_PRECISION,
) -> dict[str, Any]:
    """Figures at `threshold`, a table of how other thresholds trade them, and how well
    the confidence is calibrated on these questions."""
    known = {label(e) for e in matcher.entries}
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
    got = [label(m.entry) if m else None for m in results]
    conf = np.array([m.confidence if m else 0.0 for m in results])
    # an intent is taken at its own floor if that is higher (flows/intents.py)
    floor = np.array(
        [m.entry.min_confidence if m and isinstance(m.entry, Intent) else 0.0 for m in results]
    )
    right = np.array([g is not None and g == e for g, e in zip(got, expected, strict=True)], float)
    ins = np.array([e is not None for e in expected], bool)
    top1 = sum(g == e for g, e in zip(got, expected, strict=True) if e is not None)
    ms = np.array(times) * 1000 if times else np.zeros(1)
    return {
        "queries": len(queries),
        "in_scope": int(ins.sum()),
        "out_of_scope": int((~ins).sum()),
        **_figures(expected, got, conf, threshold, floor),
        "in_scope_top1": _ratio(top1, int(ins.sum())),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "entries": len(matcher.entries),
        "examples": len(matcher.examples),
        "table": [_figures(expected, got, conf, t, floor) for t in thresholds],
        "calibration": calibration(conf, right, target=target),
    }


def self_check(matcher: Matcher, target: float = TARGET_PRECISION) -> dict[str, Any]:
    """The calibration measured on the base's own held-out questions (whole entries left
    out, examples held back; in and out of scope weighted alike): for a base without
    labelled questions."""
    cal = matcher.calibrator
    if not cal.fitted:
        return {"fitted": False, "entries": len(matcher.entries)}
    conf = cal.probabilities(np.asarray(cal.rows, np.float64))
    return {
        "fitted": True,
        "entries": len(matcher.entries),
        "examples": len(matcher.examples),
        "held_out_questions": len(conf),
        **calibration(conf, np.asarray(cal.right, float), np.abs(cal.weight), target),
    }
