"""Satisfaction survey: a rating from 1 to 5 and an optional comment."""

from __future__ import annotations

import pytest

from flows import csat
from flows.actions import Escalate, RecordSurvey
from flows.model import button_payload
from tests.flows.conftest import CtxFactory
from tests.flows.support import Chat, keys, kinds, only, payloads

CASE = "C-2026-000042"


def pay(step: str, value: str) -> str:
    return button_payload("csat", step, value)


def begin(ctx: CtxFactory, locale: str = "en") -> Chat:
    chat = Chat(ctx(locale))
    decision = chat.start(csat.FLOW, {"case_reference": CASE})
    assert keys(decision) == ["csat.intro", "csat.ask_rating"]
    return chat


def test_rating_buttons_one_to_five(ctx: CtxFactory) -> None:
    chat = begin(ctx)
    assert payloads(chat.last) == [pay("rating", str(i)) for i in range(1, 6)]


@pytest.mark.parametrize("bad", ["0", "6", "abc", "-1", "3.5", "10", "", "⭐" * 6, "²⁰"])
def test_invalid_ratings_are_refused(ctx: CtxFactory, bad: str) -> None:
    chat = begin(ctx)
    decision = chat.send(bad)
    assert keys(decision) == ["errors.rating", "csat.ask_rating"]
    assert chat.step == "rating" and chat.state["answers"] == {}


@pytest.mark.parametrize(
    ("typed", "value"),
    [("5", "5"), (" 4 ", "4"), ("1", "1"), ("⭐⭐⭐", "3"), ("⭐️⭐️", "2"), ("⭐ ⭐ ⭐ ⭐", "4")],
)
def test_valid_ratings_are_accepted(ctx: CtxFactory, typed: str, value: str) -> None:
    chat = begin(ctx)
    assert keys(chat.send(typed)) == ["csat.ask_comment"]
    assert chat.state["answers"] == {"rating": value}


def test_rating_by_button(ctx: CtxFactory) -> None:
    chat = begin(ctx)
    assert keys(chat.press(pay("rating", "4"))) == ["csat.ask_comment"]
    assert chat.state["answers"] == {"rating": "4"}


def test_comment_is_optional_by_button(ctx: CtxFactory) -> None:
    chat = begin(ctx)
    chat.send("4")
    assert payloads(chat.last) == [pay("comment", "-")]
    decision = chat.press(pay("comment", "-"))
    assert keys(decision) == ["csat.thanks"]
    assert only(decision, RecordSurvey) == RecordSurvey(
        "csat", {"rating": "4", "comment": None}, CASE
    )
    assert chat.state == {}


@pytest.mark.parametrize("skip", ["skip", "überspringen", "-"])
def test_comment_is_optional_by_typing(ctx: CtxFactory, skip: str) -> None:
    chat = begin(ctx, "de")
    chat.send("5")
    decision = chat.send(skip)
    assert only(decision, RecordSurvey).answers == {"rating": "5", "comment": None}


def test_comment_is_recorded(ctx: CtxFactory) -> None:
    chat = begin(ctx)
    chat.send("5")
    decision = chat.send("Quick and friendly, thank you!")
    assert keys(decision) == ["csat.thanks"]
    assert kinds(decision) == ["RecordSurvey"]
    assert only(decision, RecordSurvey) == RecordSurvey(
        "csat", {"rating": "5", "comment": "Quick and friendly, thank you!"}, CASE
    )


@pytest.mark.parametrize("rating", ["1", "2"])
def test_low_rating_escalates(ctx: CtxFactory, rating: str) -> None:
    chat = begin(ctx)
    chat.send(rating)
    decision = chat.send("skip")
    assert keys(decision) == ["csat.sorry"]
    assert kinds(decision) == ["RecordSurvey", "Escalate"]
    assert only(decision, Escalate).reason == "low_csat"
    assert only(decision, RecordSurvey).answers["rating"] == rating


@pytest.mark.parametrize("rating", ["3", "4", "5"])
def test_other_ratings_do_not_escalate(ctx: CtxFactory, rating: str) -> None:
    chat = begin(ctx)
    chat.send(rating)
    decision = chat.send("skip")
    assert keys(decision) == ["csat.thanks"]
    assert kinds(decision) == ["RecordSurvey"]


def test_german_texts(ctx: CtxFactory) -> None:
    chat = begin(ctx, "de")
    assert chat.last.replies[-1].text.startswith("Wie zufrieden")
    assert chat.send("abc").replies[0].text.startswith("Bitte geben Sie eine Zahl")
