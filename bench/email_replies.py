"""Reply extraction, side by side: cicbot's stripper and the libraries made for the job on
the same table (tests/fixtures/email/replies.yaml: talon's fixtures and mails as clients
write them in de, en, fr, es, it, nl, ru and pl).

    .venv/bin/python bench/email_replies.py [--failures]

A library that is not installed shows as "-". To score them all (they are not cicbot's
dependencies; talon is unmaintained and pins old packages), in a scratch venv:

    python3 -m venv /tmp/replylibs && /tmp/replylibs/bin/pip install \\
        mail-parser-reply quotequail talon nh3 authres pyyaml
    /tmp/replylibs/bin/python bench/email_replies.py

Each library gets the same input: an .eml's text part (its HTML part if it has none), a
.txt file's text, an .html file's HTML. Libraries without an HTML mode get the HTML as
text (cicbot's html_to_text, nothing cut). A result counts when it equals the expected
text with whitespace collapsed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from channels.email_parse import html_to_text  # noqa: E402
from tests.channels.reply_table import CASES, body, cicbot, same  # noqa: E402

Extractor = Callable[[str, str], str]
LANGUAGES = ["en", "de", "fr", "es", "it", "nl", "pl"]  # mail-parser-reply has no ru


def _mail_parser_reply() -> Extractor:
    from mailparser_reply import EmailReplyParser

    parser = EmailReplyParser(languages=LANGUAGES)

    def run(kind: str, text: str) -> str:
        return parser.parse_reply(html_to_text(text) if kind == "html" else text) or ""

    return run


def _quotequail() -> Extractor:
    import quotequail

    def run(kind: str, text: str) -> str:
        # unwrap: the text above and below a reply's or forward's quoted part
        if kind == "html":
            found = quotequail.unwrap_html(text)
            if not found:
                return html_to_text(text)
            return html_to_text(found.get("html_top", "") + found.get("html_bottom", ""))
        found = quotequail.unwrap(text)
        if not found:
            return text
        return found.get("text_top", "") + "\n" + found.get("text_bottom", "")

    return run


def _talon(signature: bool) -> Extractor:
    from talon import quotations
    from talon.signature.bruteforce import extract_signature

    def run(kind: str, text: str) -> str:
        if kind == "html":
            text = html_to_text(quotations.extract_from_html(text))
        else:
            text = quotations.extract_from_plain(text)
        # talon's signature step (its brute-force one; the other needs a trained model)
        return str(extract_signature(text)[0]) if signature else text

    return run


def extractors() -> dict[str, Extractor | None]:
    found: dict[str, Extractor | None] = {"cicbot": cicbot}
    makers: tuple[tuple[str, Callable[[], Extractor]], ...] = (
        ("mail-parser-reply", _mail_parser_reply),
        ("quotequail", _quotequail),
        ("talon quotes", lambda: _talon(False)),
        ("talon quotes+sig", lambda: _talon(True)),
    )
    for name, make in makers:
        try:
            found[name] = make()
        except ImportError:
            found[name] = None
    return found


def group(name: str) -> str:
    if name.startswith("talon/"):
        return "talon html" if name.endswith(".html") else "talon plain"
    return "cicbot's (8 languages)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--failures", action="store_true", help="print what each got wrong")
    args = ap.parse_args()
    libs = extractors()
    width = max(len(n) for n in CASES) + 2
    print("fixture".ljust(width) + "".join(n[:17].rjust(19) for n in libs))
    scores: dict[str, dict[str, int]] = {}
    wrong: list[str] = []
    for name, expected in CASES.items():
        kind, text = body(name)
        cells = []
        for lib, run in libs.items():
            if run is None:
                cells.append("-")
                continue
            try:
                got = run(kind, text)
            except Exception as exc:  # a library crashing on a fixture scores it wrong
                got = f"<{type(exc).__name__}>"
            ok = same(got, expected)
            tally = scores.setdefault(lib, {})
            tally[group(name)] = tally.get(group(name), 0) + ok
            cells.append("ok" if ok else "WRONG")
            if not ok:
                wrong.append(f"{lib} {name}: {' '.join(got.split())[:160]!r}")
        print(name.ljust(width) + "".join(c.rjust(19) for c in cells))
    print()
    totals = {g: sum(1 for n in CASES if group(n) == g) for g in dict.fromkeys(map(group, CASES))}
    for g, n in totals.items():
        cells = [f"{scores[lib].get(g, 0)}/{n}" if libs[lib] else "-" for lib in libs]
        print(g.ljust(width) + "".join(c.rjust(19) for c in cells))
    cells = [f"{sum(scores[lib].values())}/{len(CASES)}" if libs[lib] else "-" for lib in libs]
    print("all".ljust(width) + "".join(c.rjust(19) for c in cells))
    if args.failures:
        print("\n" + "\n".join(wrong))


if __name__ == "__main__":
    main()
