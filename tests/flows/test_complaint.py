"""Complaint intake: category, description, reference, severity, resolution, confirmation."""

from __future__ import annotations

from typing import Any

import pytest

from flows import service_level
from flows.actions import Escalate, OpenCase
from flows.model import button_payload
from flows.options import FlowOptions
from tests.flows.conftest import CtxFactory
from tests.flows.support import NOW, Chat, keys, kinds, only, payloads

DESCRIPTION = "The parcel arrived with a broken screen."
ASK = {
    "category": "complaint.ask_category",
    "description": "complaint.ask_description",
    "reference": "complaint.ask_reference",
    "severity": "complaint.ask_severity",
    "resolution": "complaint.ask_resolution",
    "confirm": "complaint.confirm",
}


def pay(step: str, value: str) -> str:
    return button_payload("complaint", step, value)


def begin(ctx: CtxFactory, locale: str = "en", **facts: Any) -> Chat:
    chat = Chat(ctx(locale, **facts))
    first = chat.send("complaint" if locale == "en" else "Beschwerde")
    assert keys(first) == ["complaint.intro", "complaint.ask_category"]
    assert chat.flow == "complaint" and chat.step == "category"
    return chat


def by_buttons(
    chat: Chat,
    *,
    category: str = "product",
    reference: str | None = None,
    severity: str = "medium",
    resolution: str = "refund",
) -> Chat:
    """Answer every question up to the confirmation with buttons (and the description)."""
    assert keys(chat.press(pay("category", category))) == [ASK["description"]]
    assert keys(chat.send(DESCRIPTION)) == [ASK["reference"]]
    d = chat.send(reference) if reference is not None else chat.press(pay("reference", "-"))
    assert keys(d) == [ASK["severity"]]
    assert keys(chat.press(pay("severity", severity))) == [ASK["resolution"]]
    assert keys(chat.press(pay("resolution", resolution))) == [ASK["confirm"]]
    return chat


def open_case(ctx: CtxFactory, severity: str, segment: str | None = None) -> OpenCase:
    chat = by_buttons(begin(ctx, segment=segment), severity=severity)
    decision = chat.press(pay("confirm", "yes"))
    assert chat.state == {}
    return only(decision, OpenCase)


# --- the happy paths ------------------------------------------------------------------


def test_buttons_offered_at_each_step_come_from_config(ctx: CtxFactory) -> None:
    chat = begin(ctx)
    assert payloads(chat.last) == [
        pay("category", c) for c in ("delivery", "product", "billing", "service", "other")
    ]
    chat.press(pay("category", "delivery"))
    assert chat.last.replies[-1].buttons == ()  # free text: no buttons
    chat.send(DESCRIPTION)
    assert payloads(chat.last) == [pay("reference", "-")]
    chat.send("skip")
    assert payloads(chat.last) == [
        pay("severity", s) for s in ("low", "medium", "high", "critical")
    ]
    chat.press(pay("severity", "low"))
    assert payloads(chat.last) == [
        pay("resolution", r) for r in ("refund", "replacement", "repair", "apology", "other")
    ]
    chat.press(pay("resolution", "repair"))
    assert payloads(chat.last) == [pay("confirm", "yes"), pay("confirm", "no")]


def test_whole_flow_by_buttons_opens_exactly_one_case(ctx: CtxFactory) -> None:
    chat = by_buttons(
        begin(ctx),
        category="product",
        reference="ORD-12345",
        severity="medium",
        resolution="refund",
    )
    summary = chat.last.replies[-1].text
    for shown in ("Faulty product", DESCRIPTION, "ORD-12345", "Annoying", "Refund"):
        assert shown in summary
    decision = chat.press(pay("confirm", "yes"))
    assert chat.state == {}
    assert decision.replies == ()  # the engine confirms with the case reference
    assert decision.actions == (
        OpenCase(
            category="product",
            description=DESCRIPTION,
            severity="medium",
            order_reference="ORD-12345",
            desired_resolution="refund",
            escalate=False,
            priority=service_level.case_priority("medium", None),
            due_at=service_level.due_at(NOW, 20, None),  # medium; no business hours: calendar hours
        ),
    )


