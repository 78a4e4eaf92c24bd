"""The web chat end to end: a real uvicorn server, real HTTP and real WebSockets,
on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import subprocess
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection

from bot.channel.messages import InboundMessage
from bot.runtime import Runtime
from storage.models import Case, Direction, OutboxMessage, OutboxStatus, Touchpoint
from tests.channels.webchat.helpers import new_session, open_socket
from tests.conftest import make_settings
from tests.server import serve

TIMEOUT = 10.0  # any expected frame arrives well within this
QUIET = 0.4  # how long "nothing more arrives" is watched
CASE_REF = re.compile(r"C-\d{4}-\d{6}")


@pytest.fixture
async def server(db_url: str) -> AsyncIterator[tuple[str, Runtime]]:
    async with serve(make_settings(db_url)) as (base, runtime):
        yield base, runtime


def mid() -> str:
    return str(uuid.uuid4())


class Chat:
    """A WebSocket client speaking the web chat protocol; every receive has a timeout."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            raw = await self.ws.recv()
        assert isinstance(raw, str), raw
        frame: dict[str, Any] = json.loads(raw)
        return frame

    async def history(self) -> list[dict[str, Any]]:
        frame = await self.recv()
        assert frame["type"] == "history", frame
        messages: list[dict[str, Any]] = frame["messages"]
        return messages

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def exchange(
        self, frame: dict[str, Any], replies: int
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Send a frame; collect its ack and `replies` message frames, in whatever order."""
        await self.send(frame)
        ack: dict[str, Any] | None = None
        messages: list[dict[str, Any]] = []
        while ack is None or len(messages) < replies:
            got = await self.recv()
            if got["type"] == "ack":
                assert ack is None and got["id"] == frame["id"], got
                ack = got
            elif got["type"] == "message":
                messages.append(got)
            else:
                raise AssertionError(f"unexpected frame {got}")
        assert len(messages) == replies, messages
        return ack, messages

    async def say(self, text: str, replies: int = 1) -> list[dict[str, Any]]:
        ack, messages = await self.exchange({"type": "message", "id": mid(), "text": text}, replies)
        assert ack["duplicate"] is False
        return messages

    async def press(
        self, message: dict[str, Any], label: str, replies: int = 1
    ) -> list[dict[str, Any]]:
        """Press the button labelled `label` of a received message, as the page does."""
        payload = payload_of(message, label)
        frame = {"type": "button", "id": mid(), "payload": payload, "label": label}
        ack, messages = await self.exchange(frame, replies)
        assert ack["duplicate"] is False
        return messages

    async def error(self, frame: dict[str, Any] | str | bytes) -> str:
        await self.send(frame)
        got = await self.recv()
        assert got["type"] == "error", got
        assert isinstance(got["error"], str) and got["error"]
        return got["error"]

    async def assert_quiet(self, seconds: float = QUIET) -> None:
        try:
            async with asyncio.timeout(seconds):
                extra = await self.ws.recv()
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame: {extra!r}")


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        for _ in itertools.count():
            if await check():
                return
            await asyncio.sleep(0.02)


def payload_of(message: dict[str, Any], label: str) -> str:
    for choice in message["choices"]:
        if choice["label"] == label:
            payload: str = choice["payload"]
            return payload
    raise AssertionError(f"no choice {label!r} in {message['choices']}")


def labels(message: dict[str, Any]) -> list[str]:
    return [c["label"] for c in message["choices"]]


async def connect(base: str, token: str | None = None, **params: Any) -> Chat:
    """A chat as the page opens it: the visitor `token` (a new visitor if None)."""
    return Chat(await open_socket(base, token, **params))


async def walk_complaint(chat: Chat) -> list[tuple[str, str]]:
    """Greeting, then a whole complaint with buttons; returns the transcript as
    (direction, text) pairs, the customer's button presses as their labels."""
    log: list[tuple[str, str]] = []

    def record(direction: str, *items: str | dict[str, Any]) -> None:
        for item in items:
            log.append((direction, item if isinstance(item, str) else item["text"]))

    [greeting] = await chat.say("hallo")
    record("in", "hallo")
    record("out", greeting)
    assert greeting["text"].startswith("Hallo")
    assert "Wie kann ich Ihnen helfen?" in greeting["text"]
    # the built-in entries, then the flows' own (flows/registry.py): callback, ...
    assert len(greeting["choices"]) >= 5 and labels(greeting)[4] == "Sprache / Language"
    assert labels(greeting)[1] == "Beschwerde einreichen"

    intro, category = await chat.press(greeting, "Beschwerde einreichen", replies=2)
    record("in", "Beschwerde einreichen")
    record("out", intro, category)
    assert "Beschwerde auf" in intro["text"] and not intro["choices"]
    assert category["text"] == "Worum geht es bei Ihrer Beschwerde?"
    assert labels(category) == ["Lieferung", "Produktmangel", "Rechnung", "Service", "Sonstiges"]

    [describe] = await chat.press(category, "Lieferung")
    record("in", "Lieferung")
    record("out", describe)
    assert (
        describe["text"] == "Bitte beschreiben Sie, was passiert ist." and not describe["choices"]
    )

    description = "Das Paket kam zwei Wochen zu spät und war nass."
    [reference] = await chat.say(description)
    record("in", description)
    record("out", reference)
    assert "Bestell- oder Rechnungsnummer" in reference["text"]

    [severity] = await chat.press(reference, "Überspringen")
    record("in", "Überspringen")
    record("out", severity)
    assert severity["text"] == "Wie schwer wiegt das Problem für Sie?"

    [resolution] = await chat.press(severity, "Ärgerlich")
    record("in", "Ärgerlich")
    record("out", resolution)
    assert resolution["text"] == "Was wünschen Sie sich von uns?"

    [confirm] = await chat.press(resolution, "Erstattung")
    record("in", "Erstattung")
    record("out", confirm)
    for part in ("Thema: Lieferung", description, "Schwere: Ärgerlich", "Lösung: Erstattung"):
        assert part in confirm["text"]
    assert labels(confirm) == ["Ja", "Nein"]

    [opened] = await chat.press(confirm, "Ja")
    record("in", "Ja")
    record("out", opened)
    assert CASE_REF.search(opened["text"]), opened
    assert not opened["choices"]
    return log


# --- the page -----------------------------------------------------------------------------


async def test_page_is_served(server: tuple[str, Runtime]) -> None:
    base, _ = server
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
        response = await http.get("/")
        script = await http.get("/webchat/static/chat.js")
        style = await http.get("/webchat/static/chat.css")
        missing = await http.get("/webchat/static/..%2Fwebchat.py")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<script>" not in response.text and "<style>" not in response.text
    assert "/ws/chat" in script.text
    assert script.headers["content-type"].startswith("text/javascript")
    assert style.headers["content-type"].startswith("text/css")
    for r in (script, style):
        assert r.headers["x-content-type-options"] == "nosniff"
    assert missing.status_code == 404


# --- conversations ------------------------------------------------------------------------


async def test_whole_complaint_with_buttons(server: tuple[str, Runtime]) -> None:
    base, runtime = server
    chat = await connect(base)
    try:
        assert await chat.history() == []
        transcript = await walk_complaint(chat)
        await chat.assert_quiet()
    finally:
        await chat.ws.close()
    ref = CASE_REF.search(transcript[-1][1])
    assert ref is not None
    async with runtime.sessions() as s:
        case = await s.scalar(select(Case).where(Case.reference == ref.group(0)))
    assert case is not None
    assert (case.category, case.severity, case.desired_resolution) == (
        "delivery",
        "medium",
        "refund",
    )
    assert case.order_reference is None


async def test_history_on_reconnect_in_order(server: tuple[str, Runtime]) -> None:
    base, _ = server
    visitor = await new_session(base)
    chat = await connect(base, visitor)
    try:
        assert await chat.history() == []
        transcript = await walk_complaint(chat)
    finally:
        await chat.ws.close()

    again = await connect(base, visitor)
    try:
        history = await again.history()
        assert [(h["direction"], h["text"]) for h in history] == transcript
        assert [h["at"] for h in history] == sorted(h["at"] for h in history)
        # only the newest message's buttons are offered again (it has none here)
        assert all(h["choices"] == [] for h in history)
        # and the conversation goes on where it was
        [answer] = await again.say("Öffnungszeiten")
        assert "Montag bis Freitag" in answer["text"]
    finally:
        await again.ws.close()

    stranger = await connect(base)
    try:
        assert await stranger.history() == []
    finally:
        await stranger.ws.close()


async def test_history_offers_the_open_question_buttons(server: tuple[str, Runtime]) -> None:
    base, _ = server
    visitor = await new_session(base)
    chat = await connect(base, visitor)
    try:
        await chat.history()
        [greeting] = await chat.say("hallo")
    finally:
        await chat.ws.close()
    again = await connect(base, visitor)
    try:
        history = await again.history()
        assert [h["direction"] for h in history] == ["in", "out"]
        assert history[-1]["choices"] == greeting["choices"]
        # the restored buttons work
        await again.press(history[-1], "Beschwerde einreichen", replies=2)
    finally:
        await again.ws.close()


async def test_reply_while_offline_is_in_the_history(server: tuple[str, Runtime]) -> None:
    base, runtime = server
    token = await new_session(base)
    visitor = visitor_of(runtime, token)
    msg = InboundMessage(
        channel="webchat",
        sender_id=visitor,
        platform_message_id=mid(),
        thread_key=visitor,
        text="hallo",
        locale_hint="de",
        kind="message",
    )
    result = await runtime.engine.handle(msg)
    assert len(result.outbox_ids) == 1
    # the dispatcher delivers it to nobody; it is in the history when the visitor comes
    await eventually(lambda: _outbox_sent(runtime, result.outbox_ids[0]))
    chat = await connect(base, token)
    try:
        history = await chat.history()
        assert [(h["direction"], h["text"][:6]) for h in history] == [
            ("in", "hallo"),
            ("out", "Hallo!"),
        ]
        await chat.assert_quiet()
    finally:
        await chat.ws.close()


def visitor_of(runtime: Runtime, token: str) -> str:
    visitor = runtime.channels["webchat"].sessions.visitor(token)  # type: ignore[attr-defined]
    assert isinstance(visitor, str)
    return visitor


async def _outbox_sent(runtime: Runtime, outbox_id: int) -> bool:
    async with runtime.sessions() as s:
        row = await s.get(OutboxMessage, outbox_id)
        return row is not None and row.status == OutboxStatus.SENT


async def test_same_message_id_twice_is_handled_once(server: tuple[str, Runtime]) -> None:
    base, runtime = server
    chat = await connect(base)
    try:
        await chat.history()
        frame = {"type": "message", "id": mid(), "text": "hallo"}
        ack, [greeting] = await chat.exchange(frame, replies=1)
        assert ack == {"type": "ack", "id": frame["id"], "duplicate": False}
        assert greeting["text"].startswith("Hallo")
        # a resend after a reconnect, or a double click: acknowledged, not answered again
        again, none = await chat.exchange(frame, replies=0)
        assert again == {"type": "ack", "id": frame["id"], "duplicate": True}
        assert none == []
        await chat.assert_quiet()
    finally:
        await chat.ws.close()
    async with runtime.sessions() as s:
        inbound = (
            (await s.execute(select(Touchpoint).where(Touchpoint.direction == Direction.IN)))
            .scalars()
            .all()
        )
    assert [t.platform_message_id for t in inbound] == [frame["id"]]


# --- bad input ----------------------------------------------------------------------------

MALFORMED: list[tuple[str, Any, str]] = [
    ("not JSON", "hallo", "not JSON"),
    ("truncated JSON", '{"type": "message", "id": ', "not JSON"),
    ("nested too deeply", "[" * 100_000, "not JSON"),
    ("not an object", json.dumps(["message", "hallo"]), "unknown frame type"),
    ("unknown type", {"type": "ping", "id": "0123456789"}, "unknown frame type"),
    ("no type", {"id": "0123456789", "text": "hallo"}, "unknown frame type"),
    ("missing id", {"type": "message", "text": "hallo"}, "id"),
    ("malformed id", {"type": "message", "id": "a b/c;d e", "text": "hallo"}, "id"),
    ("id not a string", {"type": "message", "id": 12345678901, "text": "hallo"}, "id"),
    ("text not a string", {"type": "message", "id": "0123456789", "text": 42}, "string"),
    ("text an object", {"type": "message", "id": "0123456789", "text": {"a": 1}}, "string"),
    ("payload not a string", {"type": "button", "id": "0123456789", "payload": [1]}, "string"),
    ("300 kB frame", {"type": "message", "id": "0123456789", "text": "x" * 300_000}, "too large"),
    ("binary frame", b'{"type": "message", "id": "0123456789", "text": "hallo"}', "binary"),
]


async def test_malformed_frames_get_an_error_and_the_socket_stays_usable(
    server: tuple[str, Runtime],
) -> None:
    base, runtime = server
    chat = await connect(base)
    try:
        await chat.history()
        for name, frame, reason in MALFORMED:
            error = await chat.error(frame)
            assert reason in error, (name, error)
        [greeting] = await chat.say("hallo")
        assert greeting["text"].startswith("Hallo")
        await chat.assert_quiet()
    finally:
        await chat.ws.close()
    async with runtime.sessions() as s:
        inbound = (
            (await s.execute(select(Touchpoint).where(Touchpoint.direction == Direction.IN)))
            .scalars()
            .all()
        )
    assert [t.text for t in inbound] == ["hallo"]  # nothing malformed was recorded


async def test_100_kb_message_is_answered_and_kept_whole(server: tuple[str, Runtime]) -> None:
    base, runtime = server
    text = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 2000)[:99_999] + "."
    assert len(text) == 100_000
    chat = await connect(base)
    try:
        await chat.history()
        frame = {"type": "message", "id": mid(), "text": text}
        ack, [note, reply] = await chat.exchange(frame, replies=2)
        assert ack["duplicate"] is False
        assert "4000" in note["text"] and reply["text"]  # only the start was read: said so
        await chat.assert_quiet()
        [greeting] = await chat.say("hallo")  # no crash: the socket goes on
        assert greeting["text"].startswith("Hallo")
    finally:
        await chat.ws.close()
    async with runtime.sessions() as s:
        stored = await s.scalar(
            select(Touchpoint.text).where(
                Touchpoint.platform_message_id == frame["id"], Touchpoint.direction == Direction.IN
            )
        )
    assert stored == text


