"""Knowledge-base matcher: which entry answers a customer's question, and how sure we are.

The light default needs only numpy, scipy and scikit-learn (CPU, no model download):

- **features**: TF-IDF over word uni- and bigrams and over character 2-5-grams within
  words, on folded text (case, umlauts and ß folded: "Öffnungszeiten" = "oeffnungszeiten").
  Character n-grams carry typos, inflection and German compounds ("Vertragskündigung" ~
  "Vertrag kündigen"); words and word pairs carry meaning;
- **classifier**: a linear SVM, one entry against the rest, over the examples;
- **confidence**: a calibrated probability that the answer is right (see
  `flows.knowledge_calibration`): at build time the knowledge base is split into folds,
  whole entries are held out as "questions we have no answer for" and examples of the
  other entries as paraphrases, and a logistic calibrator learns from the scores
  (best decision value, its margin to the runner-up, the similarity to the nearest
  example of the chosen entry) how likely the answer is right. A threshold of 0.5 thus
  means "answer when it is more likely right than wrong" on any knowledge base, large
  or small, with questions in and out of scope weighted alike.

An optional sentence encoder (`Encoder`, e.g. `bot.kb_embeddings`) adds dense features;
the flows stay free of I/O: the encoder is handed in, loaded elsewhere.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize
from sklearn.svm import LinearSVC

from flows.knowledge_calibration import Calibrator, fit_calibrator
from flows.options import KnowledgeEntry

MAX_QUERY_CHARS = 300
_UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})
# very common words carry no intent; IDF damps them too, but a small base has noisy IDF
STOPWORDS = frozenset(
    "a an the i you we my me your is are am be do does can could would please to of in on "
    "for it this that and or with at ich du sie wir mein meine meinen ihr ist sind bin "
    "kann koennen bitte zu von im in auf fuer es das der die den dem und oder mit ein "
    "eine einen hallo hello hi".split()
)
# an encoder maps texts to L2-normalized rows (n, dim); see bot.kb_embeddings
Encoder = Callable[[Sequence[str]], np.ndarray]


def fold(text: str) -> str:
    """Case, width, umlauts and ß folded; punctuation to spaces; at most MAX_QUERY_CHARS read."""
    text = unicodedata.normalize("NFKC", text[:MAX_QUERY_CHARS]).casefold().translate(_UMLAUTS)
    return re.sub(r"[\W_]+", " ", text).strip()


def features(text: str) -> str:
    """What the matcher reads of a text: the folded start (a huge text costs no more)."""
    return fold(text)


@dataclass(frozen=True)
class Match:
    entry: KnowledgeEntry
    confidence: float  # calibrated: the probability that this answer is right
    example: str  # the entry's example closest to the question


@dataclass(frozen=True)
class Scores:
    """Raw scores of one question: the best entry and what the calibrator reads."""

    index: int
    decision: float
    margin: float
    similarity: float
    example: int  # index into Matcher.examples

    def row(self) -> list[float]:
        return [self.decision, self.margin, self.similarity]


class _Model:
    """Vectorizers + linear SVM over (text, entry index) pairs; no calibration."""

    def __init__(
        self,
        texts: Sequence[str],
        labels: np.ndarray,
        n_entries: int,
        encoder: Encoder | None = None,
        dense: np.ndarray | None = None,
        dense_weight: float = 2.0,
    ) -> None:
        folded = [fold(t) for t in texts]
        self.word = TfidfVectorizer(
            analyzer="word",
            ngram_range=(1, 2),
            sublinear_tf=True,
            lowercase=False,
            token_pattern=r"(?u)\b\w+\b",  # noqa: S106 (not a password)
            stop_words=list(STOPWORDS),
            dtype=np.float32,
        )
        self.char = TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=(2, 5),
            sublinear_tf=True,
            lowercase=False,
            dtype=np.float32,
        )
        self.encoder = encoder
        self.dense_weight = dense_weight
        word = self._fit(self.word, folded)
        char = self.char.fit_transform(folded)
        self.X = self._stack(word, char, dense)
        self.labels = labels
        self.classes = np.unique(labels)
        self.rows = [np.flatnonzero(labels == c) for c in range(n_entries)]
        self.dense = dense
        self.coef_t: np.ndarray | None
        if len(self.classes) >= 2:
            svm = LinearSVC(C=1.0, random_state=0)
            svm.fit(self.X, labels)
            coef = np.asarray(svm.coef_, dtype=np.float32)
            icpt = np.asarray(svm.intercept_, dtype=np.float32)
            if len(self.classes) == 2:  # sklearn keeps one column for two classes
                coef, icpt = np.vstack([-coef, coef]), np.concatenate([-icpt, icpt])
            self.coef_t = np.ascontiguousarray(coef.T)  # (features, classes)
            self.intercept = icpt
        else:
            self.coef_t = None
            self.intercept = np.zeros(1, np.float32)

    @staticmethod
    def _fit(vec: TfidfVectorizer, folded: list[str]) -> sp.csr_matrix:
        try:
            return vec.fit_transform(folded)
        except ValueError:  # only stop words: no vocabulary; keep a harmless one
            vec.fit(["\x00"])
            return vec.transform(folded)

    def _stack(self, word: Any, char: Any, dense: np.ndarray | None) -> sp.csr_matrix:
        parts = [sp.csr_matrix(word), sp.csr_matrix(char)]
        X = normalize(sp.hstack(parts, format="csr"))
        if dense is not None:
            X = sp.hstack([X, sp.csr_matrix(dense * self.dense_weight)], format="csr")
        return sp.csr_matrix(X, dtype=np.float32)

    def vectors(self, texts: Sequence[str], dense: np.ndarray | None = None) -> sp.csr_matrix:
        folded = [fold(t) for t in texts]
        if self.encoder is not None and dense is None:
            dense = self.encoder([t[:MAX_QUERY_CHARS] for t in texts])
        return self._stack(self.word.transform(folded), self.char.transform(folded), dense)

    def scores(self, Q: sp.csr_matrix) -> list[Scores | None]:
        """For each row of Q: the best class among those trained, or None (no feature known)."""
        out: list[Scores | None] = []
        if self.coef_t is not None:
            D = np.asarray(Q @ self.coef_t) + self.intercept
        else:
            D = np.zeros((Q.shape[0], 1), np.float32)
        for i in range(Q.shape[0]):
            q = Q.getrow(i)
            if q.nnz == 0:
                out.append(None)
                continue
            d = D[i]
            order = np.argsort(d)[::-1]
            best = int(self.classes[order[0]])
            margin = float(d[order[0]] - d[order[1]]) if len(order) > 1 else 1.0
            rows = self.rows[best]
            sims = self._similarities(q, rows)
            j = int(np.argmax(sims))
            out.append(Scores(best, float(d[order[0]]), margin, float(sims[j]), int(rows[j])))
        return out

    def _similarities(self, q: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
        if self.dense is not None:  # the sentence encoder's cosine
            dq = q[:, -self.dense.shape[1] :].toarray()[0] / self.dense_weight
            return np.asarray(self.dense[rows] @ dq)
        return np.asarray((self.X[rows] @ q.T).toarray()).ravel()


class Matcher:
    """`Matcher(entries).best(text)` → the best entry with a calibrated confidence, or None."""

    def __init__(
        self,
        entries: Sequence[KnowledgeEntry],
        *,
        encoder: Encoder | None = None,
        calibrate: bool = True,
        seed: int = 0,
    ) -> None:
        self.entries = list(entries)
        self.encoder = encoder
        self.examples = [ex for e in self.entries for ex in e.examples]
        self.labels = np.array(
            [i for i, e in enumerate(self.entries) for _ in e.examples], dtype=np.int64
        )
        self.exact: dict[str, int] = {}
        for ex, label in zip(self.examples, self.labels, strict=True):
            self.exact.setdefault(fold(ex), int(label))
        self.model: _Model | None = None
        self.calibrator = Calibrator.default()
        if not self.examples:
            return
        dense = encoder(self.examples) if encoder is not None else None
        self.model = _Model(self.examples, self.labels, len(self.entries), encoder, dense)
        if calibrate:

            def train(idx: np.ndarray) -> _Model:
                sub = None if dense is None else dense[idx]
                texts = [self.examples[i] for i in idx]
                return _Model(texts, self.labels[idx], len(self.entries), encoder, sub)

            def score(model: _Model, idx: np.ndarray) -> list[Scores | None]:
                sub = None if dense is None else dense[idx]
                return model.scores(model.vectors([self.examples[i] for i in idx], sub))

            self.calibrator = fit_calibrator(self.labels, train, score, seed=seed)

    def scores(self, texts: Sequence[str]) -> list[Scores | None]:
        if self.model is None:
            return [None] * len(texts)
        return self.model.scores(self.model.vectors(texts))

    def best(self, query: str) -> Match | None:
        return self.best_many([query])[0]

    def best_many(self, queries: Sequence[str]) -> list[Match | None]:
        """Batch form of `best` (the same results, one vectorization)."""
        results: list[Match | None] = []
        for query, s in zip(queries, self.scores(queries), strict=True):
            if s is None:
                results.append(None)
                continue
            exact = self.exact.get(fold(query))
            if exact is not None:  # the question is one of the examples, word for word
                entry = self.entries[exact]
                results.append(Match(entry, 1.0, _same_example(entry, query)))
                continue
            confidence = self.calibrator.probability(s.row())
            results.append(Match(self.entries[s.index], confidence, self.examples[s.example]))
        return results


def _same_example(entry: KnowledgeEntry, query: str) -> str:
    folded = fold(query)
    return next((ex for ex in entry.examples if fold(ex) == folded), entry.examples[0])


def build(entries: Iterable[KnowledgeEntry], encoder: Encoder | None = None) -> Matcher:
    return Matcher(list(entries), encoder=encoder)
