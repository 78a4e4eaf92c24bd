"""Knowledge-base matcher: TF-IDF over words and character n-grams, cosine similarity
to each entry's example questions. Character n-grams carry typos, inflections and
German compounds ("Vertragskündigung" ~ "Vertrag kündigen"); word features carry
meaning. Light, CPU-only, no model download. Confidence is the best cosine."""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from flows.options import KnowledgeEntry

MAX_QUERY_CHARS = 300
_UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})
# very common words carry no intent; IDF would damp them too, but short queries suffer
STOPWORDS = frozenset(
    "a an the i you we my me your is are am be do does can could would please to of in on "
    "for it this that and or with at how what when where which ich du sie wir mein meine "
    "ihr ist sind bin kann koennen bitte zu von im in auf fuer es das der die den dem und "
    "oder mit wie was wann wo welche welcher ein eine einen".split()
)


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold().translate(_UMLAUTS)
    return re.sub(r"[^\w]+", " ", text).strip()


def features(text: str) -> Counter[str]:
    words = [w for w in _fold(text[:MAX_QUERY_CHARS]).split() if w]
    feats: Counter[str] = Counter()
    for w in words:
        if w not in STOPWORDS:
            feats["w:" + w] += 1
        padded = f" {w} "
        for n in (3, 4, 5):
            for i in range(len(padded) - n + 1):
                feats[padded[i : i + n]] += 1
    return feats


@dataclass(frozen=True)
class Match:
    entry: KnowledgeEntry
    confidence: float
    example: str


class Matcher:
    def __init__(self, entries: Sequence[KnowledgeEntry]) -> None:
        self.entries = list(entries)
        docs: list[tuple[int, str, Counter[str]]] = [
            (i, ex, features(ex)) for i, e in enumerate(self.entries) for ex in e.examples
        ]
        df: Counter[str] = Counter()
        for _, _, f in docs:
            df.update(f.keys())
        n = max(len(docs), 1)
        self.idf = {t: math.log((1 + n) / (1 + c)) + 1.0 for t, c in df.items()}
        self.default_idf = math.log(1 + n) + 1.0
        self.vectors = [(i, ex, self._vector(f)) for i, ex, f in docs]
        self.index: dict[str, list[int]] = defaultdict(list)
        for d, (_, _, vec) in enumerate(self.vectors):
            for t in vec:
                self.index[t].append(d)

    def _vector(self, feats: Counter[str]) -> dict[str, float]:
        vec = {t: (1 + math.log(c)) * self.idf.get(t, self.default_idf) for t, c in feats.items()}
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        return {t: v / norm for t, v in vec.items()}

    def best(self, query: str) -> Match | None:
        q = self._vector(features(query))
        scores: dict[int, float] = defaultdict(float)
        for t, w in q.items():
            for d in self.index.get(t, ()):
                scores[d] += w * self.vectors[d][2][t]
        if not scores:
            return None
        d = max(scores, key=scores.__getitem__)
        i, ex, _ = self.vectors[d]
        return Match(self.entries[i], min(scores[d], 1.0), ex)


def build(entries: Iterable[KnowledgeEntry]) -> Matcher:
    return Matcher(list(entries))