async def test_control_characters_in_the_name(server: tuple[str, Runtime]) -> None:
    """Regression: a NUL in ?name= reached the contact's name; PostgreSQL refused it and the
    socket died with 1011 on the first message."""
    base, _ = server
    chat = await connect(base, name="An\x00na\x07")
    try:
        await chat.history()
        [greeting] = await chat.say("hallo")
        assert greeting["text"].startswith("Hallo Anna!")
    finally:
        await chat.ws.close()


async def test_two_tabs_of_one_visitor_both_get_the_replies(server: tuple[str, Runtime]) -> None:
    base, runtime = server
    visitor = await new_session(base)
    tab1, tab2, other = (
        await connect(base, visitor),
        await connect(base, visitor),
        await connect(base),
    )
    try:
        for tab in (tab1, tab2, other):
            assert await tab.history() == []
        [greeting] = await tab1.say("hallo")
        seen = await tab2.recv()
        assert seen == greeting  # the same frame, same outbox id; no ack in the other tab
        # the other tab answers; the first tab sees the replies too
        replies = await tab2.press(seen, "Beschwerde einreichen", replies=2)
        assert [await tab1.recv(), await tab1.recv()] == replies
        for tab in (tab1, tab2, other):
            await tab.assert_quiet(0.2)
    finally:
        for tab in (tab1, tab2, other):
            await tab.ws.close()
    channel = runtime.channels["webchat"]

    async def forgotten() -> bool:  # closed sockets are forgotten
        return not getattr(channel, "sockets", {})

    await eventually(forgotten)


