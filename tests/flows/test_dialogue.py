"""The top-level router: opt-out, agent/queue states, global commands, flows, self-service."""

from __future__ import annotations

import pytest

from flows import registry
from flows.actions import (
    Escalate,
    LeaveQueue,
    LogSelfService,
    SetConsent,
    SetLocale,
    ShowCaseStatus,
    ShowQueuePosition,
)
from flows.dialogue import decide
from flows.knowledge import features
from flows.model import Decision, UserInput, button_payload
from flows.options import FlowOptions
from tests.flows.conftest import CtxFactory
from tests.flows.support import Chat, keys, kinds, only, payloads

MENU_BUTTONS = ["c:faq", "c:complaint", "c:status", "c:human", "c:language"]


def assert_menu(decision: Decision) -> None:
    """The main menu: the built-in entries in their places, then the flows' own entries
    that are always shown (flows/registry.py; linking needs a mail channel)."""
    extra = sorted((e.order, f"c:{n}") for n, e in registry.menu_entries() if e.shown is None)
    assert payloads(decision) == MENU_BUTTONS + [p for o, p in extra if o > 50]


IN_COMPLAINT = {
    "flow": "complaint",
    "step": "description",
    "answers": {"category": "product"},
    "failures": 0,
    "extra": {},
}


def in_complaint(ctx: CtxFactory, locale: str = "en") -> Chat:
    """A chat in the middle of a complaint, waiting for the description."""
    chat = Chat(ctx(locale))
    chat.send("complaint")
    chat.press(button_payload("complaint", "category", "product"))
    assert chat.state == IN_COMPLAINT
    return chat


# --- opt-out and opt-in -----------------------------------------------------------------


@pytest.mark.parametrize("word", ["stop", "STOP", "Stop!", "abmelden", "unsubscribe", "/stop"])
@pytest.mark.parametrize("status", ["bot", "queued", "agent"])
def test_opt_out_in_every_status(ctx: CtxFactory, word: str, status: str) -> None:
    state = {"queue_ack": True} if status != "bot" else {}
    decision = decide(status, state, UserInput(word), ctx())
    assert keys(decision) == ["consent.optout_done"]
    consent = only(decision, SetConsent)
    assert (consent.purpose, consent.granted, consent.source) == (
        "marketing",
        False,
        "chat_optout",
    )
    assert consent.text_shown == decision.replies[0].text
    assert decision.state == state  # queue and agent keep the conversation


def test_opt_out_by_button(ctx: CtxFactory) -> None:
    decision = decide("bot", {}, UserInput(payload="c:stop"), ctx())
    assert only(decision, SetConsent).granted is False


def test_opt_out_cancels_a_running_flow(ctx: CtxFactory) -> None:
    chat = in_complaint(ctx, "de")
    decision = chat.send("abmelden")
    assert keys(decision) == ["consent.optout_done"]
    assert kinds(decision) == ["SetConsent"]
    assert chat.state == {}
    assert decision.replies[0].text.startswith("Sie erhalten keine Werbenachrichten")


def test_stop_inside_a_sentence_is_not_an_opt_out(ctx: CtxFactory) -> None:
    decision = decide(
        "bot", {}, UserInput("I want to stop smoking because my doctor told me"), ctx()
    )
    assert not any(isinstance(a, SetConsent) for a in decision.actions)


@pytest.mark.parametrize(
    ("word", "yes", "locale"),
    [("start", "yes", "en"), ("anmelden", "ja", "de"), ("subscribe", "👍", "en")],
)
def test_opt_in_asks_first_and_records_the_text_shown(
    ctx: CtxFactory, word: str, yes: str, locale: str
) -> None:
    chat = Chat(ctx(locale))
    asked = chat.send(word)
    assert keys(asked) == ["consent.optin_question"]
    assert asked.actions == ()  # nothing granted by the keyword alone
    assert payloads(asked) == [button_payload("consent", "agree", v) for v in ("yes", "no")]
    question = asked.replies[0].text
    assert "Beispiel GmbH" in question
    decision = chat.send(yes)
    assert keys(decision) == ["consent.optin_done"]
    consent = only(decision, SetConsent)
    assert (consent.purpose, consent.granted, consent.source) == ("marketing", True, "chat_optin")
    assert consent.text_shown == question
    assert chat.state == {}


