"""What a customer newly wrote in a mail: the quoted history and signatures taken out, their
own words kept wherever they stand (pure functions; tests/fixtures/email/replies.yaml).

The text is read line by line. `>` lines are the quote. An attribution line ("On … wrote:",
"Am … schrieb …:", "Le … a écrit :", … in de, en, fr, es, it, nl, ru, pl, pt, sv/da/no,
cs; wrapped over up to three lines) followed by `>` lines only introduces that quote: the
text after the quote is the customer's again (bottom-posting, inline answers). A header
block (From:/Von:/De:/Da:/Van:/Od:/От: … with Sent:/Date:/To:/Subject: …, in any order and
these languages), "-----Original Message-----" and friends, Outlook's rule, or an
attribution followed by an unquoted original start the history: the rest is cut.

Of each block of the customer's own text, a signature is cut: from a "-- " line, or a
device line ("Sent from my iPhone", "Von meinem iPhone gesendet", "Envoyé de mon iPhone",
…) with nothing after it. A sentence that merely begins like one ("Von meinem Konto wurden
49,99 EUR abgebucht") is text. HTML goes through the same rules: blockquotes become `>`
lines. Forwarded mails ("---------- Forwarded message ---------") are kept: the customer
sends them for us to read.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

# ---- HTML → text ---------------------------------------------------------------------

BLOCK = {
    "p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table",
    "ul", "ol", "pre", "hr", "section", "article", "header", "footer", "blockquote",
}  # fmt: skip
SKIP = {"script", "style", "head", "title", "template"}
QUOTED = "\x01"  # marks text inside a blockquote until the lines are made


class _TextExtractor(HTMLParser):
    def __init__(self, mark_quotes: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.mark_quotes = mark_quotes
        self.out: list[str] = []
        self.skip = 0
        self.quote = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in SKIP:
            self.skip += 1
            return
        if tag == "blockquote":
            self.quote += 1
        if tag in BLOCK:
            self.out.append("\n")
        if tag == "li":
            self.out.append("- ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "hr"):
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if tag == "blockquote":
            self.quote = max(0, self.quote - 1)
        if tag in BLOCK:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        text = re.sub(r"\s+", " ", data)
        if self.quote and self.mark_quotes and text.strip():
            text = QUOTED + text
        self.out.append(text)


def html_to_text(html: str, *, mark_quotes: bool = False) -> str:
    """The text of an HTML part; with `mark_quotes`, blockquoted lines start with "> "."""
    parser = _TextExtractor(mark_quotes)
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # noqa: S110 (malformed HTML: what was read so far)
        pass
    lines = []
    for line in "".join(parser.out).replace("\xa0", " ").split("\n"):
        line = line.strip()
        lines.append("> " + line.replace(QUOTED, "") if QUOTED in line else line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_reply(html: str) -> str:
    return strip_reply(html_to_text(html, mark_quotes=True))


# ---- the lines -----------------------------------------------------------------------

INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200e\u200f\u202a\u202c\ufeff"))
VERBS = (
    r"wrote|writes|schrieb|schreibt|a écrit|escribió|escribio|ha scritto|schreef|"
    r"написал\(?а?\)?|написала|пишет|napisał\(?a?\)?|napisała|pisze|escreveu|skrev|napsal\(?a?\)?"
)
LEADS = r"on|am|le|el|il|il giorno|op|w dniu|em|den|dne|på"
ATTRIBUTION = [
    # "On <date>, <name> wrote:" and its translations, Yahoo's "--- On …"
    re.compile(rf"^(?:-+\s*)?(?:{LEADS})\b.{{0,300}}\b(?:{VERBS})\s*:$", re.I),
    # "<name> schrieb am <date>:", "<date>, <name> пишет:": a date or an address in it
    re.compile(rf"^(?=.*(?:\d{{1,4}}[./:-]\d|@)).{{0,300}}\b(?:{VERBS})(?:\s.{{0,120}})?:$", re.I),
    # no verb at all (Gmail in Russian, Yandex, Mail.ru): a date and <address>:
    re.compile(r"^(?=.*\d).{0,250}<[^<>\s]+@[^<>\s]+>\s*:$"),
]
SEPARATOR = re.compile(
    r"^[-=_*\s]*(?:original message|ursprüngliche nachricht|originalnachricht|"
    r"message d'origine|mensaje original|messaggio originale|oorspronkelijk bericht|"
    r"oryginalna wiadomość|wiadomość oryginalna|исходное сообщение|mensagem original|"
    r"ursprungligt meddelande|oprindelig meddelelse|opprinnelig melding|"
    r"původní zpráva)[-=_*\s]*$",
    re.I,
)
OUTLOOK_RULE = re.compile(r"^_{20,}$")
RULE = re.compile(r"^\s*(?:[-_=*]{10,}\s*)?$")  # a drawn line, or nothing
FORWARD = re.compile(
    r"^(?:[-=_*\s]*(?:forwarded message|weitergeleitete nachricht|message transféré|"
    r"mensaje reenviado|messaggio inoltrato|doorgestuurd bericht|przekazana wiadomość|"
    r"пересылаемое сообщение|mensagem encaminhada)[-=_*\s]*|begin forwarded message:|"
    r"anfang der weitergeleiteten (?:nachricht|e-mail):)$",
    re.I,
)
FROM_KEYS = r"from|von|de|da|van|od|от|från|fra|od"
WHEN_KEYS = (
    r"sent|date|gesendet|datum|envoyé|enviado|fecha|inviato|data|verzonden|wysłano|"
    r"отправлено|дата|skickat|sendt|odesláno"
)
OTHER_KEYS = (
    r"to|an|à|a|para|aan|do|кому|till|til|komu|subject|betreff|objet|asunto|oggetto|"
    r"onderwerp|temat|тема|ämne|emne|předmět|assunto|cc|kopie|copie|kopia|копия"
)
HEADER = re.compile(
    rf"^\*?(?:(?P<from>{FROM_KEYS})|(?P<when>{WHEN_KEYS})|{OTHER_KEYS})\s*\*?\s*:\*?(?:\s|$)",
    re.I,
)
# device signatures: a whole line, with nothing of the customer's after it
DEVICE = re.compile(
    r"^(?:sent from my \S+(?: \S+){0,3}|sent (?:from|with|via) (?:mail|outlook|yahoo mail|"
    r"gmail|aol|sparrow|blackberry|samsung|proton ?mail|spark|airmail|windows mail)\b.{0,60}|"
    r"get outlook for (?:ios|android|windows|mac)\b.{0,20}|"
    r"von meinem \S+(?: \S+){0,3} gesendet|gesendet (?:von|mit) (?:meinem \S+(?: \S+){0,2}|"
    r"mail|outlook|gmx|web\.de)|outlook für (?:ios|android) (?:herunterladen|beziehen)|"
    r"envoyé (?:de|depuis) (?:mon|ma) \S+(?: \S+){0,3}|obtenir outlook pour (?:ios|android)|"
    r"enviado desde mi \S+(?: \S+){0,3}|obtener outlook para (?:ios|android)|"
    r"inviato da(?: il mio)? \S+(?: \S+){0,3}|scarica outlook per (?:ios|android)|"
    r"verzonden (?:vanaf|met|via) (?:mijn )?\S+(?: \S+){0,3}|"
    r"verstuurd (?:vanaf|met) (?:mijn )?\S+(?: \S+){0,3}|"
    r"wysłane z(?: mojego)? \S+(?: \S+){0,3}|отправлено (?:с|из) \S+(?: \S+){0,3})"
    r"[.!]?(?: ?\(?https?://\S+\)?)?$",
    re.I,
)
SIGNATURE_DASHES = re.compile(r"^--\s*$")
MAX_SIGNATURE_LINES = 12  # a "-- " with more after it is a divider, not a signature


def _quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


STARTS = re.compile(rf"^(?:-+\s*)?(?:(?:{LEADS})\b|\W{{0,3}}\d)", re.I)


def _attribution(lines: list[str], i: int) -> int:
    """How many lines (1-3) the attribution starting at line i takes; 0: none there. One
    that a client wrapped may have the customer's last line above it: a later line that
    starts like an attribution (a lead word, a date) is its start then."""
    for k in range(1, 4):
        part = lines[i : i + k]
        if len(part) < k or any(not x.strip() or _quoted(x) for x in part):
            return 0
        if not _matches(part):
            continue
        if not STARTS.match(part[0].strip()) and any(
            STARTS.match(part[j].strip()) and _matches(part[j:]) for j in range(1, k)
        ):
            return 0
        return k
    return 0


def _matches(part: list[str]) -> bool:
    joined = " ".join(x.strip() for x in part)
    return len(joined) <= 400 and joined.endswith(":") and any(p.match(joined) for p in ATTRIBUTION)


def _header_block(lines: list[str], i: int) -> bool:
    """A block of at least two headers of the quoted original, one of them From: or
    Sent:/Date:, starting at line i (Outlook, Exchange, webmailers, in their languages)."""
    found = []
    for line in lines[i : i + 6]:
        m = HEADER.match(line.strip())
        if m is None:
            break
        found.append("from" if m.group("from") else "when" if m.group("when") else "other")
    dated = "from" in found or "when" in found
    return (len(found) >= 3 and dated) or ("from" in found and "when" in found)


def _next_text(lines: list[str], i: int) -> int | None:
    for j in range(i, len(lines)):
        if lines[j].strip():
            return j
    return None


def _without_signature(block: list[str]) -> list[str]:
    after = sum(1 for x in block if x.strip())  # lines with text after the current one
    for n, line in enumerate(block):
        after -= bool(line.strip())
        if SIGNATURE_DASHES.match(line) and after <= MAX_SIGNATURE_LINES:
            return block[:n]
        if after == 0 and DEVICE.match(line.strip()):
            return block[:n]
    return block


def strip_reply(text: str) -> str:
    """The customer's new words in `text` (see the module's docstring); "" if there are
    none (the caller then keeps the whole text)."""
    lines = text.translate(INVISIBLE).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: list[list[str]] = [[]]
    forwarded = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if _quoted(line):
            if blocks[-1]:
                blocks.append([])  # a quote ends a block of the customer's text
            i += 1
            continue
        span = _attribution(lines, i)
        if span:
            after = _next_text(lines, i + span)
            if after is not None and _quoted(lines[after]):
                i += span  # it introduces a `>` quote; what follows that is theirs again
                continue
            break  # the original follows unquoted: the rest is history
        s = line.strip()
        if FORWARD.match(s):
            forwarded = "\n".join(x.rstrip() for x in lines[i:]).strip()
            break  # sent for us to read: kept whole, after the customer's own words
        if SEPARATOR.match(s) or OUTLOOK_RULE.match(s) or _header_block(lines, i):
            while blocks[-1] and RULE.match(blocks[-1][-1]):
                blocks[-1].pop()  # Outlook's "-----" above the header block
            break
        blocks[-1].append(line)
        i += 1
    kept = ["\n".join(x.rstrip() for x in _without_signature(b)).strip() for b in blocks]
    return "\n\n".join(k for k in [*kept, forwarded] if k)
