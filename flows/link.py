"""Linking an email address to the customer's contact, verified by a mailed one-time code.

Two flows: `link` asks for the address, `link_code` waits for the code. Whether a code
went out, matched or died is known only after I/O (bot/conversation/linking.py), which replies
and ends `link_code`; the flows only parse and ask for the actions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flows import trust
from flows.actions import RequestLinkCode, VerifyLinkCode
from flows.model import (
    Answer,
    Context,
    Decision,
    EmailStep,
    Flow,
    Invalid,
    MenuEntry,
    Reply,
    Step,
    Trigger,
    UserInput,
)

NAME, CODE_NAME = "link", "link_code"
CODE_LENGTH = 6
CODE_RE = re.compile(rf"[0-9]{{{CODE_LENGTH}}}", re.ASCII)


@dataclass(frozen=True)
class CodeStep(Step):
    def parse(self, inp: UserInput, ctx: Context) -> Answer:
        # "123 456" and "123-456" as typed from a mail
        digits = re.sub(r"[\s-]+", "", inp.text)
        if not CODE_RE.fullmatch(digits):
            raise Invalid("link.code_format")
        return digits


def code_state() -> dict[str, Any]:
    """The state of a conversation waiting for a code (what `start` would build)."""
    return {"flow": CODE_NAME, "step": "code", "answers": {}, "failures": 0, "extra": {}}


def _requested(answers: Mapping[str, Answer], ctx: Context, extra: Mapping[str, Any]) -> Decision:
    email = answers["email"]
    assert email is not None
    # the action replies (code sent, or too many requests) and may end the flow
    return Decision(code_state(), (), (RequestLinkCode(email),))


def _entered(answers: Mapping[str, Answer], ctx: Context, extra: Mapping[str, Any]) -> Decision:
    code = answers["code"]
    assert code is not None
    # still waiting: a wrong code may be retried; the action ends the flow otherwise
    return Decision(code_state(), (), (VerifyLinkCode(code),))


def _gate(state: Mapping[str, Any], ctx: Context) -> Decision | None:
    if not ctx.options.email_linking:  # no mail could carry the code
        return Decision(dict(state), (Reply("link.unavailable", ctx.t("link.unavailable")),))
    if not trust.may_link(ctx):
        return Decision({}, (Reply("trust.link", ctx.t("trust.link")),))
    return None


WORDS = (
    "link",
    "link email",
    "link my email",
    "link e-mail",
    "link my e-mail",
    "link email address",
    "link my email address",
    "link e-mail address",
    "link my e-mail address",
    "e-mail verknüpfen",
    "email verknüpfen",
    "meine e-mail verknüpfen",
    "meine email verknüpfen",
    "e-mail-adresse verknüpfen",
    "e-mail adresse verknüpfen",
)

FLOW = Flow(
    NAME,
    (EmailStep("email", "link.ask_email"),),
    _requested,
    # offered only where a code can be mailed and the sender is vouched for, not by email;
    # last in the menu, so that the numbers of the others stay
    trigger=Trigger(
        menu=MenuEntry("menu.link", order=100, shown=trust.may_link),
        words=WORDS,
        help="help.link",
        gate=_gate,
    ),
)
CODE_FLOW = Flow(CODE_NAME, (CodeStep("code", "link.ask_code"),), _entered)