def test_whole_flow_by_typed_numbers_and_words_in_english(ctx: CtxFactory) -> None:
    chat = begin(ctx)
    assert keys(chat.send("3")) == [ASK["description"]]  # billing
    assert keys(chat.send(f"  {DESCRIPTION}  ")) == [ASK["reference"]]
    assert keys(chat.send("INV-2026-77")) == [ASK["severity"]]
    assert keys(chat.send("serious")) == [ASK["resolution"]]
    assert keys(chat.send("An apology")) == [ASK["confirm"]]
    case = only(chat.send("yes"), OpenCase)
    assert (case.category, case.description, case.order_reference) == (
        "billing",
        DESCRIPTION,
        "INV-2026-77",
    )
    assert (case.severity, case.desired_resolution) == ("high", "apology")


def test_whole_flow_by_typed_text_in_german(ctx: CtxFactory) -> None:
    chat = begin(ctx, "de")
    assert chat.last.replies[-1].buttons[0].label == "Lieferung"
    assert keys(chat.send("Lieferung")) == [ASK["description"]]
    assert keys(chat.send("Das Paket kam drei Wochen zu spät an.")) == [ASK["reference"]]
    assert keys(chat.send("überspringen")) == [ASK["severity"]]
    assert keys(chat.send("1")) == [ASK["resolution"]]  # Geringfügig = low
    assert keys(chat.send("Ersatz")) == [ASK["confirm"]]
    summary = chat.last.replies[-1].text
    assert "Bitte prüfen Sie Ihre Beschwerde" in summary
    for shown in ("Lieferung", "drei Wochen", "Referenz: –", "Geringfügig", "Ersatz"):
        assert shown in summary
    case = only(chat.send("ja"), OpenCase)
    assert case.category == "delivery"
    assert case.description == "Das Paket kam drei Wochen zu spät an."
    assert case.order_reference is None
    assert (case.severity, case.desired_resolution) == ("low", "replacement")


@pytest.mark.parametrize("typed", ["critical", "Kritisch – ich brauche dringend Hilfe", "4."])
def test_severity_typed_as_value_label_or_number(ctx: CtxFactory, typed: str) -> None:
    chat = begin(ctx, "de")
    chat.send("2")
    chat.send(DESCRIPTION)
    chat.send("-")
    assert keys(chat.send(typed)) == [ASK["resolution"]]
    assert chat.state["answers"]["severity"] == "critical"


@pytest.mark.parametrize("skip", ["skip", "Skip", "überspringen", "Überspringen", "-", "none"])
def test_optional_reference_skipped_by_typing(ctx: CtxFactory, skip: str) -> None:
    chat = begin(ctx)
    chat.press(pay("category", "delivery"))
    chat.send(DESCRIPTION)
    assert keys(chat.send(skip)) == [ASK["severity"]]
    assert chat.state["answers"]["reference"] is None


def test_optional_reference_skipped_by_button_is_none_in_the_case(ctx: CtxFactory) -> None:
    chat = by_buttons(begin(ctx), reference=None)
    assert "Reference: –" in chat.last.replies[-1].text
    case = only(chat.press(pay("confirm", "yes")), OpenCase)
    assert case.order_reference is None


@pytest.mark.parametrize("skip", ["skip", "-", "none"])
def test_required_description_cannot_be_skipped(ctx: CtxFactory, skip: str) -> None:
    chat = begin(ctx)
    chat.press(pay("category", "delivery"))
    assert keys(chat.send(skip)) == ["errors.too_short", ASK["description"]]
    assert keys(chat.press(pay("description", "-"))) == ["errors.stale_button", ASK["description"]]
    assert chat.state["answers"] == {"category": "delivery"}


def test_reference_is_cut_to_its_maximum_length(ctx: CtxFactory) -> None:
    chat = by_buttons(begin(ctx), reference="R" * 300)
    case = only(chat.send("yes"), OpenCase)
    assert case.order_reference == "R" * 200


def test_confirm_no_discards_without_actions(ctx: CtxFactory) -> None:
    chat = by_buttons(begin(ctx))
    decision = chat.send("no")
    assert keys(decision) == ["complaint.discarded"]
    assert decision.actions == ()
    assert chat.state == {}


