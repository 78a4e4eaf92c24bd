"""Helpers for driving the pure dialogue: a chat that keeps state between turns."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from flows.actions import SetLocale
from flows.dialogue import decide
from flows.model import Context, Decision, Flow, UserInput, start

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)

A = TypeVar("A")


def keys(decision: Decision) -> list[str]:
    return [r.key for r in decision.replies]


def payloads(decision: Decision, index: int = -1) -> list[str]:
    return [b.payload for b in decision.replies[index].buttons]


def only(decision: Decision, kind: type[A]) -> A:
    """The single action of that type (fails if there are none or several)."""
    found = [a for a in decision.actions if isinstance(a, kind)]
    assert len(found) == 1, f"expected one {kind.__name__}, got {decision.actions}"
    return found[0]


def kinds(decision: Decision) -> list[str]:
    return [type(a).__name__ for a in decision.actions]


class Chat:
    """One conversation through `flows.dialogue.decide`, the way the engine runs it:
    the state of each decision is fed into the next; SetLocale changes the context."""

    def __init__(self, ctx: Context, status: str = "bot", state: dict[str, Any] | None = None):
        self.ctx = ctx
        self.status = status
        self.state: dict[str, Any] = dict(state or {})
        self.last: Decision | None = None

    def send(self, text: str = "", payload: str | None = None, attachments: int = 0) -> Decision:
        inp = UserInput(text=text, payload=payload, attachments=attachments)
        decision = decide(self.status, self.state, inp, self.ctx)
        self.state = decision.state
        for action in decision.actions:
            if isinstance(action, SetLocale):
                self.ctx = replace(self.ctx, locale=action.locale)
        self.last = decision
        return decision

    def press(self, payload: str) -> Decision:
        return self.send(payload=payload)

    def start(self, flow: Flow, extra: dict[str, Any] | None = None) -> Decision:
        """Start a flow the way a campaign does (not by a customer's words)."""
        decision = start(flow, self.ctx, extra)
        self.state = decision.state
        self.last = decision
        return decision

    @property
    def step(self) -> str | None:
        return self.state.get("step")

    @property
    def flow(self) -> str | None:
        return self.state.get("flow")
