"""Knowledge-base matcher: which entry (or built-in intent) answers a customer's message,
and how sure we are.

The light default needs only numpy, scipy and scikit-learn (CPU, no model download):

- **features**: TF-IDF over word uni- and bigrams and over character 2-5-grams within
  words, on folded text (case, umlauts and ß folded: "Öffnungszeiten" = "oeffnungszeiten").
  Character n-grams carry typos, inflection and German compounds ("Vertragskündigung" ~
  "Vertrag kündigen"); words and word pairs carry meaning. A word after a negation
  ("nicht", "kein", "not", "don't" ...) is a different word ("nicht_erhalten"), so "ich
  habe die Ware nicht erhalten" and "ich habe die Ware erhalten" differ. In a knowledge
  base's matcher the word block weighs half the character block (`WORD_WEIGHT`): with few
  examples per entry the character n-grams generalise better (Banking77, ten examples per
  intent, validated on other training questions: +0.9 points); the built-in intents keep
  equal weights (their floors, min_confidence in flows/intents.yaml, were measured so);
- **classifier**: a linear SVM, one entry against the rest, over the examples. On a small
  base (`RANK_MAX_EXAMPLES`; not the built-in intents) a multinomial
  logistic regression, whose entries are learnt jointly, picks the entry, and the SVM's
  values for that pick are the scores the calibration reads (Banking77 ten per intent:
  validation +2.4 points, held-out test 72.5 → 75.1 %). The regression's own
  probabilities would not do as scores: on a small base they are sure of unrelated
  questions ("Erzähl mir einen Witz" → voucher 0.44–0.65); the SVM's are not;
- **sentence encoder** (optional, `Encoder`, e.g. multilingual e5): a second linear SVM
  over the encodings, its decision values added to the first (a fusion that beat feeding
  both into one SVM on Banking77); it also answers across languages. On a small base a
  logistic regression over the encodings picks together with the words' one (`_fuse`: the
  sum of their log-probabilities, the encodings' twice; Banking77 ten per intent:
  validation 80.0 → 81.6 %, test 81.4 → 83.0 %), the summed SVM values of that pick
  being the scores;
- **confidence**: a calibrated probability that the answer is right (see
  `flows.knowledge_calibration`), learnt on the knowledge base itself.

A fitted matcher can be saved as plain arrays (`state`) and restored without fitting
(`Matcher.restore`): bot/knowledge/base.py keeps them in a cache, so a restart with an
unchanged base takes a second. The flows stay free of I/O: the encoder is handed in,
loaded elsewhere.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from flows.knowledge_calibration import Calibrator, fit_calibrator
from flows.options import Intent, KnowledgeEntry

if TYPE_CHECKING:
    # scipy and scikit-learn are imported where a matcher is fitted or restored: seconds
    # that every `cicbot` command which only reads the configuration would pay otherwise
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer

MAX_QUERY_CHARS = 300
MODEL_VERSION = 7  # part of the cache key: a change of features or model refits
_UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})
# very common words carry no intent; IDF damps them too, but a small base has noisy IDF
STOPWORDS = frozenset(
    "a an the i you we my me your is are am be do does can could would please to of in on "
    "for it this that and or with at ich du sie wir mein meine meinen ihr ist sind bin "
    "kann koennen bitte zu von im in auf fuer es das der die den dem und oder mit ein "
    "eine einen hallo hello hi".split()
)
NEGATIONS = frozenset(
    "not no never nothing nobody cannot cant dont doesnt didnt wont isnt arent wasnt "
    "havent hasnt couldnt shouldnt nicht kein keine keinen keinem keiner keines nie niemals "
    "nichts niemand".split()
)
NEGATION_SCOPE = 2  # words after a negation that it marks
# up to this many examples (no encoder) a logistic regression picks (see above); it fits
# several times slower than the SVM, and few examples per entry is where it helps
RANK_MAX_EXAMPLES = 2000
RANK_C = 100.0  # little regularisation: 30, 100, 300 measured on validation questions
WORD_WEIGHT = 0.5  # the word block against the character block in a base (see above)
DENSE_C = 10.0  # the encodings' SVM: less regularised than the sparse one (measured)
# its decision values' weight in the sum. 3 beat 1, 1.5, 2 and 5 on Banking77 ten per
# intent validated on other training questions (81.4 % against 80.9 %), but not on the
# held-out test (first choice 80.9 → 80.6 %, all data 93.8 → 93.3 %; built-in intents
# 93.8/92.6 → 93.2/91.8 %): kept at 1.5
DENSE_WEIGHT = 1.5
# with an encoder, on a small base a second logistic regression over the encodings picks
# the entry together with the first (`_fuse`), its log-probabilities weighing twice:
# Banking77 ten per intent, validated on ten other training questions per intent: first
# choice 80.0 % (the encodings' SVM in its place, before) → 81.6 % (weight 1: 80.4 %,
# 3: 81.5 %); held-out test 81.4 → 83.0 %
RANK_DENSE_WEIGHT = 2.0
# an encoder maps texts to L2-normalized rows (n, dim); see bot.knowledge.base.load_encoder
Encoder = Callable[[Sequence[str]], np.ndarray]
Entry = KnowledgeEntry | Intent


def fold(text: str) -> str:
    """Case, width, umlauts and ß folded; punctuation to spaces; at most MAX_QUERY_CHARS read."""
    text = unicodedata.normalize("NFKC", text[:MAX_QUERY_CHARS]).casefold().translate(_UMLAUTS)
    text = text.replace("'", "").replace("’", "")  # "don't" → "dont", "geht's" → "gehts"
    return re.sub(r"[\W_]+", " ", text).strip()


def features(text: str) -> str:
    """What the matcher reads of a text: the folded start (a huge text costs no more)."""
    return fold(text)


def words(folded: str) -> list[str]:
    """Word tokens with negation marked: "nicht erhalten" → ["nicht", "nicht_erhalten"]."""
    out: list[str] = []
    scope = 0
    for w in folded.split():
        if w in NEGATIONS:
            out.append(w)
            scope = NEGATION_SCOPE
        elif scope and w not in STOPWORDS:
            out.append("nicht_" + w)
            scope -= 1
        elif w not in STOPWORDS:
            out.append(w)
    return out


def _word_ngrams(folded: str) -> list[str]:
    toks = words(folded)
    return toks + [f"{a} {b}" for a, b in itertools.pairwise(toks)]


def _vectorizers(vocab: tuple[dict[str, int], dict[str, int]] | None = None) -> list[Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    word = TfidfVectorizer(
        analyzer=_word_ngrams,
        sublinear_tf=True,
        dtype=np.float32,
        vocabulary=vocab[0] if vocab else None,
    )
    char = TfidfVectorizer(
        analyzer="char_wb",
        ngram_range=(2, 5),
        sublinear_tf=True,
        lowercase=False,
        dtype=np.float32,
        vocabulary=vocab[1] if vocab else None,
    )
    return [word, char]


@dataclass(frozen=True)
class Match:
    entry: Entry
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
    # log(1 + the question's words and word pairs that the base knows): an answer read
    # from many known words is more often right (Banking77, all data: in-scope accuracy
    # at 60 % out-of-scope recall 84.1 → 86.3 %). 0 with an encoder, which reads the
    # question without them (a German question to English examples knows no word)
    known: float

    def row(self) -> list[float]:
        return [self.decision, self.margin, self.similarity, self.known]


def _svm(
    X: Any, labels: np.ndarray, C: float, logistic: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(coef (features, classes), intercept) of a one-vs-rest linear SVM, or of a
    multinomial logistic regression."""
    model: Any
    if logistic:
        from sklearn.linear_model import LogisticRegression

        if isinstance(X, np.ndarray):  # dense encodings: lbfgs converges in ~50 iterations
            model = LogisticRegression(C=C, max_iter=1000, random_state=0)
        else:
            model = LogisticRegression(C=C, solver="saga", max_iter=200, tol=1e-3, random_state=0)
    else:
        from sklearn.svm import LinearSVC

        model = LinearSVC(C=C, random_state=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*converge.*")
        model.fit(X, labels)
    coef = np.asarray(model.coef_, dtype=np.float32)
    icpt = np.asarray(model.intercept_, dtype=np.float32)
    if coef.shape[0] == 1:  # sklearn keeps one column for two classes
        coef, icpt = np.vstack([-coef, coef]), np.concatenate([-icpt, icpt])
    return np.ascontiguousarray(coef.T), icpt


class _Model:
    """Vectorizers + linear SVMs over (text, entry index) pairs; no calibration.

    Built by `fit` or from saved arrays by `load`."""

    word: TfidfVectorizer
    char: TfidfVectorizer
    X: sp.csr_matrix  # the examples' sparse features (rows L2-normalized)
    dense: np.ndarray | None  # the examples' encodings
    labels: np.ndarray
    classes: np.ndarray
    coef: np.ndarray | None  # (features, classes) of the sparse SVM; None below two classes
    intercept: np.ndarray
    dense_coef: np.ndarray | None
    dense_intercept: np.ndarray | None
    dense_rank_coef: np.ndarray | None  # the encodings' logistic regression (`_fuse`)
    dense_rank_intercept: np.ndarray | None
    word_weight: float
    rank_coef: np.ndarray | None
    rank_intercept: np.ndarray | None
    # read by `score_one` (set by `_prepare`)
    analyzers: tuple[Callable[[str], list[str]], Callable[[str], list[str]]]
    vocabs: tuple[dict[str, int], dict[str, int]]
    idfs: tuple[np.ndarray, np.ndarray]
    n_word: int
    blocks: dict[int, Any]

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        labels: np.ndarray,
        dense: np.ndarray | None,
        word_weight: float = 1.0,
    ) -> _Model:
        m = cls()
        m.word_weight = word_weight
        m.word, m.char = _vectorizers()
        folded = [fold(t) for t in texts]
        word = m.word.fit_transform(folded) if any(_word_ngrams(f) for f in folded) else None
        if word is None:  # only stop words: no vocabulary; keep a harmless one
            m.word.fit(["\x00"])
            word = m.word.transform(folded)
        m.X = m._stack(word, m.char.fit_transform(folded))
        m.dense, m.labels = dense, labels
        m.classes = np.unique(labels)
        m.coef = m.dense_coef = m.dense_intercept = None
        m.intercept = np.zeros(1, np.float32)
        m.rank_coef = m.rank_intercept = None
        m.dense_rank_coef = m.dense_rank_intercept = None
        rank = word_weight != 1.0 and len(labels) <= RANK_MAX_EXAMPLES
        if len(m.classes) >= 2:
            m.coef, m.intercept = _svm(m.X, labels, 1.0)
            if rank and len(m.classes) >= 3:
                m.rank_coef, m.rank_intercept = _svm(m.X, labels, RANK_C, True)
                if dense is not None:
                    m.dense_rank_coef, m.dense_rank_intercept = _svm(dense, labels, RANK_C, True)
            if dense is not None:
                m.dense_coef, m.dense_intercept = _svm(dense, labels, DENSE_C)
        m._prepare()
        return m

    def _prepare(self) -> None:
        """What `score_one` reads: the vectorizers' analyzers, vocabularies and IDF."""
        self.analyzers = (self.word.build_analyzer(), self.char.build_analyzer())
        self.vocabs = (self.word.vocabulary_, self.char.vocabulary_)
        self.idfs = (self.word.idf_, self.char.idf_)
        self.n_word = len(self.word.vocabulary_)
        self.blocks = {}  # a class → its examples' rows of X (`_block`)

    def _stack(self, word: Any, char: Any) -> sp.csr_matrix:
        import scipy.sparse as sp
        from sklearn.preprocessing import normalize

        word = sp.csr_matrix(word) * np.float32(self.word_weight)
        X = normalize(sp.hstack([word, sp.csr_matrix(char)], format="csr"))
        return sp.csr_matrix(X, dtype=np.float32)

    def rows(self, label: int) -> np.ndarray:
        return np.flatnonzero(self.labels == label)

    def vectors(self, texts: Sequence[str]) -> sp.csr_matrix:
        folded = [fold(t) for t in texts]
        return self._stack(self.word.transform(folded), self.char.transform(folded))

    def scores(self, Q: sp.csr_matrix, dq: np.ndarray | None) -> list[Scores | None]:
        """For each row of Q (and of the encodings dq): the best class, or None (no feature
        known and no encoding)."""
        n = Q.shape[0]
        if self.coef is not None:
            D = np.asarray(Q @ self.coef) + self.intercept
        else:
            D = np.zeros((n, 1), np.float32)
        use_dense = dq is not None and self.dense_coef is not None
        if use_dense:
            assert dq is not None and self.dense_coef is not None
            D = D + DENSE_WEIGHT * (dq @ self.dense_coef + self.dense_intercept)
        R = None
        if self.rank_coef is not None:
            R = np.asarray(Q @ self.rank_coef) + self.rank_intercept
            if use_dense and self.dense_rank_coef is not None:
                R = _fuse(R, dq @ self.dense_rank_coef + self.dense_rank_intercept)
        out: list[Scores | None] = []
        for i in range(n):
            if Q.indptr[i] == Q.indptr[i + 1] and not use_dense:
                out.append(None)
                continue

            def sparse_sims(rows: np.ndarray, i: int = i) -> np.ndarray:
                return np.asarray((self.X[rows] @ Q[i].T).toarray()).ravel()

            r = None if R is None else R[i]
            cols = Q.indices[Q.indptr[i] : Q.indptr[i + 1]]
            known = int(np.count_nonzero(cols < self.n_word))
            out.append(self._pick(D[i], r, None if dq is None else dq[i], sparse_sims, known))
        return out

    def _pick(
        self,
        d: np.ndarray,
        r: np.ndarray | None,
        dq: np.ndarray | None,
        sparse_sims: Callable[[np.ndarray], np.ndarray],
        known: int,
    ) -> Scores:
        """One question's Scores from its decision values `d` (and the regression's `r`)."""
        order = np.argsort(d)[::-1]
        if r is not None:  # the LR picks; the SVM's values of its pick are the scores
            top = int(np.argmax(r))
            order = np.array([top, *(k for k in order if k != top)])
        best = int(self.classes[order[0]])
        margin = float(d[order[0]] - d[order[1]]) if len(order) > 1 else 1.0
        rows = self.rows(best)
        if self.dense is not None and dq is not None:  # the sentence encoder's cosine
            sims, known = self.dense[rows] @ dq, 0  # it reads the question (`Scores.known`)
        else:
            sims = sparse_sims(rows)
        j = int(np.argmax(sims))
        return Scores(
            best, float(d[order[0]]), margin, float(sims[j]), int(rows[j]), float(np.log1p(known))
        )

    # --- one question without sklearn's per-call overhead ----------------------------------
    # sklearn validates its parameters and inputs and builds several sparse matrices on every
    # call: on one short question that costs many times the arithmetic. `score_one` does the
    # same arithmetic in the same order and precision (float32 products and sums, the L2 norm
    # summed in float64, as sklearn's normalize), so its scores equal `scores(vectors(...))`
    # (tests/flows/test_knowledge_fast.py); batches keep the sklearn path.

    def vector(self, folded: str) -> tuple[np.ndarray, np.ndarray]:
        """The sorted feature indices and values of one folded text: `vectors`' row."""
        idx: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        for k in (0, 1):
            i, v = _tfidf(self.analyzers[k](folded), self.vocabs[k], self.idfs[k])
            if k == 0:
                v = v * np.float32(self.word_weight)
            else:
                i = i + self.n_word
            idx.append(i)
            vals.append(v)
        return np.concatenate(idx), _l2(np.concatenate(vals))

    def score_one(self, folded: str, dq: np.ndarray | None) -> Scores | None:
        """`scores` of one folded text (dq: its encoding, one row), without sklearn."""
        idx, vals = self.vector(folded)
        use_dense = dq is not None and self.dense_coef is not None
        if not len(idx) and not use_dense:
            return None
        if self.coef is not None:
            d = _dot(idx, vals, self.coef) + self.intercept
        else:
            d = np.zeros(1, np.float32)
        if use_dense:
            assert dq is not None and self.dense_coef is not None
            d = (d[None, :] + DENSE_WEIGHT * (dq @ self.dense_coef + self.dense_intercept))[0]
        r = None
        if self.rank_coef is not None:
            assert self.rank_intercept is not None
            r2 = (_dot(idx, vals, self.rank_coef) + self.rank_intercept)[None, :]
            if use_dense and self.dense_rank_coef is not None:
                assert dq is not None
                r2 = _fuse(r2, dq @ self.dense_rank_coef + self.dense_rank_intercept)
            r = r2[0]

        def sparse_sims(rows: np.ndarray) -> np.ndarray:
            q = np.zeros(self.X.shape[1], np.float32)
            q[idx] = vals
            return np.asarray(self._block(rows) @ q)

        known = int(np.count_nonzero(idx < self.n_word))
        return self._pick(d, r, None if dq is None else dq[0], sparse_sims, known)

    def _block(self, rows: np.ndarray) -> Any:
        """X's rows `rows` (a class's examples) as a CSR matrix; a view when consecutive."""
        key = int(self.labels[rows[0]])
        block = self.blocks.get(key)
        if block is None:
            import scipy.sparse as sp

            a, b = int(rows[0]), int(rows[-1]) + 1
            if b - a == len(rows):
                X = self.X
                s, e = int(X.indptr[a]), int(X.indptr[b])
                block = sp.csr_matrix(
                    (X.data[s:e], X.indices[s:e], X.indptr[a : b + 1] - s),
                    shape=(b - a, X.shape[1]),
                    copy=False,
                )
            else:
                block = self.X[rows]
            self.blocks[key] = block
        return block

    # --- saving as plain arrays (no pickle) ---------------------------------------------

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        s: dict[str, np.ndarray] = {}
        for name, vec in (("word", self.word), ("char", self.char)):
            vocab = vec.vocabulary_
            s[f"{prefix}{name}_terms"] = np.array(sorted(vocab, key=vocab.__getitem__))
            s[f"{prefix}{name}_idf"] = vec.idf_.astype(np.float32)
        s[f"{prefix}X_data"], s[f"{prefix}X_indices"] = self.X.data, self.X.indices
        s[f"{prefix}X_indptr"] = self.X.indptr
        s[f"{prefix}X_shape"] = np.array(self.X.shape)
        s[f"{prefix}labels"] = self.labels
        s[f"{prefix}word_weight"] = np.array([self.word_weight], np.float32)
        for key in (
            "coef",
            "intercept",
            "dense_coef",
            "dense_intercept",
            "rank_coef",
            "rank_intercept",
            "dense_rank_coef",
            "dense_rank_intercept",
        ):
            value = getattr(self, key)
            if value is not None:
                s[f"{prefix}{key}"] = value
        return s

    @classmethod
    def load(cls, s: dict[str, np.ndarray], prefix: str, dense: np.ndarray | None) -> _Model:
        m = cls()
        vocab = tuple(
            {str(t): i for i, t in enumerate(s[f"{prefix}{n}_terms"].tolist())}
            for n in ("word", "char")
        )
        m.word, m.char = _vectorizers((vocab[0], vocab[1]))
        m.word_weight = float(s[f"{prefix}word_weight"][0])
        m.word.idf_, m.char.idf_ = s[f"{prefix}word_idf"], s[f"{prefix}char_idf"]
        shape = tuple(int(x) for x in s[f"{prefix}X_shape"])
        import scipy.sparse as sp

        m.X = sp.csr_matrix(
            (s[f"{prefix}X_data"], s[f"{prefix}X_indices"], s[f"{prefix}X_indptr"]), shape=shape
        )
        m.labels = s[f"{prefix}labels"]
        m.classes = np.unique(m.labels)
        m.dense = dense
        m.coef = s.get(f"{prefix}coef")
        m.intercept = s.get(f"{prefix}intercept", np.zeros(1, np.float32))
        m.dense_coef = s.get(f"{prefix}dense_coef")
        m.dense_intercept = s.get(f"{prefix}dense_intercept")
        m.rank_coef = s.get(f"{prefix}rank_coef")
        m.rank_intercept = s.get(f"{prefix}rank_intercept")
        m.dense_rank_coef = s.get(f"{prefix}dense_rank_coef")
        m.dense_rank_intercept = s.get(f"{prefix}dense_rank_intercept")
        m._prepare()
        return m


