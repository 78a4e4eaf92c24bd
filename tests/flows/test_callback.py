"""The callback flow without a database: a phone number, a window in business hours, a
confirmation, then the agents' queue (docs/architecture.md, "Add a flow")."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from flows.actions import Escalate
from flows.callback import windows
from flows.hours import BusinessHours
from flows.model import Context
from tests.flows.conftest import CtxFactory
from tests.flows.support import Chat, keys, only, payloads

BERLIN = ZoneInfo("Europe/Berlin")
HOURS = BusinessHours(weekly={d: ["08:00-18:00"] for d in ("mon", "tue", "wed", "thu", "fri")})
SATURDAY = datetime(2026, 12, 5, 7, 35, tzinfo=BERLIN)


def at(ctx: Context, now: datetime) -> Context:
    return replace(ctx, now=now, hours=HOURS)


def test_windows_are_the_next_half_days_in_business_hours() -> None:
    got = [(s.strftime("%a %H"), e.strftime("%H")) for s, e in windows(HOURS, SATURDAY)]
    assert got == [("Mon 08", "12"), ("Mon 12", "18"), ("Tue 08", "12"), ("Tue 12", "18")]
    # a window that has begun is still offered until it ends
    tuesday = datetime(2026, 12, 8, 13, 0, tzinfo=BERLIN)
    assert windows(HOURS, tuesday)[0][0] == datetime(2026, 12, 8, 12, 0, tzinfo=BERLIN)
    assert windows(BusinessHours(weekly={}), SATURDAY) == []


@pytest.mark.parametrize(("locale", "word"), [("de", "Rückruf"), ("en", "call me back")])
def test_by_words_and_buttons_into_the_queue(ctx: CtxFactory, locale: str, word: str) -> None:
    chat = Chat(at(ctx(locale), SATURDAY))
    assert keys(chat.send(word)) == ["callback.intro", "callback.ask_phone"]
    assert keys(chat.send("+49 (30) 1234-567")) == ["callback.ask_when"]
    offered = payloads(chat.last)
    assert offered[0] == "f:callback:when:202612070800-1200" and len(offered) == 4
    confirm = chat.press(offered[1])
    assert keys(confirm) == ["callback.confirm"]
    shown = "Mo 07.12., 12:00–18:00" if locale == "de" else "Mon 07/12, 12:00–18:00"
    assert shown in confirm.replies[0].text and "+49301234567" in confirm.replies[0].text
    done = chat.send("ja" if locale == "de" else "yes")
    assert keys(done) == ["callback.confirmed"] and chat.state == {}
    assert shown in done.replies[0].text
    assert only(done, Escalate) == Escalate("callback", 20)


def test_menu_entry_typed_window_number_and_no(ctx: CtxFactory) -> None:
    chat = Chat(at(ctx("en"), SATURDAY))
    menu = chat.send("menu")
    assert "c:callback" in payloads(menu)
    assert keys(chat.press("c:callback"))[-1] == "callback.ask_phone"
    chat.send("030 1234567")
    assert keys(chat.send("3")) == ["callback.confirm"]  # Tuesday morning
    assert "Tue 08/12, 08:00–12:00" in chat.last.replies[0].text  # type: ignore[union-attr]
    no = chat.send("no")
    assert keys(no) == ["callback.discarded"] and no.actions == ()


def test_a_bad_number_is_asked_again(ctx: CtxFactory) -> None:
    chat = Chat(at(ctx("de"), SATURDAY))
    chat.send("Rückruf")
    assert keys(chat.send("morgen früh")) == ["callback.phone_format", "callback.ask_phone"]
    assert keys(chat.send("12 34")) == ["callback.phone_format", "callback.ask_phone"]
    assert keys(chat.send("0301234567")) == ["callback.ask_when"]


def test_help_names_it(ctx: CtxFactory) -> None:
    c = ctx("de")
    assert c.t("callback.help") in Chat(c).send("Hilfe").replies[0].text
