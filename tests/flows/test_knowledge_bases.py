"""A German and an English knowledge base: paraphrases are answered, unrelated questions
refused; the confidence is calibrated per base; the eval figures."""

from __future__ import annotations

import itertools

import pytest

from flows.knowledge import Matcher
from flows.knowledge_eval import evaluate
from flows.options import KnowledgeEntry, LocalizedText

THRESHOLD = 0.40  # config.yaml's default


def entry(id: str, *examples: str) -> KnowledgeEntry:
    return KnowledgeEntry(id=id, answer=LocalizedText(de=id, en=id), examples=list(examples))


GERMAN = [
    entry(
        "passwort",
        "Passwort vergessen",
        "wie setze ich mein Passwort zurück",
        "ich komme nicht mehr in mein Konto",
        "Kennwort ändern",
        "Login funktioniert nicht",
        "neues Passwort anfordern",
    ),
    entry(
        "adresse",
        "Adresse ändern",
        "ich bin umgezogen",
        "neue Lieferadresse eintragen",
        "wie ändere ich meine Anschrift",
        "Rechnungsadresse aktualisieren",
        "Wohnort hat sich geändert",
    ),
    entry(
        "rechnung",
        "wo finde ich meine Rechnung",
        "Rechnung herunterladen",
        "Rechnungskopie anfordern",
        "ich brauche eine Rechnung für die Steuer",
        "Rechnung als PDF",
        "meine Rechnung ist nicht angekommen",
    ),
    entry(
        "versandkosten",
        "was kostet der Versand",
        "Versandkosten",
        "ist die Lieferung kostenlos",
        "ab wann ist der Versand gratis",
        "wie teuer ist der Expressversand",
        "Portokosten",
    ),
    entry(
        "gutschein",
        "wie löse ich einen Gutschein ein",
        "Gutscheincode eingeben",
        "Rabattcode funktioniert nicht",
        "wo kann ich den Gutschein verwenden",
        "Geschenkgutschein kaufen",
        "Aktionscode",
    ),
    entry(
        "kuendigung",
        "Vertrag kündigen",
        "wie kann ich kündigen",
        "Abo beenden",
        "Kündigungsfrist",
        "ich möchte meine Mitgliedschaft beenden",
        "Kündigung bestätigen",
    ),
]

ENGLISH = [
    entry(
        "password",
        "forgot my password",
        "how do I reset my password",
        "I can't log in to my account",
        "change password",
        "login is not working",
        "send me a new password",
    ),
    entry(
        "address",
        "change my address",
        "I moved house",
        "update my delivery address",
        "how do I change my billing address",
        "new address",
        "wrong address on my account",
    ),
    entry(
        "invoice",
        "where is my invoice",
        "download invoice",
        "I need a copy of my invoice",
        "invoice for tax purposes",
        "invoice as PDF",
        "I did not get an invoice",
    ),
    entry(
        "shipping_cost",
        "how much is shipping",
        "shipping costs",
        "is delivery free",
        "free shipping threshold",
        "how expensive is express delivery",
        "postage fees",
    ),
    entry(
        "voucher",
        "how do I redeem a voucher",
        "enter voucher code",
        "discount code does not work",
        "where can I use my gift card",
        "buy a gift voucher",
        "promo code",
    ),
    entry(
        "cancel",
        "cancel my contract",
        "how can I cancel",
        "end my subscription",
        "notice period",
        "I want to end my membership",
        "confirm cancellation",
    ),
]

GERMAN_PARAPHRASES = [
    ("Ich habe mein Passwort vergessen, was nun?", "passwort"),
    ("Passwort zurücksetzen", "passwort"),
    ("Passwrt vergesen", "passwort"),  # typos
    ("Ich bin in eine neue Wohnung gezogen", "adresse"),
    ("Adressänderung", "adresse"),  # compound
    ("Wo kann ich die Rechnung runterladen?", "rechnung"),
    ("RECHNUNGSKOPIE", "rechnung"),
    ("Wie hoch sind die Versandkosten?", "versandkosten"),
    ("Ist der Versand kostenlos?", "versandkosten"),
    ("Mein Gutscheincode geht nicht", "gutschein"),
    ("Gutschein einlösen", "gutschein"),
    ("Ich will mein Abo kündigen", "kuendigung"),
    ("Wie lange ist die Kündigungsfrist?", "kuendigung"),
    ("Vertragskündigung", "kuendigung"),
]

ENGLISH_PARAPHRASES = [
    ("I forgot my password, what now?", "password"),
    ("reset password please", "password"),
    ("pasword resett", "password"),  # typos
    ("I have moved to a new address", "address"),
    ("How can I update my address?", "address"),
    ("Where can I download my invoice?", "invoice"),
    ("copy of invoice", "invoice"),
    ("What are the shipping costs?", "shipping_cost"),
    ("Is shipping free?", "shipping_cost"),
    ("My voucher code does not work", "voucher"),
    ("redeem gift card", "voucher"),
    ("I want to cancel my subscription", "cancel"),
    ("What is the notice period for cancellation?", "cancel"),
]