def _tfidf(terms: list[str], vocab: dict[str, int], idf: np.ndarray) -> tuple[Any, Any]:
    """TfidfVectorizer.transform's row of one text's terms (sublinear tf, L2 norm)."""
    counts: dict[int, int] = {}
    for term, n in Counter(terms).items():
        j = vocab.get(term)
        if j is not None:
            counts[j] = n
    idx = np.array(sorted(counts), np.int64)
    vals = np.array([counts[j] for j in idx.tolist()], np.float32)
    np.log(vals, vals)
    vals += 1.0
    vals *= idf[idx]
    return idx, _l2(vals)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    out: np.ndarray = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return out


def _fuse(rank: np.ndarray, dense: np.ndarray) -> np.ndarray:
    """With an encoder, what picks the entry: the two regressions' log-probabilities, the
    encodings' weighing more (rows: questions; `rank`, `dense`: their logits)."""
    out: np.ndarray = _log_softmax(rank) + RANK_DENSE_WEIGHT * _log_softmax(dense)
    return out


def _l2(vals: np.ndarray) -> np.ndarray:
    """sklearn's L2 row normalization: float32 squares summed in float64, in order."""
    if not len(vals):
        return vals
    total = float(np.cumsum((vals * vals).astype(np.float64))[-1])
    if total == 0.0:
        return vals
    out: np.ndarray = (vals.astype(np.float64) / np.sqrt(total)).astype(np.float32)
    return out