def test_opt_in_declined_records_nothing(ctx: CtxFactory) -> None:
    chat = Chat(ctx())
    chat.send("start")
    decision = chat.press(button_payload("consent", "agree", "no"))
    assert keys(decision) == ["consent.optin_declined"]
    assert decision.actions == ()


def test_telegram_start_opens_the_menu_not_the_opt_in(ctx: CtxFactory) -> None:
    decision = decide("bot", {}, UserInput("/start campaign_x"), ctx())
    assert keys(decision) == ["menu.greeting"]
    assert decision.actions == ()


# --- agent and queue --------------------------------------------------------------------


@pytest.mark.parametrize("text", ["Hello?", "my parcel is broken", "human", "menu", "help"])
def test_agent_status_bot_is_silent(ctx: CtxFactory, text: str) -> None:
    state = {"queue_ack": True}
    decision = decide("agent", state, UserInput(text), ctx())
    assert decision.replies == () and decision.actions == ()
    assert decision.state == state


def test_agent_status_silent_for_buttons_and_attachments(ctx: CtxFactory) -> None:
    for inp in (UserInput(payload="c:human"), UserInput(attachments=2)):
        decision = decide("agent", {}, inp, ctx())
        assert decision.replies == () and decision.actions == ()


def test_queued_acknowledges_once_then_silence(ctx: CtxFactory) -> None:
    chat = Chat(ctx(), status="queued")
    first = chat.send("It is urgent, please hurry")
    assert keys(first) == ["escalation.still_waiting"]
    assert first.actions == ()
    for text in ("The order number is 4711", "and it was a gift"):
        decision = chat.send(text)  # details for the agent: recorded, no auto-reply
        assert decision.replies == () and decision.actions == ()
    # issue 20: "is anybody there?" is answered once, with the place in the queue
    asked = chat.send("hello?")
    assert asked.replies == () and asked.actions == (ShowQueuePosition(),)
    for text in ("anyone there", "Hallo", "hello??"):
        decision = chat.send(text)
        assert decision.replies == () and decision.actions == ()
    assert chat.state == {"queue_ack": True, "position_told": True}


@pytest.mark.parametrize("text", ["Hallo? Ist da jemand?", "hi, is anyone there", "Hallo"])
def test_queued_is_anybody_there_gets_the_queue_position(ctx: CtxFactory, text: str) -> None:
    for state in ({}, {"queue_ack": True}):  # the first message while waiting, or later
        decision = decide("queued", state, UserInput(text), ctx("de"))
        assert decision.actions == (ShowQueuePosition(),) and decision.replies == ()
        assert decision.state == {"queue_ack": True, "position_told": True}


@pytest.mark.parametrize(
    "inp",
    [
        UserInput("cancel"),
        UserInput("abbrechen"),
        UserInput(payload="c:menu"),
        UserInput(payload="c:cancel"),
    ],
)
def test_queued_cancel_leaves_the_queue(ctx: CtxFactory, inp: UserInput) -> None:
    decision = decide("queued", {"queue_ack": True}, inp, ctx())
    assert keys(decision) == ["escalation.left_queue", "menu.again"]
    assert kinds(decision) == ["LeaveQueue"]
    assert decision.actions == (LeaveQueue(),)
    assert decision.state == {}


