"""The abandoned-flow reminder: re-asks the open question, once per flow instance."""

from __future__ import annotations

from flows import csat
from flows.actions import OpenCase
from flows.model import button_payload, start
from flows.reminder import REMINDED, current_prompt, remind
from tests.flows.conftest import CtxFactory
from tests.flows.support import Chat, keys, only, payloads


def half_way(ctx: CtxFactory, locale: str = "en") -> Chat:
    """A complaint with its category and description given, waiting for the reference."""
    chat = Chat(ctx(locale))
    chat.send("complaint")
    chat.press(button_payload("complaint", "category", "delivery"))
    chat.send("The parcel arrived soaking wet.")
    assert chat.state["step"] == "reference"
    return chat


def test_the_current_prompt_is_the_question_as_it_was_asked(ctx: CtxFactory) -> None:
    chat = half_way(ctx)
    assert chat.last is not None
    again = current_prompt(chat.state, chat.ctx)
    assert again == chat.last.replies[-1:]  # same text, same buttons ("skip")
    assert [r.key for r in again] == ["complaint.ask_reference"]


def test_the_prompt_of_a_confirmation_shows_the_answers_so_far(ctx: CtxFactory) -> None:
    chat = half_way(ctx)
    chat.send("skip")
    chat.press(button_payload("complaint", "severity", "high"))
    chat.press(
        button_payload("complaint", "resolution", chat.ctx.options.complaint.resolutions[0].id)
    )
    (ask,) = current_prompt(chat.state, chat.ctx)
    assert ask.key == "complaint.confirm" and "soaking wet" in ask.text
    assert [b.payload for b in ask.buttons] == [
        button_payload("complaint", "confirm", "yes"),
        button_payload("complaint", "confirm", "no"),
    ]


def test_remind_says_why_then_re_asks_and_marks_the_flow(ctx: CtxFactory) -> None:
    chat = half_way(ctx, "de")
    decision = remind(chat.state, chat.ctx)
    assert decision is not None
    assert keys(decision) == ["reminder.intro", "complaint.ask_reference"]
    assert decision.replies[0].text == chat.ctx.t("reminder.intro")
    assert "neulich" in decision.replies[0].text  # German, the customer's language
    assert decision.state == {**chat.state, REMINDED: True}
    assert decision.actions == ()
    assert remind(decision.state, chat.ctx) is None  # never twice for the same flow


def test_a_reminded_flow_continues_normally_and_a_new_one_can_be_reminded(
    ctx: CtxFactory,
) -> None:
    chat = half_way(ctx)
    decision = remind(chat.state, chat.ctx)
    assert decision is not None
    chat.state = decision.state
    chat.send("ORDER-123")  # the answer to the re-asked question
    assert chat.state["step"] == "severity" and chat.state[REMINDED]
    assert remind(chat.state, chat.ctx) is None  # still the same flow instance
    chat.press(button_payload("complaint", "severity", "low"))
    chat.press(
        button_payload("complaint", "resolution", chat.ctx.options.complaint.resolutions[0].id)
    )
    done = chat.press(button_payload("complaint", "confirm", "yes"))
    assert only(done, OpenCase).order_reference == "ORDER-123"
    assert chat.state == {}
    chat.send("complaint")  # a new flow: a new instance, which may be reminded
    assert remind(chat.state, chat.ctx) is not None


def test_nothing_to_remind_of(ctx: CtxFactory) -> None:
    c = ctx()
    assert remind({}, c) is None
    assert remind({"misses": 1}, c) is None  # self-service, no flow
    assert remind({"flow": "gone", "step": "x"}, c) is None  # a flow no longer known
    assert remind({"flow": "csat", "step": "gone", "answers": {}}, c) is None
    assert current_prompt({"flow": "csat", "step": "rating", "answers": "junk"}, c)


def test_a_survey_half_way_gets_its_rating_buttons_again(ctx: CtxFactory) -> None:
    chat = Chat(ctx())
    chat.state = start(csat.FLOW, chat.ctx, {"case_reference": "C-2026-000042"}).state
    chat.send("4")
    assert chat.state["step"] == "comment"
    decision = remind(chat.state, chat.ctx)
    assert decision is not None
    assert keys(decision) == ["reminder.intro", "csat.ask_comment"]
    assert payloads(decision) == [button_payload("csat", "comment", "-")]  # "skip"