def _dot(idx: np.ndarray, vals: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """A sparse row times `coef` as scipy's CSR product: float32 terms summed in order."""
    if not len(idx):
        return np.zeros(coef.shape[1], coef.dtype)
    terms = vals[:, None] * coef[idx]
    out: np.ndarray = np.cumsum(terms, axis=0)[-1]
    return out


class Matcher:
    """`Matcher(entries).best(text)` → the best entry with a calibrated confidence, or None.

    Entries are knowledge-base entries and built-in intents alike (`Match.entry` tells)."""

    def __init__(
        self,
        entries: Sequence[Entry],
        *,
        encoder: Encoder | None = None,
        encodings: np.ndarray | None = None,
        calibrate: bool = True,
        seed: int = 0,
        _state: dict[str, np.ndarray] | None = None,
    ) -> None:
        """`encoder` encodes the questions; the examples' `encodings` may be handed in
        (bot/knowledge/base.py keeps them in a cache), else the encoder encodes them too."""
        self.entries = list(entries)
        self.encoder = encoder
        self.examples = [ex for e in self.entries for ex in e.examples]
        self.labels = np.array(
            [i for i, e in enumerate(self.entries) for _ in e.examples], dtype=np.int64
        )
        # a folded example → its entry and the first example so folded
        self.exact: dict[str, tuple[int, str]] = {}
        for ex, label in zip(self.examples, self.labels, strict=True):
            self.exact.setdefault(fold(ex), (int(label), ex))
        self.model: _Model | None = None
        self.calibrator = Calibrator.default()
        # the built-in intents, asked before this knowledge base (flows/intents.py)
        self.intents: Matcher | None = None
        if not self.examples:
            return
        dense = encodings if encodings is not None else self.encode(self.examples)
        if _state is not None:
            self.model = _Model.load(_state, "", dense)
            self.calibrator = Calibrator.from_state(_state)
            return
        ww = 1.0 if any(isinstance(e, Intent) for e in self.entries) else WORD_WEIGHT
        self.model = _Model.fit(self.examples, self.labels, dense, ww)
        if calibrate:

            def train(idx: np.ndarray) -> _Model:
                sub = None if dense is None else dense[idx]
                return _Model.fit([self.examples[i] for i in idx], self.labels[idx], sub, ww)

            def score(model: _Model, idx: np.ndarray) -> list[Scores | None]:
                sub = None if dense is None else dense[idx]
                return model.scores(model.vectors([self.examples[i] for i in idx]), sub)

            self.calibrator = fit_calibrator(self.labels, train, score, seed=seed)

    def encode(self, texts: Sequence[str]) -> np.ndarray | None:
        if self.encoder is None:
            return None
        return self.encoder([t[:MAX_QUERY_CHARS] for t in texts])

    @classmethod
    def restore(
        cls,
        entries: Sequence[Entry],
        state: dict[str, np.ndarray],
        encoder: Encoder | None = None,
        encodings: np.ndarray | None = None,
    ) -> Matcher:
        """A matcher from `state()` of one fitted on the same entries (see `key`)."""
        return cls(entries, encoder=encoder, encodings=encodings, _state=state)

    def state(self) -> dict[str, np.ndarray]:
        """Everything fitted, as arrays (np.savez, no pickle); {} for an empty base."""
        if self.model is None:
            return {}
        return {**self.model.state(""), **self.calibrator.state()}

    def scores(self, texts: Sequence[str]) -> list[Scores | None]:
        if self.model is None:
            return [None] * len(texts)
        return self.model.scores(self.model.vectors(texts), self.encode(texts))

    def best(self, query: str) -> Match | None:
        """The best entry of one question: `best_many([query])[0]` without sklearn's
        per-call overhead (`_Model.score_one`)."""
        folded = fold(query)
        if self.model is None or not folded:
            return None
        s = self.model.score_one(folded, self.encode([query]))
        return None if s is None else self._match(query, folded, s)

    def best_many(self, queries: Sequence[str]) -> list[Match | None]:
        """Batch form of `best` (the same results, one vectorization)."""
        results: list[Match | None] = []
        for query, s in zip(queries, self.scores(queries), strict=True):
            folded = fold(query)
            results.append(None if s is None or not folded else self._match(query, folded, s))
        return results

    def _match(self, query: str, folded: str, s: Scores) -> Match:
        exact = self.exact.get(folded)
        if exact is not None:  # the question is one of the examples, word for word
            return Match(self.entries[exact[0]], 1.0, exact[1])
        confidence = self.calibrator.probability(s.row())
        return Match(self.entries[s.index], confidence, self.examples[s.example])


def key(entries: Sequence[Entry], encoder: str) -> str:
    """The content hash a fitted matcher is cached under: entries, encoder, model version."""
    data = [[type(e).__name__, e.id, list(e.examples)] for e in entries]
    blob = json.dumps([MODEL_VERSION, encoder, data], ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def build(entries: Sequence[Entry], encoder: Encoder | None = None) -> Matcher:
    return Matcher(list(entries), encoder=encoder)
