"""What a sender may do on their word alone (docs/email.md, "Who sent it").

A customer is who their channel says: Telegram, Slack and the web chat authenticate their
users; an email's From: is worth something only where the receiving server vouches for it
(DMARC pass, channels/email_auth.py): `Context.verified`. An unverified sender gets nothing
that reveals or changes account data: no case details, no verified links, no opt-in to
marketing (opting out always works: "stop" must never fail). And linking is never started
from the email channel at all: an address cannot vouch for another address, and a code
mailed to an address proves nothing about who asked for it from a forged one.
"""

from __future__ import annotations

from flows.actions import Action, RequestLinkCode, SetConsent, ShowCaseStatus, VerifyLinkCode
from flows.model import Context, Decision, Reply

NO_LINKING_FROM = frozenset({"email"})
LINK_FLOWS = ("link", "link_code")


def may_link(ctx: Context) -> bool:
    """Offer and start "link my email" here: a code can be mailed, the sender is vouched
    for, and the channel is not email itself."""
    return ctx.options.email_linking and ctx.verified and ctx.channel not in NO_LINKING_FROM


def refusal(action: Action, ctx: Context) -> str | None:
    """The catalog key explaining why `action` is not done for this sender; None: do it."""
    if isinstance(action, RequestLinkCode | VerifyLinkCode) and not may_link(ctx):
        return "trust.link"
    if ctx.verified:
        return None
    if isinstance(action, ShowCaseStatus):
        return "trust.status"
    if isinstance(action, SetConsent) and action.granted:
        return "trust.optin"
    return None


def guard(decision: Decision, ctx: Context) -> Decision:
    """`decision` without what this sender may not ask for, saying so instead. The one
    place that enforces the rule, whatever command, flow or free text led there."""
    keys: list[str] = []
    kept: list[Action] = []
    for action in decision.actions:
        key = refusal(action, ctx)
        if key is None:
            kept.append(action)
        elif key not in keys:
            keys.append(key)
    if not keys:
        return decision
    state = {} if decision.state.get("flow") in LINK_FLOWS else decision.state
    refused = tuple(Reply(k, ctx.t(k)) for k in keys)
    return Decision(state, refused + decision.replies, tuple(kept))