def test_queued_commands(ctx: CtxFactory) -> None:
    c = ctx()
    human = decide("queued", {}, UserInput("human"), c)
    assert keys(human) == ["escalation.already_queued"] and human.actions == ()
    assert keys(decide("queued", {}, UserInput("help"), c)) == ["escalation.help_queued"]
    status = decide("queued", {}, UserInput("status C-2026-000001"), c)
    assert status.actions == (ShowCaseStatus("C-2026-000001"),)
    switched = decide("queued", {}, UserInput("language de"), c)
    assert keys(switched) == ["language.switched"]
    assert switched.actions == (SetLocale("de"),)


# --- global commands ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "inp",
    [
        UserInput("human"),
        UserInput("Mensch"),
        UserInput("Mitarbeiter"),
        UserInput("talk to a human"),
        UserInput("mit einem Menschen sprechen"),
        UserInput(payload="c:human"),
    ],
)
def test_human_escalates(ctx: CtxFactory, inp: UserInput) -> None:
    decision = decide("bot", {}, inp, ctx())
    assert keys(decision) == ["escalation.queued"]
    assert only(decision, Escalate).reason == "customer_request"
    assert decision.state == {}


def test_human_inside_a_flow_ends_it_and_escalates(ctx: CtxFactory) -> None:
    chat = in_complaint(ctx)
    decision = chat.send("Mitarbeiter")
    assert kinds(decision) == ["Escalate"]
    assert chat.state == {}


def test_help_reprompts_the_running_question(ctx: CtxFactory) -> None:
    chat = in_complaint(ctx)
    decision = chat.send("help")
    assert keys(decision) == ["help.text", "complaint.ask_description"]
    assert decision.actions == ()
    assert chat.state == IN_COMPLAINT


def test_help_at_top_level(ctx: CtxFactory) -> None:
    for text in ("help", "Hilfe", "?", "/help@MyBot"):
        decision = decide("bot", {}, UserInput(text), ctx())
        assert keys(decision) == ["help.text"], text


@pytest.mark.parametrize("text", ["cancel", "abbrechen"])
def test_cancel_without_a_flow(ctx: CtxFactory, text: str) -> None:
    decision = decide("bot", {}, UserInput(text), ctx())
    assert keys(decision) == ["common.nothing_to_cancel"]
    assert_menu(decision)


@pytest.mark.parametrize(
    "inp",
    [
        UserInput("language de"),
        UserInput("Sprache Deutsch"),
        UserInput("deutsch"),
        UserInput(payload="c:language:de"),
    ],
)
def test_language_switch_confirms_in_the_new_language(ctx: CtxFactory, inp: UserInput) -> None:
    c = ctx("en")
    decision = decide("bot", {}, inp, c)
    assert keys(decision) == ["language.switched"]
    assert decision.replies[0].text == c.catalog.text("de", "language.switched")
    assert decision.actions == (SetLocale("de"),)


def test_language_switch_reprompts_the_question_in_the_new_language(ctx: CtxFactory) -> None:
    chat = in_complaint(ctx, "en")
    asked = chat.send("Sprache")
    assert keys(asked) == ["language.ask"]
    assert payloads(asked) == ["c:language:de", "c:language:en"]
    assert chat.state == IN_COMPLAINT
    decision = chat.press("c:language:de")
    assert keys(decision) == ["language.switched", "complaint.ask_description"]
    assert decision.replies[1].text == chat.ctx.catalog.text("de", "complaint.ask_description")
    assert decision.actions == (SetLocale("de"),)
    assert chat.state == IN_COMPLAINT
    # and the flow goes on, in German
    assert chat.send("Das Gerät startet nicht mehr.").replies[0].text.startswith("Haben Sie")


def test_language_to_english(ctx: CtxFactory) -> None:
    decision = decide("bot", {}, UserInput("English"), ctx("de"))
    assert decision.replies[0].text == "Okay, I'll continue in English."
    assert decision.actions == (SetLocale("en"),)


