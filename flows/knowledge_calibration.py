"""Calibrated confidence for the knowledge-base matcher.

The raw scores of a linear model (decision value, margin, similarity, the known words)
mean different things on a base of five entries and on one of 150. So the matcher learns,
when it is built, what its own scores mean on its own knowledge base, by cross-validation:

- the entries are split into `folds` groups; in each round one group is left out
  entirely — its examples play the questions the bot has **no** answer for (out of
  scope, and hard ones: they are about the same business) — and a share of the examples
  of every other entry is held back — they play **paraphrases** of known questions;
- a model trained on the rest scores both; a logistic regression over the scores learns
  the probability that the answer is right (a paraphrase matched to its own entry).

Out-of-scope questions weigh a quarter of the total (`OOS_SHARE`), as in real traffic
where most questions are about the business, so a confidence of 0.7 reads "right seven
times in ten" for such a mix; `kb eval` measures how well that holds (reliability bins,
expected calibration error). A base too small to split (fewer than three entries) gets
fixed default coefficients, and a small one leans on them (they weigh as much as a
hundred held-out questions). The held-out scores are kept (`rows`, `right`, `weight`)
so that `kb eval` can show the calibration on a base without labelled questions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

MIN_ENTRIES = 3
# the share of questions with no answer in the base that the calibration assumes: about
# one in four (docs/knowledge-base.md); a half made the confidence too low on every base
# measured (bench/faq.py: expected calibration error 0.12 → 0.03 on Banking77)
OOS_SHARE = 0.25
PRIOR_SAMPLES = 100


class _Scored(Protocol):
    @property
    def index(self) -> int: ...

    def row(self) -> list[float]: ...


@dataclass(frozen=True)
class Calibrator:
    coef: tuple[float, ...]
    intercept: float
    fitted: bool = False
    samples: int = 0
    # the held-out questions it learnt from (scores, right or not, weight): `kb eval`
    # shows how well the probabilities fit them
    rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    right: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    weight: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    @classmethod
    def default(cls) -> Calibrator:
        # what the calibration learns on small, few-shot bases (config.yaml's, Banking77
        # with ten examples per intent), used when a base is too small to calibrate itself;
        # the known words weigh nothing here (they learn 0.4-0.5 with the intercept lower)
        return cls((1.5, 1.5, 2.5, 0.0), -1.7)

    def probability(self, row: Sequence[float]) -> float:
        z = self.intercept + float(np.dot(self.coef, row))
        return float(1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0))))

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        z = self.intercept + rows @ np.array(self.coef)
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0))))

    def state(self) -> dict[str, np.ndarray]:
        return {
            "cal_coef": np.array([*self.coef, self.intercept], np.float64),
            "cal_meta": np.array([int(self.fitted), self.samples], np.int64),
            "cal_rows": self.rows,
            "cal_right": self.right,
            "cal_weight": self.weight,
        }

    @classmethod
    def from_state(cls, s: dict[str, np.ndarray]) -> Calibrator:
        c = [float(x) for x in s["cal_coef"]]
        fitted, samples = (int(x) for x in s["cal_meta"])
        return cls(
            tuple(c[:-1]),
            c[-1],
            bool(fitted),
            samples,
            s["cal_rows"],
            s["cal_right"],
            s["cal_weight"],
        )


def fit_calibrator(
    labels: np.ndarray,
    train: Callable[[np.ndarray], Any],
    score: Callable[[Any, np.ndarray], Sequence[_Scored | None]],
    *,
    folds: int = 3,
    seed: int = 0,
) -> Calibrator:
    """`train(indices)` → a model over those examples; `score(model, indices)` → its scores
    for those examples (None where it knows no feature of the text)."""
    entries = np.unique(labels)
    if len(entries) < MIN_ENTRIES or len(labels) < 2 * MIN_ENTRIES:
        return Calibrator.default()
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(entries)
    folds = min(folds, len(entries))
    rows: list[list[float]] = []
    right: list[int] = []
    weight: list[float] = []
    for k in range(folds):
        left_out = set(shuffled[k::folds].tolist())
        out_idx = np.flatnonzero(np.isin(labels, list(left_out)))
        held: list[int] = []
        for entry in entries:
            if entry in left_out:
                continue
            idx = rng.permutation(np.flatnonzero(labels == entry))
            take = len(idx) // folds if len(idx) >= folds else (1 if len(idx) >= 2 else 0)
            held.extend(idx[:take].tolist())
        held_idx = np.array(sorted(held), dtype=np.int64)
        mask = np.ones(len(labels), bool)
        mask[out_idx] = False
        mask[held_idx] = False
        train_idx = np.flatnonzero(mask)
        if len(np.unique(labels[train_idx])) < 2 or (not len(held_idx) and not len(out_idx)):
            continue
        model = train(train_idx)
        for group, is_in in ((held_idx, True), (out_idx, False)):
            if not len(group):
                continue
            scored = [(i, s) for i, s in zip(group, score(model, group), strict=True) if s]
            for i, s in scored:
                rows.append(s.row())
                right.append(int(is_in and s.index == labels[i]))
                weight.append((1.0 if is_in else -1.0) / len(scored))
    y = np.array(right)
    if len(rows) < 2 * MIN_ENTRIES or y.min() == y.max():
        return Calibrator.default()
    w = np.array(weight)
    w_in, w_out = w[w > 0], -w[w < 0]
    # out of scope weighs OOS_SHARE of the total, whatever the counts
    w = np.where(
        w > 0, (1 - OOS_SHARE) * w / max(w_in.sum(), 1e-9), -OOS_SHARE * w / max(w_out.sum(), 1e-9)
    )
    w = w / w.mean()
    from sklearn.linear_model import LogisticRegression  # only here: slow to import

    lr = LogisticRegression(C=1.0)
    lr.fit(np.array(rows), y, sample_weight=w)
    # a small base says little about its scores: lean on the default coefficients until
    # it has a few hundred held-out questions (a prior worth PRIOR_SAMPLES of them)
    share = len(rows) / (len(rows) + PRIOR_SAMPLES)
    prior = Calibrator.default()
    coef = share * lr.coef_[0] + (1 - share) * np.array(prior.coef)
    intercept = share * float(lr.intercept_[0]) + (1 - share) * prior.intercept
    return Calibrator(
        tuple(float(c) for c in coef),
        float(intercept),
        True,
        len(rows),
        np.array(rows, np.float32),
        y.astype(np.int8),
        w.astype(np.float32),
    )
