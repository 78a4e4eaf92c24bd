"""The agent console's routes and the page's source (the browser test drives the page)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bot.desk import auth
from bot.runtime import Runtime
from bot.web.agent_console import ASSETS, PAGE, STATIC
from storage.models import AgentRole
from tests.conftest import make_settings
from tests.server import serve

SOURCES = [PAGE, *(STATIC / name for name in ASSETS)]
SCRIPT = STATIC / "console.js"
TEXTS = STATIC / "console-texts.js"
SUPERVISOR = STATIC / "console-supervisor.js"
INBOX = STATIC / "console-inbox.js"
# the page's scripts in the order they must load: each uses the ones before it
SCRIPTS = [
    "vendor/chart.umd.min.js",
    "console-texts.js",
    "console-supervisor.js",
    "console-inbox.js",
    "console.js",
]


@pytest.fixture
async def console(sqlite_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    rt = Runtime(make_settings(sqlite_url), channels=[])
    async with serve(rt) as (url, runtime):
        tokens = {}
        async with runtime.sessions() as s, s.begin():
            for name, role in [("anna", AgentRole.AGENT), ("gone", AgentRole.AGENT)]:
                agent, tokens[name] = await auth.create_agent(
                    s, name.title(), role, email=f"{name}@example.com"
                )
                if name == "gone":
                    await auth.revoke(s, agent.id)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield client, tokens


async def test_page_is_served_uncached_with_a_strict_policy(
    console: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    client, _ = console
    r = await client.get("/agent")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store"
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "require-trusted-types-for 'script'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-frame-options"] == "DENY"
    tags = re.findall(r'<script src="/agent/static/([^"]+)"([^>]*)></script>', r.text)
    assert [name for name, _ in tags] == SCRIPTS
    assert all(attrs.strip() == "defer" for _, attrs in tags), tags
    assert '<link rel="stylesheet" href="/agent/static/console.css">' in r.text
    slash = await client.get("/agent/", follow_redirects=False)
    assert slash.status_code == 308 and slash.headers["location"] == "/agent"


async def test_assets_load_and_nothing_else_does(
    console: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    client, _ = console
    page = (await client.get("/agent")).text
    for ref in re.findall(r'(?:src|href)="(/agent/static/[^"]+)"', page):
        r = await client.get(ref)
        assert r.status_code == 200, ref
        assert r.content == (STATIC / ref.removeprefix("/agent/static/")).read_bytes()
        assert r.headers["x-content-type-options"] == "nosniff"
    assert {*re.findall(r'(?:src|href)="/agent/static/([^"]+)"', page)} == set(ASSETS)
    for name, media_type in ASSETS.items():
        r = await client.get(f"/agent/static/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"] == media_type, name
        assert r.headers["x-content-type-options"] == "nosniff", name
    assert ASSETS["console.css"].startswith("text/css")
    assert all(ASSETS[name].startswith("text/javascript") for name in SCRIPTS)
    for bad in ["console.html", "nope.js", "..%2Fconsole.py", "..%2F..%2Fpyproject.toml"]:
        r = await client.get(f"/agent/static/{bad}")
        assert r.status_code == 404, bad
        assert r.json()["error"]["code"] in ("not_found", "http_error"), bad


async def test_colleagues_need_a_token_and_hide_contact_details(
    console: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    client, tokens = console
    r = await client.get("/agent/api/colleagues")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    bearer = {"Authorization": f"Bearer {tokens['gone']}"}
    assert (await client.get("/agent/api/colleagues", headers=bearer)).status_code == 401
    bearer = {"Authorization": f"Bearer {tokens['anna']}"}
    items = (await client.get("/agent/api/colleagues", headers=bearer)).json()["items"]
    assert [(a["name"], a["active"]) for a in items] == [("Anna", True), ("Gone", False)]
    assert all(set(a) == {"id", "name", "role", "active"} for a in items)  # no e-mail


async def test_labels_come_from_the_flows_catalog_for_agents_only(
    console: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    """Why a conversation was escalated, in both languages, from flows/locales: a flow's
    new reason (the callback flow's) reads right without editing the console."""
    client, tokens = console
    assert (await client.get("/agent/api/labels")).status_code == 401
    bearer = {"Authorization": f"Bearer {tokens['anna']}"}
    labels = (await client.get("/agent/api/labels", headers=bearer)).json()
    assert labels["en"]["reason.callback"] == "callback requested"
    assert labels["de"]["reason.callback"] == "Rückruf gewünscht"
    assert labels["de"]["reason.customer_request"] == "Kunde möchte einen Menschen"
    assert set(labels["en"]) == set(labels["de"])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_source_never_turns_data_into_markup(path: Path) -> None:
    """Text from the server goes in with textContent; no HTML sinks, no eval."""
    source = path.read_text("utf-8")
    sinks = [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "createContextualFragment",
        "DOMParser",
        "eval(",
        "new Function",
        "javascript:",
    ]
    found = [s for s in sinks if s in source]
    assert not found, f"{path.name} uses {found}"
    if path.suffix == ".html":
        assert not re.search(r"<script(?![^>]*\bsrc=)", source), "inline script"
        assert not re.search(r"\son[a-z]+=", source), "inline event handler"
        assert not re.search(r"\sstyle=", source), "inline style (the CSP forbids it)"
        assert "http://" not in source and "https://" not in source, "no external resources"


def test_every_script_is_an_asset_and_checked() -> None:
    """A script added to static/ is served (ASSETS) and so in SOURCES, the sink check."""
    scripts = {p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*.js")}
    assert scripts == set(SCRIPTS) and scripts <= set(ASSETS)
    assert {SCRIPT, TEXTS, SUPERVISOR, INBOX} <= set(SOURCES)


def test_scripts_share_only_their_three_globals() -> None:
    """The texts, the supervisor view and the inbox each publish one global, and
    console.js holds no texts of its own."""
    texts, supervisor, desk, inbox = (
        p.read_text("utf-8") for p in (TEXTS, SUPERVISOR, SCRIPT, INBOX)
    )

    def published(source: str) -> list[str]:
        return re.findall(r"^\s*window\.(\w+)\s*=", source, re.M)

    assert published(texts) == ["CICBOT_TEXTS"] and "Object.freeze(TEXTS)" in texts
    assert published(supervisor) == ["cicbotSupervisor"]
    assert published(inbox) == ["cicbotInbox"] and '"search.none":' not in inbox
    assert published(desk) == []
    assert "window.cicbotInbox(" in desk
    assert "window.CICBOT_TEXTS" in desk and "window.cicbotSupervisor(" in desk
    assert '"login.title":' not in desk and '"sv.title":' not in supervisor


def catalog(lang: str) -> set[str]:
    source = TEXTS.read_text("utf-8")
    block = re.search(rf"\n    {lang}: \{{\n(.*?)\n    \}},\n", source, re.S)
    assert block, lang
    return set(re.findall(r'"([a-z_]+\.[a-z_.]+|[a-z_]+)":', block.group(1)))


def test_texts_exist_in_german_and_english() -> None:
    en, de = catalog("en"), catalog("de")
    assert en == de, {"only en": en - de, "only de": de - en}
    used = set(re.findall(r'data-i18n(?:-placeholder)?="([^"]+)"', PAGE.read_text("utf-8")))
    for script in (SCRIPT, SUPERVISOR, INBOX):
        used |= set(re.findall(r'\bt\("([a-z_]+(?:\.[a-z_]+)*)"', script.read_text("utf-8")))
    used |= set(re.findall(r'\btitle: "([a-z_]+\.[a-z_.]+)"', SUPERVISOR.read_text("utf-8")))
    assert used <= en, used - en