# --- the page's script, run by node against the server (optional: needs node >= 20) --------

NODE_HARNESS = textwrap.dedent(r"""
    const { webcrypto } = require("node:crypto");
    const fs = require("node:fs");
    const [base, search, scriptPath] = process.argv.slice(2);
    // an insecure context (http on a LAN address): no crypto.randomUUID
    Object.defineProperty(globalThis, "crypto", {
      value: { getRandomValues: (a) => webcrypto.getRandomValues(a) }, configurable: true });
    Object.defineProperty(globalThis, "navigator", {
      value: { language: "de-DE" }, configurable: true });
    const url = new URL(base);
    globalThis.location = { protocol: url.protocol, host: url.host, search, pathname: "/" };
    // a browser's cookie jar and its Origin header; the page starts without a cookie
    let cookie = null;
    const closes = [];
    const nativeFetch = globalThis.fetch;
    globalThis.fetch = async (path, options) => {
      const response = await nativeFetch(new URL(path, base), options);
      const set = response.headers.get("set-cookie");
      if (set) cookie = set.split(";")[0];
      return response;
    };
    const NativeWebSocket = globalThis.WebSocket;
    globalThis.WebSocket = class extends NativeWebSocket {
      constructor(target) {
        super(target, { headers: { Origin: base, ...(cookie ? { Cookie: cookie } : {}) } });
        this.addEventListener("close", (e) => closes.push(e.code));
      }
    };
    // an older page kept a visitor id it chose in localStorage
    const store = new Map([["cicbot.visitor", "chosen-by-the-client"]]);
    globalThis.localStorage = { getItem: (k) => store.has(k) ? store.get(k) : null,
                                setItem: (k, v) => store.set(k, String(v)),
                                removeItem: (k) => store.delete(k) };
    globalThis.CSS = { escape: (s) => s };
    class El {
      constructor(tag) { this.tag = tag; this.children = []; this.textContent = "";
        this.className = ""; this.dataset = {}; this.listeners = {}; this.value = "";
        this.parent = null; this.attributes = {};
        const self = this;
        this.classList = {
          add: (c) => { self.className += " " + c; },
          remove: (c) => { self.className = self.className.replace(" " + c, ""); },
        };
      }
      appendChild(c) { c.parent = this; this.children.push(c); return c; }
      append(...cs) { for (const c of cs) this.appendChild(c); }
      replaceChildren() { this.children = []; }
      remove() {
        if (this.parent) this.parent.children.splice(this.parent.children.indexOf(this), 1);
      }
      setAttribute(k, v) { this.attributes[k] = String(v); }
      focus() {}
      addEventListener(t, f) { this.listeners[t] = f; }
      descendants() { return this.children.flatMap((c) => [c, ...c.descendants()]); }
      // enough of CSS for the page: ".a", "tag", ".a b", ".a[data-b]", lists with ","
      matches(sel) {
        return sel.split(",").some((part) => {
          const last = part.trim().split(/\s+/).pop();
          const m = /^([a-z]*)(?:\.([\w-]+))?(?:\[data-(\w+)\])?$/.exec(last);
          if (!m) return false;
          const [, tag, cls, data] = m;
          return (!tag || this.tag === tag) && (!cls || this.className.split(" ").includes(cls))
            && (!data || data in this.dataset);
        });
      }
      querySelectorAll(sel) { return this.descendants().filter((c) => c.matches(sel)); }
      querySelector(sel) {
        const m = /data-id="(.*)"/.exec(sel);
        if (m) return this.descendants().find((c) => c.dataset.id === m[1]) || null;
        return this.querySelectorAll(sel)[0] || null;
      }
    }
    const ids = {};
    globalThis.document = {
      documentElement: {},
      getElementById: (id) => (ids[id] ||= new El(id)),
      createElement: (tag) => new El(tag),
    };
    const log = document.getElementById("log");
    const bubbles = () => log.descendants().filter((c) => c.className.startsWith("msg"));
    const until = async (cond, what) => {
      for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 20));
      if (!cond()) { console.error("timeout: " + what); process.exit(3); }
    };
    const type = (text) => {
      document.getElementById("text").value = text;
      document.getElementById("form").listeners.submit({ preventDefault() {} });
    };
    (async () => {
      new Function(fs.readFileSync(scriptPath, "utf8"))();
      // refused without a cookie (4401), renewed, connected: the banner goes away
      const conn = document.getElementById("conn");
      await until(() => closes.length > 0 && conn.hidden === true, "connected");
      type("hallo");
      await until(() => bubbles().some((b) => b.textContent.startsWith("Hallo")), "greeting");
      const box = log.children.find((c) => c.className === "choices");
      box.children.find((b) => b.textContent === "Beschwerde einreichen").onclick();
      await until(() => bubbles().some((b) => b.textContent.startsWith("Worum")), "category");
      await until(() => !bubbles().some((b) => b.className.includes("pending")), "acks");
      console.log(JSON.stringify({
        stored: [...store.keys()],
        closes,
        cookie,
        state: document.getElementById("state").textContent,
        bubbles: bubbles().map((b) => [b.className, b.textContent]),
      }));
      process.exit(0);
    })();
""")


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    probe = subprocess.run(
        [node, "--experimental-websocket", "-e", "WebSocket"], capture_output=True, timeout=30
    )
    if probe.returncode != 0:
        pytest.skip("node has no WebSocket (needs node >= 20.10)")
    return node