@pytest.mark.parametrize("text", ["hello", "Hallo", "hi", "menu", "/start", "Guten Tag"])
def test_greeting_shows_the_menu(ctx: CtxFactory, text: str) -> None:
    decision = decide("bot", {"misses": 1}, UserInput(text), ctx())
    assert keys(decision) == ["menu.greeting"]
    assert_menu(decision)
    assert decision.state == {}


def test_greeting_uses_name_and_company(ctx: CtxFactory) -> None:
    text = decide("bot", {}, UserInput("Hallo"), ctx("de", name="Anna")).replies[0].text
    assert text.startswith("Hallo Anna!")
    assert "Beispiel GmbH" in text
    assert decide("bot", {}, UserInput("hi"), ctx()).replies[0].text.startswith("Hello!")


def test_menu_buttons(ctx: CtxFactory) -> None:
    c = ctx()
    assert keys(decide("bot", {}, UserInput(payload="c:faq"), c)) == ["selfservice.ask_question"]
    assert keys(decide("bot", {}, UserInput(payload="c:complaint"), c)) == [
        "complaint.intro",
        "complaint.ask_category",
    ]
    assert decide("bot", {}, UserInput(payload="c:status"), c).actions == (ShowCaseStatus(),)
    assert keys(decide("bot", {}, UserInput(payload="c:language"), c)) == ["language.ask"]


@pytest.mark.parametrize(
    "payload",
    ["c:bogus", "x:whatever", button_payload("complaint", "category", "delivery")],
)
def test_unknown_button_at_top_level(ctx: CtxFactory, payload: str) -> None:
    decision = decide("bot", {}, UserInput(payload=payload), ctx())
    assert keys(decision) == ["errors.unknown_button", "menu.again"]
    assert_menu(decision)
    assert decision.actions == ()


def test_empty_text(ctx: CtxFactory) -> None:
    decision = decide("bot", {}, UserInput("   "), ctx())
    assert keys(decision) == ["errors.empty"]
    assert decision.actions == ()


def test_attachment_without_text(ctx: CtxFactory) -> None:
    decision = decide("bot", {}, UserInput("", attachments=1), ctx())
    assert keys(decision) == ["selfservice.attachment_received"]
    assert_menu(decision)


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("C-2026-000042", "C-2026-000042"),
        ("What about my case C-2026-000042?", "C-2026-000042"),
        ("wie ist der Stand von c-2026-000042", "C-2026-000042"),
        ("status C-2026-000001", "C-2026-000001"),
        ("Status c-2026-000001", "C-2026-000001"),
        ("/status@MyBot C-2026-000001", "C-2026-000001"),
    ],
)
def test_case_reference_shows_the_status(ctx: CtxFactory, text: str, ref: str) -> None:
    decision = decide("bot", {}, UserInput(text), ctx())
    assert decision.actions == (ShowCaseStatus(ref),)
    assert decision.replies == ()  # the engine answers with the case


def test_status_without_reference(ctx: CtxFactory) -> None:
    for text in ("status", "Fallstatus", "my case"):
        assert decide("bot", {}, UserInput(text), ctx()).actions == (ShowCaseStatus(None),)


def test_status_inside_a_flow_reprompts(ctx: CtxFactory) -> None:
    chat = in_complaint(ctx)
    decision = chat.send("status")
    assert decision.actions == (ShowCaseStatus(None),)
    assert keys(decision) == ["complaint.ask_description"]
    assert chat.state == IN_COMPLAINT


def test_reference_typed_inside_a_flow_is_an_answer(ctx: CtxFactory) -> None:
    chat = in_complaint(ctx)
    chat.send("The screen is cracked in two places.")
    decision = chat.send("C-2026-000042")
    assert decision.actions == ()
    assert chat.state["answers"]["reference"] == "C-2026-000042"


