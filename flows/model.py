"""A small declarative flow model, decided without I/O.

A flow is steps (ask a choice, free text, a rating, yes/no, an email) with
validation, re-prompts and branching; `finish` turns the answers into replies and
actions. `start` and `advance` are pure: (state, input, context) → Decision.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from flows.actions import Action, Escalate
from flows.catalog import Catalog
from flows.hours import BusinessHours
from flows.options import FlowOptions, LocalizedText


@dataclass(frozen=True)
class ContactFacts:
    name: str | None = None
    value_segment: str | None = None
    lifecycle_phase: str = "active"


@dataclass(frozen=True)
class Context:
    locale: str
    options: FlowOptions
    catalog: Catalog
    contact: ContactFacts
    now: datetime
    matcher: Any = None  # flows.knowledge.Matcher; Any keeps the model free of it
    channel: str = ""  # where the customer writes from
    # the channel vouches for the sender (flows/trust.py): Telegram, Slack and the web chat
    # authenticate their users; an email sender only with the receiving server's DMARC pass
    verified: bool = True
    # when people answer (config.yaml `business_hours`); None: around the clock
    hours: BusinessHours | None = None

    def t(self, key: str, **params: Any) -> str:
        return self.catalog.text(self.locale, key, **params)


@dataclass(frozen=True)
class UserInput:
    text: str = ""
    payload: str | None = None
    attachments: int = 0


@dataclass(frozen=True)
class Button:
    payload: str
    label: str


@dataclass(frozen=True)
class Reply:
    key: str  # catalog key, for tests and analytics
    text: str
    buttons: tuple[Button, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    state: dict[str, Any]  # the new flow state; {} = no flow running
    replies: tuple[Reply, ...] = ()
    actions: tuple[Action, ...] = ()


def normalize(text: str) -> str:
    """Lowercase, accents kept (ä ≠ a matters in German), punctuation and spaces folded."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w@.+-]+", " ", text)
    return " ".join(text.split()).strip(" .")


# --- options and steps -------------------------------------------------------


@dataclass(frozen=True)
class Option:
    value: str
    label_key: str | None = None  # catalog key
    label: LocalizedText | None = None  # or a text from config.yaml
    aliases: tuple[str, ...] = ()  # extra words that pick it ("ja", "yes", ...)

    def text(self, ctx: Context) -> str:
        if self.label is not None:
            return self.label.get(ctx.locale)
        assert self.label_key is not None
        return ctx.t(self.label_key)


