"""The knowledge-base matcher over the config's entries."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from flows.knowledge import (
    MAX_QUERY_CHARS,
    RANK_DENSE_WEIGHT,
    WORD_WEIGHT,
    Matcher,
    _log_softmax,
    build,
    features,
    fold,
)
from flows.options import FlowOptions, KnowledgeEntry, LocalizedText


@pytest.fixture(scope="module")
def threshold(options: FlowOptions) -> float:
    return options.knowledge_base.threshold


@pytest.mark.parametrize(
    ("query", "entry"),
    [
        # English paraphrases
        ("when are you open?", "opening_hours"),
        ("opening times", "opening_hours"),
        ("How long does delivery take?", "shipping_time"),
        ("I want to return my shoes", "return_policy"),
        ("cancel my subscription", "cancel_contract"),
        # German paraphrases, compounds and a typo
        ("Wann habt ihr offen", "opening_hours"),
        ("Öffnungszeitn", "opening_hours"),
        ("OEFFNUNGSZEITEN", "opening_hours"),
        ("Wie lange dauert die Lieferung", "shipping_time"),
        ("Lieferzeiten", "shipping_time"),
        ("Wann kommt mein Paket?", "shipping_time"),
        ("Ich möchte etwas zurückschicken", "return_policy"),
        ("Rücksendung", "return_policy"),
        ("kann ich per paypal zahlen", "payment_methods"),
        ("Kann ich auf Rechnung bezahlen?", "payment_methods"),
        ("Vertragskündigung", "cancel_contract"),
        ("Abo kündigen", "cancel_contract"),
    ],
)
def test_paraphrases_find_the_entry(
    matcher: Matcher, threshold: float, query: str, entry: str
) -> None:
    match = matcher.best(query)
    assert match is not None
    assert match.entry.id == entry
    assert match.confidence >= threshold
    assert match.example in match.entry.examples


@pytest.mark.parametrize(
    "query",
    [
        "what is the meaning of life",
        "my cat is sick",
        "what's the weather like tomorrow",
        "ich habe Hunger",
        "hello world",
    ],
)
def test_unrelated_questions_score_below_the_threshold(
    matcher: Matcher, threshold: float, query: str
) -> None:
    match = matcher.best(query)
    assert match is None or match.confidence < threshold


def test_an_example_itself_is_a_perfect_match(matcher: Matcher) -> None:
    for entry in matcher.entries:
        for example in entry.examples:
            match = matcher.best(example)
            assert match is not None and match.entry.id == entry.id
            assert match.confidence == pytest.approx(1.0)


@pytest.mark.parametrize("query", ["", "   ", "?!", "🙂"])
def test_nothing_to_match(matcher: Matcher, query: str) -> None:
    assert matcher.best(query) is None


def test_huge_queries_are_truncated(matcher: Matcher) -> None:
    assert MAX_QUERY_CHARS <= 2000
    assert features("x" * 100_000) == features("x" * 2000)
    assert features("word " * 20_000) == features(("word " * 20_000)[:2000])
    match = matcher.best("when are you open? " * 6000)
    assert match is not None and match.entry.id == "opening_hours"
    assert matcher.best("ж" * 100_000) is None  # no character the base knows


def test_confidence_is_at_most_one(matcher: Matcher) -> None:
    match = matcher.best("Öffnungszeiten Öffnungszeiten")
    assert match is not None and 0 < match.confidence <= 1.0


def test_empty_knowledge_base() -> None:
    assert build([]).best("when are you open?") is None


def test_a_small_custom_base() -> None:
    entries = [
        KnowledgeEntry(id="a", answer=LocalizedText(de="A", en="A"), examples=["reset password"]),
        KnowledgeEntry(id="b", answer=LocalizedText(de="B", en="B"), examples=["change address"]),
    ]
    m = Matcher(entries)
    hit = m.best("how do I reset my password")
    assert hit is not None and hit.entry.id == "a"
    hit = m.best("I moved, new address")
    assert hit is not None and hit.entry.id == "b"


def test_a_restored_matcher_answers_as_the_fitted_one(matcher: Matcher) -> None:
    """The state keeps what the features were fitted with (the word block's weight too):
    a restored matcher scores every question as the fitted one."""
    restored = Matcher.restore(matcher.entries, matcher.state())
    assert restored.model is not None and matcher.model is not None
    assert restored.model.word_weight == matcher.model.word_weight == WORD_WEIGHT
    # a small base without encoder: a logistic regression picks, restored with the rest
    assert restored.model.rank_coef is not None and matcher.model.rank_coef is not None
    questions = ["Wann habt ihr offen", "Rücksendung", "my cat is sick", "Abo kündigen"]
    for a, b in zip(matcher.best_many(questions), restored.best_many(questions), strict=True):
        assert a is not None and b is not None
        assert (a.entry.id, a.example) == (b.entry.id, b.example)
        assert a.confidence == pytest.approx(b.confidence, abs=1e-6)


def bank_entries() -> list[KnowledgeEntry]:
    """Four small entries of a bank (a base where the logistic regression picks)."""
    return [
        KnowledgeEntry(id=i, answer=LocalizedText(de=i, en=i), examples=ex)
        for i, ex in (
            ("card", ["my card was stolen", "I lost my card", "block my card please"]),
            ("refund", ["where is my refund", "refund not received", "money back please"]),
            ("pin", ["I forgot my PIN", "change my PIN", "PIN is blocked"]),
            ("top_up", ["top up failed", "how do I top up", "top-up by bank transfer"]),
        )
    ]


def test_the_words_the_base_knows_feed_the_confidence(matcher: Matcher) -> None:
    """The calibration reads how many of a question's words and word pairs the base knows
    (`Scores.known`): words it has never seen add nothing, and on the shipped base an
    answer read from more known words is more often right (a positive weight)."""
    assert matcher.model is not None
    analyzer, vocab = matcher.model.analyzers[0], matcher.model.vocabs[0]
    questions = ["Wann habt ihr offen", "Wann habt ihr offen xyzzy quux", "Rücksendung"]
    scores = matcher.scores(questions)
    for q, s in zip(questions, scores, strict=True):
        assert s is not None
        known = {t for t in analyzer(fold(q)) if t in vocab}
        assert s.known == pytest.approx(np.log1p(len(known))), q
        assert s.row()[3] == s.known
    assert scores[0] is not None and scores[1] is not None
    assert scores[0].known == scores[1].known > 0
    assert matcher.calibrator.fitted and matcher.calibrator.coef[3] > 0


def test_with_an_encoder_the_encodings_regression_picks_with_the_words_one() -> None:
    """On a small base with an encoder, a logistic regression over the encodings picks
    together with the words' (their log-probabilities summed, the encodings' weighing
    RANK_DENSE_WEIGHT): a paraphrase that shares no word with its entry's examples is
    found through its encoding."""
    concepts = {"card": ("card", "plastic"), "refund": ("refund", "money back"), "pin": ("pin",)}
    concepts |= {"top_up": ("top up", "top-up", "add funds")}

    def encode(texts: Sequence[str]) -> np.ndarray:  # a stand-in sentence encoder
        rows = np.full((len(texts), len(concepts) + 1), 0.05, np.float32)
        for i, t in enumerate(texts):
            for k, words in enumerate(concepts.values()):
                rows[i, k] += sum(w in t.lower() for w in words)
        out: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return out

    entries = bank_entries()
    m = Matcher(entries, encoder=encode, calibrate=False)
    assert m.model is not None and m.model.rank_coef is not None
    assert m.model.dense_rank_coef is not None and m.model.dense_rank_intercept is not None
    questions = ["somebody nicked my plastic", "I want to add funds", "is the transfer blocked"]
    Q = m.model.vectors(questions)
    words = np.asarray(Q @ m.model.rank_coef) + m.model.rank_intercept
    dense = encode(questions) @ m.model.dense_rank_coef + m.model.dense_rank_intercept
    fused = _log_softmax(words) + RANK_DENSE_WEIGHT * _log_softmax(dense)
    for s, f, q in zip(m.scores(questions), fused, questions, strict=True):
        assert s is not None
        assert s.index == int(m.model.classes[int(np.argmax(f))]), q
    picks = [m.entries[s.index].id for s in m.scores(questions) if s is not None]
    assert picks[:2] == ["card", "top_up"]
    assert [m.best(q) for q in questions] == m.best_many(questions)  # the fast path too
    # the encoder reads the question: the known words are not counted (`Scores.known`)
    assert all(s is not None and s.known == 0.0 for s in m.scores(questions))
    restored = Matcher.restore(entries, m.state(), encode)
    assert restored.best_many(questions) == m.best_many(questions)


def test_the_logistic_regression_picks_and_the_svm_scores() -> None:
    """The jointly learnt regression chooses the entry; the confidence comes from the
    SVM's values for that choice, so an unrelated question stays unsure."""
    entries = bank_entries()
    m = Matcher(entries)
    assert m.model is not None and m.model.rank_coef is not None
    questions = ["someone stole my card", "refund still missing", "what's the weather like"]
    Q = m.model.vectors(questions)
    rank = np.asarray(Q @ m.model.rank_coef) + m.model.rank_intercept
    for s, r, q in zip(m.scores(questions), rank, questions, strict=True):
        assert s is not None
        assert s.index == int(m.model.classes[int(np.argmax(r))]), q
        svm = np.asarray(m.model.vectors([q]) @ m.model.coef)[0] + m.model.intercept
        assert s.decision == pytest.approx(float(svm[s.index]), abs=1e-5)
    card, refund, weather = m.best_many(questions)
    assert card is not None and card.entry.id == "card"
    assert refund is not None and refund.entry.id == "refund"
    assert weather is None or weather.confidence < min(card.confidence, refund.confidence)
