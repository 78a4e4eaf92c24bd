"""Win-back survey: reason, rating, what would bring them back, a reason-specific offer."""

from __future__ import annotations

import pytest

from flows import winback
from flows.actions import Escalate, RecordSurvey, SetLifecycle
from flows.model import button_payload
from flows.options import FlowOptions
from tests.flows.conftest import CtxFactory
from tests.flows.support import Chat, keys, kinds, only, payloads


def pay(step: str, value: str) -> str:
    return button_payload("winback", step, value)


def begin(ctx: CtxFactory, locale: str = "en", extra: dict[str, str] | None = None) -> Chat:
    chat = Chat(ctx(locale, phase="lost"))
    decision = chat.start(winback.FLOW, extra)
    assert keys(decision) == ["winback.intro", "winback.ask_reason"]
    return chat


def to_offer(chat: Chat, reason: str, rating: str = "3", comeback: str | None = None) -> Chat:
    """Answer up to the offer; reason "other" also answers the free-text question."""
    if reason == "other":
        assert keys(chat.press(pay("reason", "other"))) == ["winback.ask_reason_other"]
        assert keys(chat.send("Moved abroad")) == ["winback.ask_rating"]
    else:
        assert keys(chat.press(pay("reason", reason))) == ["winback.ask_rating"]
    assert keys(chat.send(rating)) == ["winback.ask_comeback"]
    d = chat.send(comeback) if comeback is not None else chat.press(pay("comeback", "-"))
    assert keys(d) == ["winback.offer"]
    return chat


def test_reason_buttons_are_all_reasons(ctx: CtxFactory) -> None:
    chat = begin(ctx)
    assert payloads(chat.last) == [pay("reason", r) for r in winback.REASONS]
    assert chat.last.replies[-1].buttons[0].label == "The price"


def test_reason_other_asks_for_free_text(ctx: CtxFactory) -> None:
    chat = begin(ctx)
    assert keys(chat.send("Something else")) == ["winback.ask_reason_other"]
    assert keys(chat.send("")) == ["errors.need_text", "winback.ask_reason_other"]
    assert keys(chat.send("I moved abroad")) == ["winback.ask_rating"]
    assert chat.state["answers"] == {"reason": "other", "reason_other": "I moved abroad"}


@pytest.mark.parametrize("reason", [r for r in winback.REASONS if r != "other"])
def test_other_reasons_go_straight_to_the_rating(ctx: CtxFactory, reason: str) -> None:
    chat = begin(ctx)
    assert keys(chat.press(pay("reason", reason))) == ["winback.ask_rating"]
    assert "reason_other" not in chat.state["answers"]


@pytest.mark.parametrize("locale", ["en", "de"])
@pytest.mark.parametrize("reason", winback.REASONS)
def test_offer_text_comes_from_config_per_reason(
    ctx: CtxFactory, options: FlowOptions, locale: str, reason: str
) -> None:
    chat = to_offer(begin(ctx, locale), reason)
    offer = chat.last.replies[-1]
    expected = options.winback.offers[reason].text.get(locale)  # type: ignore[index]
    assert expected in offer.text
    others = {o.text.get(locale) for r, o in options.winback.offers.items() if r != reason}
    assert not any(text in offer.text for text in others)
    assert payloads(chat.last) == [pay("offer", "yes"), pay("offer", "no")]


def test_rating_is_validated(ctx: CtxFactory) -> None:
    chat = begin(ctx)
    chat.press(pay("reason", "price"))
    assert keys(chat.send("7")) == ["errors.rating", "winback.ask_rating"]
    assert keys(chat.send("great")) == ["errors.rating", "winback.ask_rating"]
    assert keys(chat.send("⭐⭐")) == ["winback.ask_comeback"]
    assert chat.state["answers"]["rating"] == "2"


@pytest.mark.parametrize("reason", ["price", "no_longer_needed", "other"])
def test_accepting_the_offer_marks_at_risk_and_escalates(ctx: CtxFactory, reason: str) -> None:
    decision = to_offer(begin(ctx), reason).send("yes")
    assert keys(decision) == ["winback.offer_accepted"]
    assert kinds(decision) == ["RecordSurvey", "SetLifecycle", "Escalate"]
    assert only(decision, SetLifecycle).phase == "at_risk"
    assert only(decision, Escalate).reason == "winback_offer"


def test_no_longer_needed_and_decline_terminates(ctx: CtxFactory) -> None:
    decision = to_offer(begin(ctx), "no_longer_needed").press(pay("offer", "no"))
    assert keys(decision) == ["winback.goodbye"]
    assert kinds(decision) == ["RecordSurvey", "SetLifecycle"]
    assert only(decision, SetLifecycle).phase == "terminated"


@pytest.mark.parametrize("reason", ["price", "quality", "service", "competitor", "other"])
def test_decline_otherwise_is_lost(ctx: CtxFactory, reason: str) -> None:
    decision = to_offer(begin(ctx, "de"), reason).send("nein")
    assert keys(decision) == ["winback.thanks"]
    assert kinds(decision) == ["RecordSurvey", "SetLifecycle"]
    assert only(decision, SetLifecycle).phase == "lost"


def test_survey_record_has_all_answers(ctx: CtxFactory) -> None:
    chat = to_offer(
        begin(ctx, extra={"case_reference": "C-2026-000007"}),
        "other",
        rating="2",
        comeback="A lower price",
    )
    decision = chat.send("no")
    assert chat.state == {}
    assert only(decision, RecordSurvey) == RecordSurvey(
        "winback",
        {
            "reason": "other",
            "reason_other": "Moved abroad",
            "rating": "2",
            "comeback": "A lower price",
            "offer": "no",
        },
        "C-2026-000007",
    )


def test_skipped_comeback_is_recorded_as_none(ctx: CtxFactory) -> None:
    decision = to_offer(begin(ctx), "price", rating="5").send("yes")
    record = only(decision, RecordSurvey)
    assert record.answers == {"reason": "price", "rating": "5", "comeback": None, "offer": "yes"}
    assert record.case_reference is None


def test_stop_ends_the_survey_and_opts_out(ctx: CtxFactory) -> None:
    chat = begin(ctx)
    chat.press(pay("reason", "price"))
    decision = chat.send("stop")
    assert keys(decision) == ["consent.optout_done"]
    assert kinds(decision) == ["SetConsent"]
    assert chat.state == {}