GERMAN_UNRELATED = [
    "Wie wird das Wetter morgen?",
    "Mein Hund ist krank",
    "Wer hat die Fußballweltmeisterschaft gewonnen?",
    "Ich habe Hunger",
    "Erzähl mir einen Witz",
]

ENGLISH_UNRELATED = [
    "what's the weather like tomorrow",
    "my cat is sick",
    "who won the football world cup",
    "tell me a joke",
    "what is the meaning of life",
]

BASES = {
    "de": (GERMAN, GERMAN_PARAPHRASES, GERMAN_UNRELATED),
    "en": (ENGLISH, ENGLISH_PARAPHRASES, ENGLISH_UNRELATED),
}


@pytest.fixture(scope="module", params=["de", "en"])
def base(request: pytest.FixtureRequest) -> tuple[Matcher, list[tuple[str, str]], list[str]]:
    entries, paraphrases, unrelated = BASES[request.param]
    return Matcher(entries), paraphrases, unrelated


def test_paraphrases_are_answered_with_the_right_entry(
    base: tuple[Matcher, list[tuple[str, str]], list[str]],
) -> None:
    matcher, paraphrases, _ = base
    wrong = []
    for text, expected in paraphrases:
        m = matcher.best(text)
        if m is None or m.entry.id != expected or m.confidence < THRESHOLD:
            wrong.append((text, expected, m and m.entry.id, m and round(m.confidence, 2)))
    assert not wrong


def test_unrelated_questions_are_refused(
    base: tuple[Matcher, list[tuple[str, str]], list[str]],
) -> None:
    matcher, _, unrelated = base
    answered = [
        (text, m.entry.id, round(m.confidence, 2))
        for text in unrelated
        if (m := matcher.best(text)) is not None and m.confidence >= THRESHOLD
    ]
    assert not answered


def test_the_confidence_is_calibrated_on_the_base_itself(
    base: tuple[Matcher, list[tuple[str, str]], list[str]],
) -> None:
    matcher, paraphrases, unrelated = base
    assert matcher.calibrator.fitted and matcher.calibrator.samples > 20
    # better scores mean more confidence
    assert all(c > 0 for c in matcher.calibrator.coef[:2])
    para = [m.confidence for t, _ in paraphrases if (m := matcher.best(t))]
    unrel = [m.confidence if m else 0.0 for m in matcher.best_many(unrelated)]
    assert min(para) > max(unrel)


def test_best_many_is_best_for_each(
    base: tuple[Matcher, list[tuple[str, str]], list[str]],
) -> None:
    matcher, paraphrases, unrelated = base
    texts = [t for t, _ in paraphrases] + unrelated + ["", "?!"]
    many = matcher.best_many(texts)
    for text, m in zip(texts, many, strict=True):
        one = matcher.best(text)
        assert (one is None) == (m is None)
        if one is not None and m is not None:
            assert (one.entry.id, one.example) == (m.entry.id, m.example)
            assert one.confidence == pytest.approx(m.confidence, abs=1e-6)


def test_the_same_base_gives_the_same_confidences() -> None:
    a, b = Matcher(ENGLISH), Matcher(ENGLISH)
    for text, _ in ENGLISH_PARAPHRASES:
        ma, mb = a.best(text), b.best(text)
        assert ma is not None and mb is not None
        assert ma.confidence == pytest.approx(mb.confidence)


def test_a_mixed_base_answers_both_languages() -> None:
    matcher = Matcher(GERMAN + ENGLISH)
    for text, expected in [("Passwort vergessen?", "passwort"), ("forgot password", "password")]:
        m = matcher.best(text)
        assert m is not None and m.entry.id == expected


def test_a_single_entry_base() -> None:
    matcher = Matcher(ENGLISH[:1])
    m = matcher.best("I forgot my password")
    assert m is not None and m.entry.id == "password"
    assert not matcher.calibrator.fitted  # too small to calibrate: fixed coefficients


def test_eval_figures() -> None:
    matcher = Matcher(ENGLISH)
    queries: list[tuple[str, str | None]] = [
        *ENGLISH_PARAPHRASES,
        *((t, None) for t in ENGLISH_UNRELATED),
    ]
    f = evaluate(matcher, queries, THRESHOLD)
    assert (f["queries"], f["in_scope"], f["out_of_scope"]) == (18, 13, 5)
    assert f["in_scope_accuracy"] == 1.0 and f["oos_recall"] == 1.0
    assert f["oos_precision"] == 1.0 and f["in_scope_top1"] == 1.0
    assert 0 < f["p50_ms"] <= f["p99_ms"]
    table = {row["threshold"]: row for row in f["table"]}
    assert table[0.8]["oos_recall"] == 1.0
    # a higher threshold refuses more: recall up, accuracy down (never the other way)
    rows = f["table"]
    for lo, hi in itertools.pairwise(rows):
        assert hi["oos_recall"] >= lo["oos_recall"]
        assert hi["in_scope_accuracy"] <= lo["in_scope_accuracy"]
    with pytest.raises(ValueError, match="nope"):
        evaluate(matcher, [("x", "nope")], THRESHOLD)
