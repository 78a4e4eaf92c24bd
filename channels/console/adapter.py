"""The terminal chat: lines on stdin are customer messages, replies go to stdout.

Scriptable (`cicbot chat --user anna < answers.txt`): each line is handled and its
replies delivered before the next line is read. Choices print as a numbered list;
typing a number presses that button.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import TextIO

from bot.channel import ChannelAdapter, SendResult
from bot.channel.host import ChannelHost
from bot.channel.messages import Choice, InboundMessage, OutboundMessage

CHANNEL = "console"


class ConsoleChannel(ChannelAdapter):
    name = CHANNEL

    def __init__(self, host: ChannelHost, out: TextIO | None = None) -> None:
        super().__init__(host)
        self.out = out or sys.stdout
        self.last_choices: dict[str, tuple[Choice, ...]] = {}

    async def send(self, message: OutboundMessage) -> SendResult:
        lines = [f"bot: {message.text}"]
        lines += [f"  {i}) {c.label}" for i, c in enumerate(message.choices, 1)]
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        if message.choices:
            self.last_choices[message.recipient_id] = message.choices
        return SendResult(platform_message_id=f"console-{message.outbox_id}")

    async def chat(self, user: str, locale: str | None, stdin: TextIO) -> None:
        """The terminal chat (bot.channel.Terminal): one local user, so each line is handled
        at once (`handle_now`) and its replies delivered before the next line is read."""
        interactive = stdin.isatty()
        loop = asyncio.get_running_loop()
        await self.host.deliver_pending(recipient=user)  # what was said while they were away
        while True:
            if interactive:
                self.out.write("you: ")
                self.out.flush()
            line = await loop.run_in_executor(None, stdin.readline)
            if not line:
                break
            if not interactive:
                self.out.write(f"you: {line.rstrip()}\n")
            await self.host.handle_now(self.to_inbound(user, line, locale))
            # this user's replies only: the channel is shared by every terminal customer, and
            # an agent's answer to another one must wait for that one's chat (issue 20, #10)
            await self.host.deliver_pending(recipient=user)

    def to_inbound(self, user: str, line: str, locale: str | None) -> InboundMessage:
        payload = None
        # a number presses a button of the replies to the previous line only: once answered,
        # a list is stale ("2" typed to an agent must not press an old menu's button)
        choices = self.last_choices.pop(user, ())
        text = line.strip()
        # isdecimal, not isdigit: int() refuses "²" and "①"; and no 5000-digit numbers
        if text.isdecimal() and len(text) <= 9 and 1 <= int(text) <= len(choices):
            payload = choices[int(text) - 1].payload
        return InboundMessage(
            channel=CHANNEL,
            sender_id=user,
            platform_message_id=str(uuid.uuid4()),
            thread_key=user,
            text=line.rstrip("\n"),
            payload=payload,
            sender_name=user,
            locale_hint=locale,
            kind="button" if payload else "message",
        )


def create(host: ChannelHost) -> ConsoleChannel:
    return ConsoleChannel(host)
