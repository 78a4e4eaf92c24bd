"""Real headless Chromium for browser tests, driven by Playwright.

The browser is Debian's `chromium` package (`.ci/run` installs it); Playwright's own
browser downloads are never used. Without Chromium (or Playwright) the browser tests
skip with the reason locally, and fail in CI (`CI` set), where they are required.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str | None:
    """`CICBOT_CHROMIUM`, else `chromium` on the PATH, else Debian's /usr/bin/chromium."""
    for candidate in (
        os.environ.get("CICBOT_CHROMIUM"),
        shutil.which("chromium"),
        "/usr/bin/chromium",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser tests are required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A fresh headless Chromium per test (about a second to start)."""
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:
        _unavailable(f"Playwright is not installed ({exc}); run `uv sync`")
    path = chromium_path()
    if path is None:
        _unavailable(
            "Chromium not found (install Debian's package: apt-get install -y chromium, "
            "or set CICBOT_CHROMIUM)"
        )
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=path, headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
def artifacts() -> Path:
    """`test-artifacts/` in the repository (git-ignored): screenshots for humans."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
