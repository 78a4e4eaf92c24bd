"""flows/trust.py: what an unverified sender may not do, decided without I/O."""

from __future__ import annotations

from dataclasses import replace

import pytest

from flows.actions import RequestLinkCode, SetConsent, ShowCaseStatus
from flows.dialogue import decide
from flows.link import code_state
from flows.model import Context, UserInput
from flows.trust import guard, may_link
from tests.flows.conftest import CtxFactory

BOT = "bot"


@pytest.fixture
def email(ctx: CtxFactory) -> Context:
    return replace(ctx(email_linking=True), channel="email", verified=False)


@pytest.mark.parametrize("text", ["status", "status C-2026-000042", "Stand von C-2026-000042?"])
def test_no_case_details_for_an_unverified_sender(email: Context, text: str) -> None:
    d = decide(BOT, {}, UserInput(text), email)
    assert not [a for a in d.actions if isinstance(a, ShowCaseStatus)]
    assert d.replies[0].key == "trust.status"


def test_a_verified_sender_gets_them(email: Context) -> None:
    d = decide(BOT, {}, UserInput("status"), replace(email, verified=True))
    assert d.actions == (ShowCaseStatus(None),)


def test_no_opt_in_but_opt_out_always(email: Context) -> None:
    d = decide(BOT, {}, UserInput("start"), email)
    assert [r.key for r in d.replies] == ["trust.optin"] and d.state == {}
    # even when the yes comes inside the consent flow (started earlier)
    state = {"flow": "consent", "step": "agree", "answers": {}, "failures": 0, "extra": {}}
    d = decide(BOT, state, UserInput("ja"), email)
    assert not [a for a in d.actions if isinstance(a, SetConsent)]
    stop = decide(BOT, {}, UserInput("stop"), email)
    assert [a for a in stop.actions if isinstance(a, SetConsent)] == [
        SetConsent("marketing", False, "chat_optout", email.t("consent.optout_done"))
    ]


@pytest.mark.parametrize("verified", [True, False])
def test_linking_never_starts_from_email(email: Context, verified: bool) -> None:
    ctx = replace(email, verified=verified)
    d = decide(BOT, {}, UserInput("link my email"), ctx)
    assert [r.key for r in d.replies] == ["trust.link"] and d.state == {}
    assert not may_link(ctx)
    menu = decide(BOT, {}, UserInput("menu"), ctx).replies[0]
    assert "c:link" not in [b.payload for b in menu.buttons]
    # a code awaited in an email conversation (state from before) is not checked either
    d = decide(BOT, code_state(), UserInput("123456"), ctx)
    assert d.actions == () and d.state == {} and d.replies[0].key == "trust.link"


def test_a_chat_still_links(ctx: CtxFactory) -> None:
    telegram = replace(ctx(email_linking=True), channel="telegram")
    assert may_link(telegram)
    d = decide(BOT, {}, UserInput("link my email"), telegram)
    assert d.state.get("flow") == "link"
    assert guard(d, telegram) == d


def test_guard_keeps_what_is_allowed(email: Context) -> None:
    d = decide(BOT, {"flow": "link", "step": "email"}, UserInput("a@example.org"), email)
    assert not [a for a in d.actions if isinstance(a, RequestLinkCode)] and d.state == {}