def test_confirm_no_by_button_in_german(ctx: CtxFactory) -> None:
    chat = by_buttons(begin(ctx, "de"))
    decision = chat.press(pay("confirm", "no"))
    assert keys(decision) == ["complaint.discarded"]
    assert decision.replies[0].text.startswith("Alles klar")
    assert decision.actions == ()


@pytest.mark.parametrize("yes", ["👍", "👍🏻", "ok"])
@pytest.mark.parametrize("no", ["👎", "nee"])
def test_confirm_accepts_the_yes_and_no_aliases(ctx: CtxFactory, yes: str, no: str) -> None:
    # regression: normalize() drops symbols, so "👍"/"👎" were refused though they are aliases
    assert kinds(by_buttons(begin(ctx)).send(yes)) == ["OpenCase"]
    assert keys(by_buttons(begin(ctx)).send(no)) == ["complaint.discarded"]


# --- escalation and priority --------------------------------------------------------


@pytest.mark.parametrize(
    ("severity", "segment", "escalate"),
    [
        ("low", None, False),
        ("medium", "B", False),
        ("medium", "C", False),
        ("high", None, True),
        ("high", "C", True),
        ("critical", "B", True),
        ("low", "A", True),
        ("medium", "A", True),
    ],
)
def test_escalate_for_high_severity_or_segment_a(
    ctx: CtxFactory, severity: str, segment: str | None, escalate: bool
) -> None:
    case = open_case(ctx, severity, segment)
    assert case.severity == severity
    assert case.escalate is escalate


def test_priority_orders_severity_and_customer_value(ctx: CtxFactory) -> None:
    assert open_case(ctx, "critical").priority > open_case(ctx, "low").priority
    assert open_case(ctx, "high", "C").priority > open_case(ctx, "medium", "C").priority
    assert open_case(ctx, "low", "A").priority > open_case(ctx, "low", "C").priority
    assert open_case(ctx, "medium", "A").priority > open_case(ctx, "medium", "B").priority
    assert open_case(ctx, "medium", "B").priority > open_case(ctx, "medium", None).priority
    # severity weighs more than customer value: critical for a C customer before minor for an A
    assert open_case(ctx, "critical", "C").priority > open_case(ctx, "low", "A").priority
    assert open_case(ctx, "high", "C").priority > open_case(ctx, "low", "A").priority


# --- validation and re-prompts ------------------------------------------------------------


def test_too_short_description_reprompts_error_first(ctx: CtxFactory) -> None:
    chat = begin(ctx)
    chat.press(pay("category", "product"))
    decision = chat.send("broken")
    assert keys(decision) == ["errors.too_short", ASK["description"]]
    assert chat.step == "description" and chat.state["failures"] == 1
    assert keys(chat.send(DESCRIPTION)) == [ASK["reference"]]
    assert chat.state["failures"] == 0


def test_empty_description_and_attachment_only(ctx: CtxFactory) -> None:
    chat = begin(ctx)
    chat.press(pay("category", "product"))
    assert keys(chat.send("   ")) == ["errors.need_text", ASK["description"]]
    assert keys(chat.send("", attachments=1)) == ["errors.need_text_attachment", ASK["description"]]
    assert chat.step == "description"


@pytest.mark.parametrize("bad", ["banana", "0", "6", "99", "1.5", "፩", "1" * 5000])
def test_invalid_choice_reprompts_the_same_question(ctx: CtxFactory, bad: str) -> None:
    # "፩" (an Ethiopic digit) and 5000 digits made int() raise: a crash on customer text
    chat = begin(ctx)
    decision = chat.send(bad)
    assert keys(decision) == ["errors.choose_option", ASK["category"]]
    assert decision.replies[-1].buttons  # the buttons are offered again
    assert chat.step == "category" and chat.state["answers"] == {}


def test_invalid_answer_keeps_earlier_answers(ctx: CtxFactory) -> None:
    chat = begin(ctx)
    chat.press(pay("category", "billing"))
    chat.send(DESCRIPTION)
    chat.send("ORD-1")
    chat.send("very very bad")
    assert chat.step == "severity"
    assert chat.state["answers"] == {
        "category": "billing",
        "description": DESCRIPTION,
        "reference": "ORD-1",
    }


