"""The threshold in the dialogue: answer, not sure, two misses → a person; follow-ups."""

from __future__ import annotations

from dataclasses import replace

from flows.actions import Escalate, LogSelfService
from flows.dialogue import decide
from flows.knowledge import Matcher
from flows.model import UserInput
from flows.options import FlowOptions, KnowledgeEntry, LocalizedText
from tests.flows.conftest import CtxFactory
from tests.flows.support import Chat, keys, kinds, only, payloads


def with_threshold(options: FlowOptions, threshold: float) -> dict[str, object]:
    return {"knowledge_base": options.knowledge_base.model_copy(update={"threshold": threshold})}


def test_the_threshold_decides_between_answer_and_not_sure(
    ctx: CtxFactory, options: FlowOptions
) -> None:
    text = "Wann habt ihr offen"
    low = decide("bot", {}, UserInput(text), ctx("de", **with_threshold(options, 0.4)))
    assert keys(low) == ["selfservice.answer"]
    confidence = low.replies[0].meta["confidence"]
    assert 0.4 <= confidence < 1.0
    high = decide("bot", {}, UserInput(text), ctx("de", **with_threshold(options, 0.99)))
    assert keys(high) == ["selfservice.not_sure"]
    assert payloads(high) == ["c:human", "c:complaint", "c:menu"]
    log = only(high, LogSelfService)
    # the miss is recorded with the entry the matcher leaned to, for `cicbot kb gaps`
    assert (log.answered, log.entry_id) == (False, "opening_hours")
    assert log.confidence == confidence or abs(log.confidence - confidence) < 1e-3


def test_two_misses_in_a_row_escalate_at_a_strict_threshold(
    ctx: CtxFactory, options: FlowOptions
) -> None:
    chat = Chat(ctx("en", **with_threshold(options, 0.99)))
    first = chat.send("how long does delivery take to Austria?")
    assert keys(first) == ["selfservice.not_sure"] and chat.state == {"misses": 1}
    second = chat.send("when are you open on holidays?")
    assert keys(second) == ["selfservice.escalate_after_misses"]
    assert kinds(second) == ["LogSelfService", "Escalate"]
    assert only(second, Escalate).reason == "selfservice_misses"


def test_an_answer_between_two_misses_resets_the_count(ctx: CtxFactory) -> None:
    chat = Chat(ctx("en"))
    assert keys(chat.send("my cat is sick")) == ["selfservice.not_sure"]
    answer = chat.send("how long does shipping take?")
    assert keys(answer) == ["selfservice.answer"]
    assert answer.replies[0].meta["kb_entry"] == "shipping_time"
    assert keys(chat.send("tell me a joke")) == ["selfservice.not_sure"]


def test_an_entry_with_a_follow_up_offers_it(ctx: CtxFactory) -> None:
    entries = [
        KnowledgeEntry(
            id="damaged",
            answer=LocalizedText(de="Das tut uns leid.", en="We are sorry."),
            examples=["my order arrived damaged", "the item is damaged", "parcel was damaged"],
            flow="complaint",
        ),
        KnowledgeEntry(
            id="hours",
            answer=LocalizedText(de="8-18 Uhr", en="8 am to 6 pm"),
            examples=["opening hours", "when are you open"],
            link="https://example.com/hours",
        ),
    ]
    c = replace(ctx("en"), matcher=Matcher(entries))
    decision = decide("bot", {}, UserInput("the item is damaged"), c)
    assert keys(decision) == ["selfservice.answer"]  # sure enough: not the complaint words
    assert payloads(decision) == ["c:complaint"]
    hours = decide("bot", {}, UserInput("when are you open"), c)
    assert hours.replies[0].text == "8 am to 6 pm\nhttps://example.com/hours"
    assert payloads(hours) == []


def test_complaint_words_beat_a_lukewarm_answer(ctx: CtxFactory) -> None:
    decision = decide("bot", {}, UserInput("Die Lieferung kam kaputt an"), ctx("de"))
    assert decision.state["flow"] == "complaint"