@pytest.mark.parametrize("search", ["", "?visitor=abc"], ids=["fresh", "visitor-in-url"])
async def test_page_script_chats_in_an_insecure_context(
    server: tuple[str, Runtime], tmp_path: Path, search: str
) -> None:
    """The page's own JavaScript (DOM stubbed) against the real server: without
    crypto.randomUUID (plain http on a LAN address) it still chats; without a session
    cookie the socket is closed with 4401 and the page fetches itself for one; a
    ?visitor= in the URL and an id an older page kept in localStorage count for nothing
    (the stored one is dropped)."""
    node = _node()
    base, _ = server
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
        page = (await http.get("/")).text
        script = await http.get("/webchat/static/chat.js")
    assert '<script src="/webchat/static/chat.js" defer></script>' in page
    assert script.status_code == 200
    (tmp_path / "page.js").write_text(script.text, "utf-8")
    (tmp_path / "harness.js").write_text(NODE_HARNESS, "utf-8")
    proc = await asyncio.create_subprocess_exec(
        node,
        "--experimental-websocket",
        "--no-warnings",
        str(tmp_path / "harness.js"),
        base,
        search,
        str(tmp_path / "page.js"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["stored"] == []
    assert result["closes"] == [4401]  # no cookie yet: refused, renewed, reconnected
    assert result["cookie"].startswith("cicbot_chat=") and "abc" not in result["cookie"]
    # the header says who is there (no agent signed in: the assistant), not "online"
    assert result["state"] == "Der digitale Assistent antwortet sofort"
    texts = [text for _, text in result["bubbles"]]
    assert texts[0] == "hallo" and texts[1].startswith("Hallo")
    assert texts[2] == "Beschwerde einreichen"
    assert texts[-1] == "Worum geht es bei Ihrer Beschwerde?"
    assert result["bubbles"][0][0] == "msg in"
