"""The email-link dialogue, pure: the words that start it, the address and the code it
accepts, and the actions it asks for (the I/O is tests/bot/conversation/test_linking.py)."""

from __future__ import annotations

import pytest

from flows import link
from flows.actions import RequestLinkCode, VerifyLinkCode
from flows.commands import Command, Parsed, parse
from flows.dialogue import decide
from flows.model import UserInput
from tests.flows.conftest import CtxFactory
from tests.flows.support import Chat, keys, kinds, only, payloads


@pytest.fixture
def ctx(ctx: CtxFactory) -> CtxFactory:
    """As configured with an email channel: codes can be mailed."""
    return lambda *args, **kw: ctx(*args, **{"email_linking": True, **kw})


@pytest.mark.parametrize(
    "text",
    [
        "link my email",
        "Link email",
        "/link",
        "link my e-mail address",
        "E-Mail verknüpfen",
        "e-mail-adresse verknüpfen",
        "Meine E-Mail verknüpfen!",
    ],
)
def test_link_words_in_both_languages(text: str) -> None:
    assert parse(text, None) == Parsed(Command.FLOW, "link")


def test_link_button_payload() -> None:
    assert parse("", "c:link") == Parsed(Command.FLOW, "link")


def test_the_menu_offers_linking_last_only_when_mail_can_carry_the_code(ctx: CtxFactory) -> None:
    menu = decide("bot", {}, UserInput("menu"), ctx())
    without = ctx(email_linking=False)
    # linking adds exactly one button, the last: the numbers of the others stay
    assert payloads(menu) == [*payloads(decide("bot", {}, UserInput("menu"), without)), "c:link"]
    assert "link my email" in decide("bot", {}, UserInput("help"), ctx()).replies[0].text
    assert "link my email" not in decide("bot", {}, UserInput("help"), without).replies[0].text
    for inp in (UserInput("link my email"), UserInput(payload="c:link")):
        refused = decide("bot", {"flow": "complaint", "step": "x"}, inp, without)
        assert keys(refused) == ["link.unavailable"] and not refused.actions
        assert refused.state == {"flow": "complaint", "step": "x"}  # nothing else changes


@pytest.mark.parametrize("locale", ["de", "en"])
def test_happy_path_asks_for_the_address_then_the_code(ctx: CtxFactory, locale: str) -> None:
    chat = Chat(ctx(locale))
    first = chat.send("E-Mail verknüpfen" if locale == "de" else "link my email")
    assert keys(first) == ["link.ask_email"]
    assert first.actions == ()
    sent = chat.send("  Anna@Example.COM ")
    # the address is lower-cased; whether a code went out is said by the action
    assert only(sent, RequestLinkCode).email == "anna@example.com"
    assert sent.replies == ()
    assert (chat.flow, chat.step) == (link.CODE_NAME, "code")
    entered = chat.send("123 456")
    assert only(entered, VerifyLinkCode).code == "123456"
    assert entered.replies == ()
    # still waiting: the action ends the flow on a match or a dead code
    assert chat.flow == link.CODE_NAME


@pytest.mark.parametrize("bad", ["anna", "anna@", "@example.com", "anna@example", "a b@c.de"])
def test_an_invalid_address_is_explained_and_asked_again(ctx: CtxFactory, bad: str) -> None:
    chat = Chat(ctx())
    chat.send("link email")
    d = chat.send(bad)
    assert keys(d) == ["errors.email", "link.ask_email"]
    assert d.actions == ()
    assert chat.step == "email"


@pytest.mark.parametrize("bad", ["12345", "1234567", "abcdef", "١٢٣٤٥٦", "12345x", ""])
def test_a_malformed_code_is_explained_not_checked(ctx: CtxFactory, bad: str) -> None:
    chat = Chat(ctx())
    chat.send("link email")
    chat.send("anna@example.com")
    d = chat.send(bad)
    assert keys(d) == ["link.code_format", "link.ask_code"]
    assert d.actions == ()  # no attempt used up by a typo


def test_dashes_and_spaces_in_a_code_are_ignored(ctx: CtxFactory) -> None:
    chat = Chat(ctx())
    chat.send("link email")
    chat.send("anna@example.com")
    assert only(chat.send("123-456"), VerifyLinkCode).code == "123456"


def test_asking_again_while_a_code_is_awaited_requests_a_new_one(ctx: CtxFactory) -> None:
    chat = Chat(ctx())
    chat.send("link email")
    chat.send("anna@example.com")
    again = chat.send("link my email")
    assert keys(again) == ["link.ask_email"]
    assert chat.flow == link.NAME
    assert kinds(chat.send("other@example.com")) == ["RequestLinkCode"]


def test_asking_again_at_the_address_step_repeats_the_question(ctx: CtxFactory) -> None:
    chat = Chat(ctx())
    chat.send("link email")
    assert keys(chat.send("link email")) == ["link.ask_email"]
    assert chat.step == "email"


def test_cancel_ends_the_link_without_any_action(ctx: CtxFactory) -> None:
    chat = Chat(ctx())
    chat.send("link email")
    chat.send("anna@example.com")
    d = chat.send("cancel")
    assert d.state == {} and d.actions == ()
    assert keys(d) == ["common.cancelled"]


def test_help_while_waiting_repeats_the_code_prompt(ctx: CtxFactory) -> None:
    chat = Chat(ctx())
    chat.send("link email")
    chat.send("anna@example.com")
    assert keys(chat.send("help")) == ["help.text", "link.ask_code"]
    assert chat.flow == link.CODE_NAME


def test_status_while_waiting_shows_only_this_identitys_cases(ctx: CtxFactory) -> None:
    chat = Chat(ctx())
    chat.send("link email")
    chat.send("anna@example.com")
    d = chat.send("status")
    # the action shows the asking identity's own contact's cases (bot/conversation/actions.py)
    assert kinds(d) == ["ShowCaseStatus"]
    assert chat.flow == link.CODE_NAME


def test_while_queued_link_is_not_started(ctx: CtxFactory) -> None:
    chat = Chat(ctx(), status="queued")
    d = chat.send("link email")
    assert d.actions == ()
    assert keys(d) == ["escalation.already_queued"]


def test_prompts_exist_in_both_languages(ctx: CtxFactory) -> None:
    for locale in ("de", "en"):
        c = ctx(locale)
        for key in ("link.ask_email", "link.ask_code", "link.code_format"):
            assert c.t(key) and "{" not in c.t(key)
        mail = c.t("link.mail", code="654321", company="ACME", minutes=15)
        assert "654321" in mail and "15" in mail and "ACME" in mail
