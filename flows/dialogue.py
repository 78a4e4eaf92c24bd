"""The conversation's brain, without I/O: (status, state, input, context) → Decision.

Order: opt-out first (always honoured), then the conversation's owner (an agent
owns it → the bot is silent), global commands, the running flow, self-service. Which
flows there are, and what starts them, is flows/registry.py's to say.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from flows import consent, language, registry, trust
from flows.actions import (
    Escalate,
    LeaveQueue,
    LogSelfService,
    SetLocale,
    ShowCaseStatus,
    ShowQueuePosition,
)
from flows.commands import CASE_REF_RE, Command, Parsed, parse
from flows.intents import COMMANDS, SMALL_TALK, Understood, reply_meta, understand
from flows.model import (
    Button,
    ChoiceStep,
    Context,
    Decision,
    Flow,
    Invalid,
    MenuEntry,
    Reply,
    UserInput,
    advance,
    normalize,
    prompt,
    start,
)
from flows.options import KnowledgeEntry

MENU_WORDS = ("menu", "menü", "hauptmenü", "main menu")
# the built-in commands in the main menu, among the flows' entries (flows/model.MenuEntry)
BUILTIN_MENU = (
    ("faq", MenuEntry("menu.faq", 10)),
    ("status", MenuEntry("menu.status", 30)),
    ("human", MenuEntry("menu.human", 40)),
    ("language", MenuEntry("menu.language", 50)),
)

BOT, QUEUED, AGENT = "bot", "queued", "agent"
# requests in the customer's words that interrupt a question a flow asked (and the
# intents that ask for a flow)
IN_FLOW = ("human", "status")
# a knowledge-base answer this sure beats a flow's hint words in the question
STRONG_MATCH = 0.8


def _shown(ctx: Context) -> list[tuple[str, MenuEntry]]:
    entries = [*BUILTIN_MENU, *registry.menu_entries()]
    shown = [(n, e) for n, e in entries if e.shown is None or e.shown(ctx)]
    return sorted(shown, key=lambda item: item[1].order)


def menu(ctx: Context, key: str = "menu.greeting") -> Reply:
    name = f" {ctx.contact.name}" if ctx.contact.name else ""
    buttons = tuple(Button(f"c:{cmd}", ctx.t(entry.label)) for cmd, entry in _shown(ctx))
    return Reply(key, ctx.t(key, name=name, company=ctx.options.company_name), buttons)


def help_text(ctx: Context) -> str:
    """The help text and the help lines of the flows the menu offers here."""
    shown = {n for n, _ in _shown(ctx)}
    lines = [
        ctx.t(f.trigger.help)
        for f in registry.FLOWS.values()
        if f.trigger.help and (f.trigger.menu is None or f.name in shown)
    ]
    return "\n".join((ctx.t("help.text"), *lines))


def reprompt(state: Mapping[str, Any], ctx: Context) -> tuple[Reply, ...]:
    flow = registry.get(state.get("flow", ""))
    if flow is None:
        return ()
    return prompt(flow, flow.step(state["step"]), state.get("answers", {}), ctx)


def begin(name: str, ctx: Context, extra: Mapping[str, Any] | None = None) -> Decision:
    """Start a flow proactively (a campaign's survey); KeyError for an unknown flow."""
    return start(registry.FLOWS[name], ctx, extra)


def _intent_command(intent: str | None) -> Parsed | None:
    if intent is None:
        return None
    if intent in COMMANDS:
        return Parsed(COMMANDS[intent])
    flow = registry.by_intent(intent)
    return Parsed(Command.FLOW, flow) if flow is not None else None


def decide(status: str, state: Mapping[str, Any], inp: UserInput, ctx: Context) -> Decision:
    # what the sender may not do on their word alone is taken out here, whatever led to it
    return trust.guard(_decide(status, state, inp, ctx), ctx)


def _decide(status: str, state: Mapping[str, Any], inp: UserInput, ctx: Context) -> Decision:
    cmd = parse(inp.text, inp.payload)
    # the customer's own words (built-in intents, the knowledge base): read once, unless a
    # command said it already or an agent is reading
    understood = understand(inp, ctx) if cmd is None and status != AGENT else Understood(None, None)
    if understood.intent == "stop":  # "bitte keine Nachrichten mehr" is honoured like "stop"
        cmd = Parsed(Command.STOP)
    if cmd and cmd.command is Command.STOP:
        opted = consent.opt_out(ctx)
        # a survey in progress ends too: "stop" means stop
        keep = dict(state) if status != BOT else {}
        return replace(opted, state=keep)
    if status == AGENT:
        return Decision(dict(state))  # the agent answers; the engine relays
    if status == QUEUED:
        return _queued(state, inp, cmd, ctx, understood)
    return _bot(state, inp, cmd, ctx, understood)


def _queued(
    state: Mapping[str, Any],
    inp: UserInput,
    cmd: Parsed | None,
    ctx: Context,
    understood: Understood,
) -> Decision:
    if cmd is None or (cmd.command is Command.MENU and inp.payload is None):
        # a typed "hallo" reads as the menu command: a greeting too
        asks = cmd is not None or _asks(inp, understood)
        if asks and not state.get("position_told"):
            # "Hallo? Ist da jemand?": answered once, with where they stand and when
            told = {**state, "queue_ack": True, "position_told": True}
            return Decision(told, (), (ShowQueuePosition(),))
        if state.get("queue_ack"):
            return Decision(dict(state))  # recorded for the agent; no repeated auto-reply
        reply = Reply("escalation.still_waiting", ctx.t("escalation.still_waiting"))
        return Decision({**state, "queue_ack": True}, (reply,))
    c = cmd.command
    if c in (Command.CANCEL, Command.MENU, Command.FAQ) or _leaves_queue(cmd):
        left = Reply("escalation.left_queue", ctx.t("escalation.left_queue"))
        return Decision({}, (left, menu(ctx, "menu.again")), (LeaveQueue(),))
    if c is Command.STATUS:
        return Decision(dict(state), (), (ShowCaseStatus(cmd.arg),))
    if c is Command.LANGUAGE:
        return _language(state, cmd, ctx, reprompt_flow=False)
    if c is Command.HELP:
        return Decision(
            dict(state), (Reply("escalation.help_queued", ctx.t("escalation.help_queued")),)
        )
    return Decision(
        dict(state), (Reply("escalation.already_queued", ctx.t("escalation.already_queued")),)
    )


def _leaves_queue(cmd: Parsed) -> bool:
    flow = registry.get(cmd.arg or "") if cmd.command is Command.FLOW else None
    return flow is not None and flow.trigger.leaves_queue


def _asks(inp: UserInput, understood: Understood) -> bool:
    """A greeting, a question or a call for a person, while waiting: someone wonders
    whether anybody is there."""
    return understood.intent in ("greeting", "human") or "?" in inp.text


def _bot(
    state: Mapping[str, Any],
    inp: UserInput,
    cmd: Parsed | None,
    ctx: Context,
    understood: Understood,
) -> Decision:
    running = registry.get(state.get("flow", ""))
    # a greeting typed inside a flow is an answer, not a request for the menu; "menu" itself
    # works at any time (the help text promises it)
    if (
        cmd
        and cmd.command is Command.MENU
        and running
        and inp.payload is None
        and not inp.text.strip().startswith("/")
        and normalize(inp.text) not in MENU_WORDS
    ):
        cmd = None
    if cmd is not None:
        return _command(state, cmd, running, ctx)
    if running is not None:
        return _in_flow(running, state, inp, ctx, understood)
    if inp.payload is not None:
        bad = Reply("errors.unknown_button", ctx.t("errors.unknown_button"))
        return Decision(dict(state), (bad, menu(ctx, "menu.again")))
    return _self_service(state, inp, ctx, understood)


def _in_flow(
    running: Flow, state: Mapping[str, Any], inp: UserInput, ctx: Context, understood: Understood
) -> Decision:
    """The flow takes the answer. A choice it cannot read may be a yes or no in other words
    ("auf keinen Fall") or a request ("can I talk to someone?", "wie ist der Stand meiner
    Reklamation?"); free text, ratings and anything else stay the flow's to judge."""
    step = running.step(state["step"])
    intent = understood.intent
    if intent is not None and isinstance(step, ChoiceStep):
        try:
            step.parse(inp, ctx)
        except Invalid:
            if intent in ("yes", "no") and intent in {o.value for o in step.options(ctx)}:
                return advance(running, state, UserInput(intent), ctx)
            asked = _intent_command(intent)
            if asked is not None and (intent in IN_FLOW or asked.command is Command.FLOW):
                return _command(state, asked, running, ctx)
    return advance(running, state, inp, ctx)


def _command(state: Mapping[str, Any], cmd: Parsed, running: Flow | None, ctx: Context) -> Decision:
    c = cmd.command
    if c is Command.HELP:
        text = help_text(ctx)
        return Decision(dict(state), (Reply("help.text", text), *reprompt(state, ctx)))
    if c is Command.MENU:
        return Decision({}, (menu(ctx),))
    if c is Command.CANCEL:
        if running is None:
            return Decision({}, (menu(ctx, "common.nothing_to_cancel"),))
        return Decision({}, (menu(ctx, "common.cancelled"),))
    if c is Command.HUMAN:
        return Decision(
            {},
            (Reply("escalation.queued", ctx.t("escalation.queued")),),
            (Escalate("customer_request", priority=20),),
        )
    if c is Command.OPTIN:
        if not ctx.verified:  # no question whose answer would be refused
            return Decision(dict(state), (Reply("trust.optin", ctx.t("trust.optin")),))
        return start(consent.FLOW, ctx)
    if c is Command.STATUS:
        return Decision(dict(state), reprompt(state, ctx), (ShowCaseStatus(cmd.arg),))
    if c is Command.LANGUAGE:
        return _language(state, cmd, ctx, reprompt_flow=True)
    if c is Command.FLOW and cmd.arg is not None:
        return _start_flow(registry.FLOWS[cmd.arg], state, running, ctx)
    # FAQ: the next free text is a question for the knowledge base
    return Decision({}, (Reply("selfservice.ask_question", ctx.t("selfservice.ask_question")),))


def _start_flow(
    flow: Flow, state: Mapping[str, Any], running: Flow | None, ctx: Context
) -> Decision:
    """A customer asked for `flow`: its gate speaks first; asked again while it runs, its
    question is asked again (another flow, a link code awaited, is replaced)."""
    if flow.trigger.gate is not None:
        refused = flow.trigger.gate(state, ctx)
        if refused is not None:
            return refused
    if running is flow:
        return Decision(dict(state), reprompt(state, ctx))
    return start(flow, ctx)


def _small_talk(state: Mapping[str, Any], understood: Understood, ctx: Context) -> Decision:
    """Thanks, goodbye, yes, no, noise: a short reply; the count of failed questions stays
    as it was (an emoji after a miss must not hand the customer over)."""
    key = SMALL_TALK[str(understood.intent)]
    if understood.intent == "goodbye":
        return Decision({}, (Reply(key, ctx.t(key), meta=reply_meta(understood)),))
    reply = menu(ctx, key) if understood.intent in ("yes", "noise") else Reply(key, ctx.t(key))
    return Decision(dict(state), (replace(reply, meta=reply_meta(understood)),))


def _language(state: Mapping[str, Any], cmd: Parsed, ctx: Context, reprompt_flow: bool) -> Decision:
    if cmd.arg not in ("de", "en"):
        buttons = tuple(Button(f"c:language:{o.value}", o.text(ctx)) for o in language.OPTIONS)
        return Decision(dict(state), (Reply("language.ask", ctx.t("language.ask"), buttons),))
    switched = language.switch(ctx, cmd.arg)
    again = reprompt(state, replace(ctx, locale=cmd.arg)) if reprompt_flow else ()
    return Decision(dict(state), switched.replies + again, (SetLocale(cmd.arg),))


def _self_service(
    state: Mapping[str, Any], inp: UserInput, ctx: Context, understood: Understood
) -> Decision:
    text = inp.text.strip()
    if not text:
        key = "selfservice.attachment_received" if inp.attachments else "errors.empty"
        return Decision(dict(state), (menu(ctx, key),))
    ref = CASE_REF_RE.search(text)
    if ref:
        return Decision(dict(state), (), (ShowCaseStatus(ref.group(0).upper()),))
    asked = _intent_command(understood.intent)
    if asked is not None:
        return _command(state, asked, None, ctx)
    if understood.intent in SMALL_TALK:
        return _small_talk(state, understood, ctx)
    match = understood.match
    threshold = ctx.options.knowledge_base.threshold
    hinted = registry.hinted(text)
    if hinted and (match is None or match.confidence < max(threshold, STRONG_MATCH)):
        # "it arrived broken" is a complaint, not a question about delivery times, unless
        # the knowledge base is sure it has the answer
        return _start_flow(registry.FLOWS[hinted], state, None, ctx)
    entry = match.entry if match is not None else None
    if match is not None and isinstance(entry, KnowledgeEntry) and match.confidence >= threshold:
        answer = entry.answer.get(ctx.locale) + (f"\n{entry.link}" if entry.link else "")
        meta = {"kb_entry": entry.id, "confidence": round(match.confidence, 3)}
        # the entry's follow-up (complaint, status, human) is offered as a button
        follow = (Button(f"c:{entry.flow}", ctx.t(f"menu.{entry.flow}")),) if entry.flow else ()
        return Decision(
            {},
            (Reply("selfservice.answer", answer, follow, meta=meta),),
            (LogSelfService(text[:500], entry.id, match.confidence, True),),
        )
    misses = int(state.get("misses", 0)) + 1
    log = LogSelfService(
        text[:500], match.entry.id if match else None, match.confidence if match else 0.0, False
    )
    if misses >= ctx.options.max_selfservice_misses:
        return Decision(
            {},
            (
                Reply(
                    "selfservice.escalate_after_misses", ctx.t("selfservice.escalate_after_misses")
                ),
            ),
            (log, Escalate("selfservice_misses", priority=10)),
        )
    buttons = (
        Button("c:human", ctx.t("menu.human")),
        Button("c:complaint", ctx.t("menu.complaint")),
        Button("c:menu", ctx.t("menu.menu")),
    )
    return Decision(
        {"misses": misses},
        (Reply("selfservice.not_sure", ctx.t("selfservice.not_sure"), buttons),),
        (log,),
    )