# --- self-service -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("locale", "text", "entry"),
    [
        ("en", "when are you open?", "opening_hours"),
        ("de", "Wann habt ihr offen", "opening_hours"),
        ("de", "kann ich per paypal zahlen", "payment_methods"),
        ("de", "Vertragskündigung", "cancel_contract"),
        ("en", "How long does delivery take?", "shipping_time"),
    ],
)
def test_self_service_answers_from_the_knowledge_base(
    ctx: CtxFactory, options: FlowOptions, locale: str, text: str, entry: str
) -> None:
    decision = decide("bot", {"misses": 1}, UserInput(text), ctx(locale))
    assert keys(decision) == ["selfservice.answer"]
    kb = {e.id: e for e in options.knowledge_base.entries}
    assert decision.replies[0].text == kb[entry].answer.get(locale)
    assert decision.replies[0].meta["kb_entry"] == entry
    log = only(decision, LogSelfService)
    assert (log.entry_id, log.answered, log.question) == (entry, True, text.strip())
    assert log.confidence >= options.knowledge_base.threshold
    assert decision.state == {}  # the miss counter is reset


@pytest.mark.parametrize("text", ["what is the meaning of life", "my cat is sick"])
def test_unrelated_question_is_not_sure_with_buttons(ctx: CtxFactory, text: str) -> None:
    decision = decide("bot", {}, UserInput(text), ctx())
    assert keys(decision) == ["selfservice.not_sure"]
    assert payloads(decision) == ["c:human", "c:complaint", "c:menu"]
    log = only(decision, LogSelfService)
    assert log.answered is False and log.question == text
    assert decision.state == {"misses": 1}


def test_second_miss_in_a_row_escalates(ctx: CtxFactory, options: FlowOptions) -> None:
    assert options.max_selfservice_misses == 2
    chat = Chat(ctx())
    chat.send("what is the meaning of life")
    decision = chat.send("my cat is sick")
    assert keys(decision) == ["selfservice.escalate_after_misses"]
    assert kinds(decision) == ["LogSelfService", "Escalate"]
    assert only(decision, Escalate).reason == "selfservice_misses"
    assert chat.state == {}


def test_a_hit_resets_the_miss_counter(ctx: CtxFactory) -> None:
    chat = Chat(ctx())
    chat.send("what is the meaning of life")
    assert keys(chat.send("when are you open?")) == ["selfservice.answer"]
    decision = chat.send("my cat is sick")
    assert keys(decision) == ["selfservice.not_sure"]
    assert not any(isinstance(a, Escalate) for a in decision.actions)


def test_a_command_resets_the_miss_counter(ctx: CtxFactory) -> None:
    chat = Chat(ctx())
    chat.send("what is the meaning of life")
    chat.send("menu")
    assert keys(chat.send("my cat is sick")) == ["selfservice.not_sure"]


@pytest.mark.parametrize(
    "text",
    ["my parcel is broken", "Die Lieferung kam kaputt an", "I want to complain"],
)
def test_complaint_words_start_the_complaint(ctx: CtxFactory, text: str) -> None:
    decision = decide("bot", {}, UserInput(text), ctx())
    assert keys(decision) == ["complaint.intro", "complaint.ask_category"]
    assert decision.state["flow"] == "complaint"


def test_huge_text_is_handled(ctx: CtxFactory) -> None:
    text = "When are you open? " * 6000  # > 100 kB; the matcher reads only the start
    assert len(text) > 100_000
    # checked first, so that a lost truncation fails here instead of being slow below
    assert features(text) == features(text[:2000])
    decision = decide("bot", {}, UserInput(text), ctx())
    assert keys(decision) == ["selfservice.answer"]
    assert only(decision, LogSelfService).question == text[:500]
    noise = decide("bot", {}, UserInput("blub " * 25_000), ctx())
    assert keys(noise) == ["selfservice.not_sure"]


def test_without_a_matcher_every_question_is_a_miss(ctx: CtxFactory) -> None:
    from dataclasses import replace

    decision = decide("bot", {}, UserInput("when are you open?"), replace(ctx(), matcher=None))
    assert keys(decision) == ["selfservice.not_sure"]