class Invalid(Exception):
    """An answer that does not fit; `key` names the catalog text explaining why."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


Answer = str | None
NextFn = Callable[[Mapping[str, Answer]], str | None]


@dataclass(frozen=True)
class Step:
    id: str
    prompt: str  # catalog key
    next: str | NextFn | None = None  # next step id, a branch function, or the end

    def options(self, ctx: Context) -> Sequence[Option]:
        return ()

    def parse(self, inp: UserInput, ctx: Context) -> Answer:
        raise NotImplementedError

    def next_step(self, answers: Mapping[str, Answer]) -> str | None:
        return self.next(answers) if callable(self.next) else self.next


@dataclass(frozen=True)
class ChoiceStep(Step):
    choices: Sequence[Option] | Callable[[Context], Sequence[Option]] = ()

    def options(self, ctx: Context) -> Sequence[Option]:
        return self.choices(ctx) if callable(self.choices) else self.choices

    def parse(self, inp: UserInput, ctx: Context) -> Answer:
        opts = self.options(ctx)
        if inp.payload is not None:
            raise Invalid("errors.stale_button")  # payloads of this step are matched earlier
        text = normalize(inp.text)
        symbol = _symbol(inp.text)
        if not text and not symbol:
            raise Invalid("errors.choose_option")
        number = small_int(text)
        if number is not None and 1 <= number <= len(opts):
            return opts[number - 1].value
        for opt in opts:
            names = {normalize(opt.value), normalize(opt.text(ctx)), *map(normalize, opt.aliases)}
            if text and text in names:
                return opt.value
            if not text and symbol in opt.aliases:  # "👍": normalize() drops symbols
                return opt.value
        raise Invalid("errors.choose_option")


def small_int(text: str) -> int | None:
    """A typed number such as "3"; None for anything else, including digits int() refuses
    ("፩", other scripts' digits) and huge numbers (int() refuses > 4300 digits)."""
    if text.isdecimal() and len(text) <= 9:
        return int(text)
    return None


def _symbol(text: str) -> str:
    """The text without spaces, emoji variation selectors and skin-tone modifiers."""
    return "".join(
        ch
        for ch in text
        if not ch.isspace() and ch != "\ufe0f" and not "\U0001f3fb" <= ch <= "\U0001f3ff"
    )


YES = ("yes", "y", "ja", "j", "yep", "sure", "ok", "okay", "gerne", "klar", "👍")
NO = ("no", "n", "nein", "nope", "nee", "👎")


YES_NO = (
    Option("yes", "common.yes", aliases=YES),
    Option("no", "common.no", aliases=NO),
)


@dataclass(frozen=True)
class YesNoStep(ChoiceStep):
    choices: Sequence[Option] | Callable[[Context], Sequence[Option]] = YES_NO


@dataclass(frozen=True)
class TextStep(Step):
    min_length: int = 1
    max_length: int = 4000
    optional: bool = False  # "skip" button / words accepted

    def options(self, ctx: Context) -> Sequence[Option]:
        if self.optional:
            return (
                Option("-", "common.skip", aliases=("skip", "überspringen", "-", "keine", "none")),
            )
        return ()

    def parse(self, inp: UserInput, ctx: Context) -> Answer:
        text = clean_text(inp.text)
        if self.optional and normalize(text) in {
            "skip",
            "überspringen",
            "-",
            "keine",
            "none",
            "no",
        }:
            return None
        if not text:
            raise Invalid("errors.need_text_attachment" if inp.attachments else "errors.need_text")
        if len(text) < self.min_length:
            raise Invalid("errors.too_short")
        return text[: self.max_length]


@dataclass(frozen=True)
class RatingStep(Step):
    low: int = 1
    high: int = 5

    def options(self, ctx: Context) -> Sequence[Option]:
        return tuple(
            Option(str(i), label=LocalizedText(de=str(i), en=str(i)))
            for i in range(self.low, self.high + 1)
        )

    def parse(self, inp: UserInput, ctx: Context) -> Answer:
        text = normalize(inp.text)
        stars = inp.text.count("⭐")
        if stars and not text.strip("⭐ "):
            value = stars
        elif (number := small_int(text)) is not None:
            value = number
        else:
            raise Invalid("errors.rating")
        if not self.low <= value <= self.high:
            raise Invalid("errors.rating")
        return str(value)


EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")


@dataclass(frozen=True)
class EmailStep(Step):
    def parse(self, inp: UserInput, ctx: Context) -> Answer:
        text = inp.text.strip()
        if not EMAIL_RE.match(text) or len(text) > 254:
            raise Invalid("errors.email")
        return text.lower()


def clean_text(text: str) -> str:
    """Drop control characters (keep newlines and tabs), trim."""
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C").strip()


# --- flows and the runner ----------------------------------------------------

FinishFn = Callable[[Mapping[str, Answer], Context, Mapping[str, Any]], Decision]
ParamsFn = Callable[[Mapping[str, Answer], Context], Mapping[str, Any]]
# None: the flow starts; a Decision: what is said instead (the flow is not for this sender)
GateFn = Callable[[Mapping[str, Any], Context], Decision | None]


@dataclass(frozen=True)
class MenuEntry:
    """The flow's button in the main menu (payload "c:<flow name>")."""

    label: str  # catalog key, in flows/locales/de.yaml and en.yaml
    # place among the entries, lower first; the built-in ones (flows/dialogue.py) are
    # faq 10, status 30, human 40, language 50; keep new ones below 100 (link is last)
    order: int
    shown: Callable[[Context], bool] | None = None  # None: always


@dataclass(frozen=True)
class Analytics:
    """What the report (bot/crm/analytics.py) counts of the flow's RecordSurvey answers,
    under the section `survey`: "satisfaction" reads a 1-5 `rating`, "recovery" a
    `reason` and an accepted `offer` (and contacts who came back)."""

    survey: str
    kind: Literal["satisfaction", "recovery"]


@dataclass(frozen=True)
class Trigger:
    """How a flow is started; flows/registry.py reads it, nothing else names the flow."""

    menu: MenuEntry | None = None
    words: tuple[str, ...] = ()  # whole messages that start it, German and English
    # word parts in a free-text message that start it, unless the knowledge base is sure
    # it has the answer ("kaputt" is a complaint, not a question)
    hints: tuple[str, ...] = ()
    intent: str | None = None  # the built-in intent (flows/intents.yaml) that asks for it
    help: str | None = None  # catalog key of a line for the help text (when the menu shows it)
    gate: GateFn | None = None  # checked before it starts, whatever started it
    # asked for while waiting for a person, it is help of another kind: the customer
    # leaves the queue and sees the menu (otherwise: "you are already waiting")
    leaves_queue: bool = False
    campaign: bool = False  # a campaign may start it (config.yaml `campaigns: flow:`)
    aliases: tuple[str, ...] = ()  # other names a campaign may give it
    analytics: Analytics | None = None


@dataclass(frozen=True)
class Flow:
    name: str
    steps: tuple[Step, ...]
    finish: FinishFn
    intro: str | None = None  # catalog key said before the first question
    prompt_params: ParamsFn | None = None  # e.g. the summary shown at a confirmation
    trigger: Trigger = Trigger()  # default: started only by another flow or the code

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)