def test_three_invalid_answers_in_a_row_escalate(ctx: CtxFactory, options: FlowOptions) -> None:
    assert options.max_failed_answers == 3
    chat = begin(ctx)
    chat.send("banana")
    chat.send("apple")
    decision = chat.send("cherry")
    assert keys(decision) == ["escalation.after_failures"]
    assert only(decision, Escalate).reason == "failed_answers"
    assert chat.state == {}


def test_failures_are_counted_per_run_of_invalid_answers(ctx: CtxFactory) -> None:
    chat = begin(ctx)
    chat.send("banana")
    chat.send("apple")
    chat.press(pay("category", "other"))  # a valid answer resets the count
    chat.send("short")
    decision = chat.send("tiny")
    assert keys(decision) == ["errors.too_short", ASK["description"]]
    assert decision.actions == ()


def test_max_failed_answers_comes_from_the_options(ctx: CtxFactory) -> None:
    chat = Chat(ctx(max_failed_answers=1))
    chat.send("complaint")
    decision = chat.send("banana")
    assert keys(decision) == ["escalation.after_failures"]
    assert kinds(decision) == ["Escalate"]


@pytest.mark.parametrize(
    "stale",
    [
        pay("category", "delivery"),  # an earlier question of this flow
        pay("severity", "high"),  # a later one
        pay("description", "x"),
        button_payload("csat", "rating", "5"),  # another flow
    ],
)
def test_stale_button_reprompts_without_advancing(ctx: CtxFactory, stale: str) -> None:
    chat = begin(ctx)
    chat.press(pay("category", "product"))
    decision = chat.press(stale)
    assert keys(decision) == ["errors.stale_button", ASK["description"]]
    assert chat.step == "description"
    assert chat.state["answers"] == {"category": "product"}


def test_stale_buttons_do_not_count_as_failed_answers(ctx: CtxFactory) -> None:
    # regression: three taps on an old keyboard used to hand the customer to a human
    chat = begin(ctx)
    chat.press(pay("category", "product"))
    for _ in range(5):
        decision = chat.press(pay("category", "delivery"))
        assert keys(decision) == ["errors.stale_button", ASK["description"]]
    assert chat.state.get("failures", 0) == 0 and chat.step == "description"


def test_button_of_the_current_step_with_an_unknown_value_is_refused(ctx: CtxFactory) -> None:
    chat = begin(ctx)
    decision = chat.press(pay("category", "weather"))
    assert keys(decision) == ["errors.stale_button", ASK["category"]]
    assert chat.step == "category"


# --- commands inside the flow ---------------------------------------------------------------


def test_complaint_command_inside_the_flow_reprompts_and_keeps_answers(ctx: CtxFactory) -> None:
    chat = begin(ctx)
    chat.press(pay("category", "product"))
    decision = chat.send("complaint")
    assert keys(decision) == [ASK["description"]]
    assert chat.state["answers"] == {"category": "product"}


def test_greeting_inside_the_flow_is_an_answer(ctx: CtxFactory) -> None:
    chat = begin(ctx)
    decision = chat.send("hallo")
    assert keys(decision) == ["errors.choose_option", ASK["category"]]
    assert chat.flow == "complaint"


@pytest.mark.parametrize("word", ["menu", "Menü", "Hauptmenü", "/menu"])
def test_menu_inside_the_flow_leaves_it(ctx: CtxFactory, word: str) -> None:
    # regression: "menu" typed in a flow was taken as an answer, though help says
    # it works at any time
    chat = begin(ctx)
    decision = chat.send(word)
    assert keys(decision) == ["menu.greeting"]
    assert chat.state == {}


@pytest.mark.parametrize("word", ["cancel", "abbrechen"])
def test_cancel_inside_the_flow(ctx: CtxFactory, word: str) -> None:
    chat = begin(ctx)
    chat.press(pay("category", "product"))
    decision = chat.send(word)
    assert keys(decision) == ["common.cancelled"]
    assert decision.actions == ()
    assert chat.state == {}
