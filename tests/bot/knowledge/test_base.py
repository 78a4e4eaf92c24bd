"""Knowledge-base files: loading with file and line, config.yaml, CSV import, query files,
gaps, and the `cicbot kb` commands."""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from bot.cli.app import app
from bot.config import ConfigError, load_settings
from bot.knowledge.base import (
    KBError,
    build_matcher,
    gaps_from,
    import_examples,
    load_file,
    load_files,
    read_queries,
    resolve,
)
from flows.intents import builtin
from flows.knowledge import WORD_WEIGHT
from flows.options import KnowledgeBaseOptions

ROOT = Path(__file__).resolve().parents[3]

GOOD = """\
# a comment that an import keeps
entries:
  - id: hours
    tags: [service]
    answer:
      de: "Mo-Fr 8-18 Uhr"
      en: "Mon-Fri 8 am to 6 pm"
    examples:
      - "opening hours"
      - "when are you open"
      - "Öffnungszeiten"
      - "wann habt ihr offen"

  - id: returns
    link: "https://example.com/returns"
    flow: complaint
    answer: {de: "30 Tage Rückgabe", en: "30 days to return"}
    examples:
      - "how do I return an item"   # kept, too
      - "Rücksendung"
      - "can I send it back"
      - "wie kann ich etwas zurückschicken"
  - id: payment
    answer: {de: "Rechnung oder PayPal", en: "Invoice or PayPal"}
    examples: ["payment methods", "can I pay with paypal", "Zahlungsarten", "Bezahlung"]
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("CICBOT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CICBOT_CONFIG", str(ROOT / "config.yaml"))


@pytest.fixture
def kb(tmp_path: Path) -> Path:
    path = tmp_path / "faq.yaml"
    path.write_text(GOOD, "utf-8")
    return path


def test_a_file_loads_with_lines(kb: Path) -> None:
    located = load_file(kb)
    assert [(loc.entry.id, loc.line) for loc in located] == [
        ("hours", 3),
        ("returns", 14),
        ("payment", 23),
    ]
    returns = located[1].entry
    assert returns.flow == "complaint" and returns.link == "https://example.com/returns"
    assert located[0].entry.tags == ["service"]
    assert located[0].entry.answer.de == "Mo-Fr 8-18 Uhr"


def test_a_bare_list_is_a_file_too(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(
        yaml.safe_dump([{"id": "a", "answer": {"de": "A", "en": "A"}, "examples": ["x y"]}]),
        "utf-8",
    )
    assert [loc.entry.id for loc in load_file(path)] == ["a"]


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ('en: "30 days to return"', 'fr: "30 jours"', 17, "entry 'returns': answer.en"),
        ('- "Rücksendung"', "- 42", 20, "entry 'returns': examples.1: Input should be a valid"),
        ("flow: complaint", "flow: weather", 16, "entry 'returns': flow: Input should be"),
        ("id: payment", "id: pay ment", 23, "entry 'pay ment': id: String should match"),
        ("    tags: [service]", "    tagz: [service]", 4, "entry 'hours': tagz: Extra inputs"),
        ("examples: [", "examples: []\n    x: [", 25, "entry 'payment': examples: List should"),
    ],
)
def test_a_bad_entry_names_file_and_line(
    kb: Path, old: str, new: str, line: int, message: str
) -> None:
    kb.write_text(GOOD.replace(old, new, 1), "utf-8")
    with pytest.raises(KBError) as exc:
        load_file(kb)
    assert f"{kb}:{line}: {message}" in str(exc.value)


def test_not_yaml_names_the_line(kb: Path) -> None:
    kb.write_text(GOOD.replace("  - id: payment", "  - id: [payment"), "utf-8")
    with pytest.raises(KBError, match=rf"{kb}:\d+: not valid YAML"):
        load_file(kb)


def test_unknown_top_level_key(kb: Path) -> None:
    kb.write_text("entrys:\n  - id: a\n", "utf-8")
    with pytest.raises(KBError, match=rf"{kb}:1: unknown key 'entrys'"):
        load_file(kb)


def test_duplicate_ids_and_questions_across_files(kb: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(
        "entries:\n"
        "  - id: hours\n"
        "    answer: {de: x, en: x}\n"
        "    examples: [something else]\n"
        "  - id: contact\n"
        "    answer: {de: x, en: x}\n"
        "    examples: ['Öffnungszeiten!']\n",
        "utf-8",
    )
    with pytest.raises(KBError) as exc:
        load_files([kb, other])
    text = str(exc.value)
    assert f"{other}:2: duplicate id 'hours' (first at {kb}:3)" in text
    assert f"{other}:5: entry 'contact': example 'Öffnungszeiten!' is also an example" in text


def test_relative_paths(kb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve("faq.yaml", tmp_path) == kb
    monkeypatch.chdir(tmp_path)
    assert resolve("faq.yaml", None) == tmp_path / "faq.yaml"
    assert resolve("kb/general.yaml", tmp_path / "elsewhere").is_file()  # the shipped one
    with pytest.raises(KBError, match=r"not found: nope\.yaml"):
        resolve("nope.yaml", tmp_path)


# --- config.yaml ---------------------------------------------------------------------------


def write_config(tmp_path: Path, kb_section: dict[str, Any]) -> Path:
    data = yaml.safe_load((ROOT / "config.yaml").read_text("utf-8"))
    data["knowledge_base"] = kb_section
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), "utf-8")
    return path


def test_config_names_the_files(kb: Path, tmp_path: Path) -> None:
    inline = {"id": "inline", "answer": {"de": "i", "en": "i"}, "examples": ["inline question"]}
    path = write_config(tmp_path, {"files": ["faq.yaml"], "threshold": 0.55, "entries": [inline]})
    s = load_settings(path)
    assert [e.id for e in s.knowledge_base.entries] == ["inline", "hours", "returns", "payment"]
    assert s.knowledge_base.threshold == 0.55


def test_the_repository_config_loads_its_knowledge_base() -> None:
    s = load_settings(ROOT / "config.yaml")
    assert s.knowledge_base.files == ["kb/general.yaml"]
    assert len(s.knowledge_base.entries) >= 5
    assert all(len(e.examples) >= 6 for e in s.knowledge_base.entries)


def test_a_bad_entry_stops_start_up(kb: Path, tmp_path: Path) -> None:
    kb.write_text(GOOD.replace('en: "Mon-Fri 8 am to 6 pm"', "en: 42"), "utf-8")
    path = write_config(tmp_path, {"files": ["faq.yaml"]})
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert f"{kb}:7: entry 'hours': answer.en: Input should be a valid string" in str(exc.value)


def test_a_missing_file_stops_start_up(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"files": ["missing.yaml"]})
    with pytest.raises(ConfigError, match=r"knowledge-base file not found: missing\.yaml"):
        load_settings(path)


def test_an_unknown_encoder_is_a_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"encoder": "gpt"})
    with pytest.raises(ConfigError, match=r"knowledge_base\.encoder"):
        load_settings(path)


# --- CSV -----------------------------------------------------------------------------------


def test_import_adds_examples_and_keeps_comments(kb: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "new.csv"
    csv_path.write_text(
        "question,answer id\n"
        "what time do you open,hours\n"
        "WHEN ARE YOU OPEN?,hours\n"  # already there: skipped
        "kann ich mit Kreditkarte zahlen,payment\n"
        "Umtausch,returns\n",
        "utf-8",
    )
    report = import_examples(csv_path, [kb])
    assert report.added == {"hours": 1, "payment": 1, "returns": 1}
    assert report.duplicates == 1
    text = kb.read_text("utf-8")
    assert "# a comment that an import keeps" in text and "# kept, too" in text
    entries = {loc.entry.id: loc.entry for loc in load_file(kb)}
    assert entries["hours"].examples[-1] == "what time do you open"
    assert entries["payment"].examples[-1] == "kann ich mit Kreditkarte zahlen"
    assert entries["returns"].examples[-1] == "Umtausch"


def test_a_bad_import_changes_nothing(kb: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(
        "question,answer_id\nfine question,hours\nwho are you,nobody\nRücksendung,hours\n",
        "utf-8",
    )
    before = kb.read_text("utf-8")
    with pytest.raises(KBError) as exc:
        import_examples(csv_path, [kb])
    assert f"{csv_path}:3: unknown answer id 'nobody'" in str(exc.value)
    assert f"{csv_path}:4: 'Rücksendung' is already an example of 'returns'" in str(exc.value)
    assert kb.read_text("utf-8") == before


def test_import_needs_its_columns(kb: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "cols.csv"
    csv_path.write_text("text,label\nx,y\n", "utf-8")
    with pytest.raises(KBError, match="needs the columns question, answer_id"):
        import_examples(csv_path, [kb])


def test_query_files(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text(
        "text,expected\nwhen are you open,hours\nmy cat is sick,\nwho won,OOS\n\n", "utf-8"
    )
    assert read_queries(path) == [
        ("when are you open", "hours"),
        ("my cat is sick", None),
        ("who won", None),
    ]


# --- gaps ----------------------------------------------------------------------------------


def test_gaps_count_unanswered_questions() -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)

    def row(q: str, answered: bool, minutes: int, entry: str | None = None) -> Any:
        payload = {"question": q, "answered": answered, "entry": entry, "confidence": 0.2}
        return payload, t0 + timedelta(minutes=minutes)

    report = gaps_from(
        [
            row("Can I pay in Bitcoin?", False, 1, "payment"),
            row("can i pay in bitcoin", False, 5, "payment"),
            row("CAN I PAY IN BITCOIN!!", False, 3),
            row("Do you ship to Mars?", False, 2),
            row("when are you open", True, 4, "hours"),
        ]
    )
    assert (report.asked, report.answered) == (5, 1)
    assert report.answered_share == pytest.approx(0.2)
    first, second = report.gaps
    assert (first.count, first.question, first.nearest) == (3, "can i pay in bitcoin", "payment")
    assert first.last == t0 + timedelta(minutes=5)
    assert (second.count, second.question, second.nearest) == (1, "Do you ship to Mars?", None)


# --- the commands --------------------------------------------------------------------------


@pytest.fixture
def cli() -> Iterator[CliRunner]:
    yield CliRunner()


def test_kb_match(cli: CliRunner, kb: Path) -> None:
    hit = cli.invoke(app, ["kb", "match", "--kb", str(kb), "--json", "Wann habt ihr auf?"])
    assert hit.exit_code == 0, hit.output
    data = json.loads(hit.output)
    assert data["entry"] == "hours" and data["confidence"] >= data["threshold"] == 0.45
    miss = cli.invoke(app, ["kb", "match", "--kb", str(kb), "--json", "my cat is sick"])
    assert json.loads(miss.output)["entry"] is None
    text = cli.invoke(app, ["kb", "match", "when are you open"])  # config.yaml's base
    assert text.exit_code == 0 and text.output.startswith("opening_hours  confidence 1.000")


def test_kb_eval(cli: CliRunner, kb: Path, tmp_path: Path) -> None:
    queries = tmp_path / "q.csv"
    queries.write_text(
        "text,expected\n"
        "what are your opening hours,hours\n"
        "I want to send something back,returns\n"
        "do you take paypal,payment\n"
        "what is the weather tomorrow,oos\n"
        "my cat is sick,\n",
        "utf-8",
    )
    result = cli.invoke(app, ["kb", "eval", "--kb", str(kb), "--queries", str(queries)])
    assert result.exit_code == 0, result.output
    f = json.loads(result.output)
    assert (f["in_scope"], f["out_of_scope"]) == (3, 2)
    for key in ("in_scope_accuracy", "oos_recall", "oos_precision", "p50_ms", "p99_ms", "table"):
        assert key in f
    assert f["oos_recall"] == 1.0
    bad = tmp_path / "bad.csv"
    bad.write_text("text,expected\nhello,unknown_entry\n", "utf-8")
    refused = cli.invoke(app, ["kb", "eval", "--kb", str(kb), "--queries", str(bad)])
    assert refused.exit_code == 2 and "unknown_entry" in refused.output


def test_kb_import(cli: CliRunner, kb: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "new.csv"
    csv_path.write_text("question,answer_id\nwhat time do you close,hours\n", "utf-8")
    result = cli.invoke(app, ["kb", "import", str(csv_path), "--kb", str(kb)])
    assert result.exit_code == 0, result.output
    assert "1 examples added to 1 entries" in result.output
    assert "what time do you close" in kb.read_text("utf-8")


def test_kb_bad_file_is_refused(cli: CliRunner, kb: Path) -> None:
    kb.write_text(GOOD.replace("id: payment", "id: hours"), "utf-8")
    result = cli.invoke(app, ["kb", "match", "--kb", str(kb), "hello"])
    assert result.exit_code == 2
    assert "duplicate id 'hours'" in result.output


def test_kb_eval_reports_calibration_and_a_threshold(
    cli: CliRunner, kb: Path, tmp_path: Path
) -> None:
    queries = tmp_path / "q.csv"
    queries.write_text(
        "text,expected\n"
        "what are your opening hours,hours\n"
        "I want to send something back,returns\n"
        "do you take paypal,payment\n"
        "what is the weather tomorrow,oos\n",
        "utf-8",
    )
    args = ["kb", "eval", "--kb", str(kb), "--queries", str(queries), "--target-precision", "0.8"]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    cal = json.loads(result.output)["calibration"]
    assert cal["target_precision"] == 0.8
    assert 0 <= cal["ece"] <= 1
    assert sum(b["questions"] for b in cal["reliability"]) == 4
    assert 0.05 <= cal["suggested_threshold"] <= 0.99


def test_kb_eval_without_queries_checks_the_base_on_itself(cli: CliRunner) -> None:
    result = cli.invoke(app, ["kb", "eval"])  # config.yaml's base
    assert result.exit_code == 0, result.output
    f = json.loads(result.output)
    assert f["fitted"] and f["held_out_questions"] > 100
    assert f["ece"] < 0.2  # measured 0.09 on the shipped base
    assert f["suggested_threshold"] is not None


def test_kb_match_names_an_intent(cli: CliRunner) -> None:
    result = cli.invoke(app, ["kb", "match", "--json", "Kann ich bitte einen Mitarbeiter sprechen"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["entry"] == "@human"


# --- a company's intents ---------------------------------------------------------------------


def test_intent_files_add_examples(tmp_path: Path) -> None:
    (tmp_path / "intents.yaml").write_text(
        "intents:\n  - id: human\n    examples: ['Sachbearbeiter ans Telefon']\n", "utf-8"
    )
    s = load_settings(write_config(tmp_path, {"intent_files": ["intents.yaml"]}))
    human = next(i for i in s.knowledge_base.intents if i.id == "human")
    assert human.examples[-1] == "Sachbearbeiter ans Telefon" and len(human.examples) > 50
    off = load_settings(write_config(tmp_path, {"builtin_intents": False}))
    assert off.knowledge_base.intents == []


def test_a_bad_intent_file_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "intents.yaml").write_text(
        "intents:\n  - id: human\n    examples: ['x']\n  - id: weather\n    examples: ['y']\n",
        "utf-8",
    )
    with pytest.raises(ConfigError, match=r"intents\.yaml:4: 1\.id"):
        load_settings(write_config(tmp_path, {"intent_files": ["intents.yaml"]}))


# --- the cache: a restart with an unchanged base is quick ------------------------------------


class CountingEncoder:
    """A stand-in sentence encoder (deterministic, normalized) that counts what it encodes."""

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.encoded.extend(texts)
        rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=16) for t in texts]
        out = np.array(rows, np.float32).reshape(len(texts), 16)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_a_cached_matcher_answers_as_the_fitted_one(kb: Path, tmp_path: Path) -> None:
    options = KnowledgeBaseOptions(
        entries=[loc.entry for loc in load_files([kb])],
        intents=list(builtin()),
        cache_dir=str(tmp_path / "cache"),
    )
    fitted = build_matcher(options)
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 2 and all(f.startswith("matcher-") for f in files)  # base and intents
    restored = build_matcher(options)
    assert restored.model is not None and fitted.model is not None
    questions = ["wann habt ihr offen", "can I send it back", "my cat is sick", "agent please"]
    for a, b in zip(fitted.best_many(questions), restored.best_many(questions), strict=True):
        assert a is not None and b is not None
        assert (a.entry.id, a.example) == (b.entry.id, b.example)
        assert a.confidence == pytest.approx(b.confidence, abs=1e-6)
    assert restored.intents is not None and fitted.intents is not None
    assert restored.intents.calibrator.coef == pytest.approx(fitted.intents.calibrator.coef)
    # the base's words weigh less than its character n-grams, the intents' as much: kept
    assert restored.model.word_weight == WORD_WEIGHT < 1.0
    assert restored.intents.model is not None and restored.intents.model.word_weight == 1.0
    assert restored.intents.model.rank_coef is None  # the intents: the SVM alone
    # a changed base is another key: fitted anew, not served stale
    changed = options.model_copy(update={"entries": options.entries[:2]})
    assert [e.id for e in build_matcher(changed).entries] == ["hours", "returns"]


def test_encodings_are_cached_by_text_and_questions_never(kb: Path, tmp_path: Path) -> None:
    encoder = CountingEncoder()
    entries = [loc.entry for loc in load_files([kb])]
    options = KnowledgeBaseOptions(entries=entries, cache_dir=str(tmp_path))
    first = build_matcher(options, encoder)
    assert len(encoder.encoded) == sum(len(e.examples) for e in entries)
    encoder.encoded.clear()
    build_matcher(options, encoder)
    assert encoder.encoded == []  # warm: nothing encoded, nothing fitted
    grown = entries[0].model_copy(update={"examples": [*entries[0].examples, "wann macht ihr auf"]})
    build_matcher(options.model_copy(update={"entries": [grown, *entries[1:]]}), encoder)
    assert encoder.encoded == ["wann macht ihr auf"]  # only the new example
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    first.best("a customer's private question about my divorce")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert b"divorce" not in b"".join(before.values())


def test_a_broken_cache_file_is_fitted_anew(
    kb: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options = KnowledgeBaseOptions(
        entries=[loc.entry for loc in load_files([kb])], cache_dir=str(tmp_path)
    )
    build_matcher(options)
    (cached,) = tmp_path.glob("matcher-*.npz")
    whole = cached.read_bytes()
    for broken in (b"not a zip file", whole[: len(whole) // 2]):  # e.g. a full disk
        cached.write_bytes(broken)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            matcher = build_matcher(options)
        hit = matcher.best("wann habt ihr offen")
        assert hit is not None and hit.entry.id == "hours"
        assert "unreadable" in caplog.text
        with np.load(cached, allow_pickle=False) as again:  # written again, whole
            assert "cal_coef" in again.files and len(again.files) > 10


def test_no_cache_folder_no_files(
    kb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    options = KnowledgeBaseOptions(entries=[loc.entry for loc in load_files([kb])], cache_dir="")
    assert build_matcher(options).best("Öffnungszeiten") is not None
    assert list(tmp_path.iterdir()) == [kb]


def test_a_question_is_encoded_once_for_the_intents_and_the_base(kb: Path) -> None:
    encoder = CountingEncoder()
    options = KnowledgeBaseOptions(
        entries=[loc.entry for loc in load_files([kb])], intents=list(builtin()), cache_dir=""
    )
    matcher = build_matcher(options, encoder)
    assert matcher.intents is not None
    encoder.encoded.clear()
    matcher.intents.best("wann habt ihr offen")
    matcher.best("wann habt ihr offen")
    matcher.best("can I pay with paypal")
    assert encoder.encoded == ["wann habt ihr offen", "can I pay with paypal"]