def button_payload(flow: str, step: str, value: str) -> str:
    return f"f:{flow}:{step}:{value}"


def prompt(
    flow: Flow,
    step: Step,
    answers: Mapping[str, Answer],
    ctx: Context,
    error_key: str | None = None,
) -> tuple[Reply, ...]:
    params = dict(flow.prompt_params(answers, ctx)) if flow.prompt_params else {}
    buttons = tuple(
        Button(button_payload(flow.name, step.id, o.value), o.text(ctx)) for o in step.options(ctx)
    )
    ask = Reply(step.prompt, ctx.t(step.prompt, **params), buttons)
    if error_key:
        return (Reply(error_key, ctx.t(error_key)), ask)
    return (ask,)


def start(flow: Flow, ctx: Context, extra: Mapping[str, Any] | None = None) -> Decision:
    first = flow.steps[0]
    state = {
        "flow": flow.name,
        "step": first.id,
        "answers": {},
        "failures": 0,
        "extra": dict(extra or {}),
    }
    intro = (Reply(flow.intro, ctx.t(flow.intro)),) if flow.intro else ()
    return Decision(state, intro + prompt(flow, first, {}, ctx))


def advance(flow: Flow, state: Mapping[str, Any], inp: UserInput, ctx: Context) -> Decision:
    step = flow.step(state["step"])
    answers: dict[str, Answer] = dict(state.get("answers", {}))
    try:
        answers[step.id] = _answer(flow, step, inp, ctx)
    except Invalid as bad:
        # an old button pressed again is not a failure to understand the customer
        failures = int(state.get("failures", 0)) + (bad.key != "errors.stale_button")
        if failures >= ctx.options.max_failed_answers:
            return Decision(
                {},
                (Reply("escalation.after_failures", ctx.t("escalation.after_failures")),),
                (Escalate("failed_answers", priority=10),),
            )
        return Decision({**state, "failures": failures}, prompt(flow, step, answers, ctx, bad.key))
    nxt = step.next_step(answers)
    if nxt is None:
        return flow.finish(answers, ctx, state.get("extra", {}))
    new_state = {**state, "step": nxt, "answers": answers, "failures": 0}
    return Decision(new_state, prompt(flow, flow.step(nxt), answers, ctx))


def _answer(flow: Flow, step: Step, inp: UserInput, ctx: Context) -> Answer:
    if inp.payload is not None:
        prefix = button_payload(flow.name, step.id, "")
        if inp.payload.startswith(prefix):
            value = inp.payload[len(prefix) :]
            for opt in step.options(ctx):
                if opt.value == value:
                    return None if value == "-" else value
        raise Invalid("errors.stale_button")
    return step.parse(replace(inp, payload=None), ctx)
