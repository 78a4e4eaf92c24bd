"""Fixtures for the pure flows: a Context built from the repository's config.yaml."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from bot.config import load_settings
from bot.knowledge.base import build_matcher
from bot.runtime import flow_options
from flows.catalog import Catalog, default_catalog
from flows.knowledge import Matcher
from flows.model import ContactFacts, Context
from flows.options import FlowOptions
from tests.flows.support import NOW, ROOT

CtxFactory = Callable[..., Context]


@pytest.fixture(scope="session")
def options() -> FlowOptions:
    """The flow options of the repository's config.yaml, read without leaking env changes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CICBOT_CONFIG", str(ROOT / "config.yaml"))
        for key in [k for k in os.environ if k.startswith("CICBOT_") and "__" in k]:
            mp.delenv(key)  # a developer's CICBOT_FLOWS__... must not change what we test
        settings = load_settings(ROOT / "config.yaml")
    return flow_options(settings)


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return default_catalog()


@pytest.fixture(scope="session")
def matcher(options: FlowOptions) -> Matcher:
    """The shipped knowledge base's matcher with the built-in intents' (`.intents`), as
    the bot builds them (without the cache)."""
    return build_matcher(options.knowledge_base.model_copy(update={"cache_dir": ""}))


@pytest.fixture
def ctx(options: FlowOptions, catalog: Catalog, matcher: Matcher) -> CtxFactory:
    """ctx(locale="en", segment=None, name=None, phase="active", **option_overrides)."""

    def make(
        locale: str = "en",
        segment: str | None = None,
        name: str | None = None,
        phase: str = "active",
        **overrides: Any,
    ) -> Context:
        opts = options.model_copy(update=overrides) if overrides else options
        return Context(
            locale=locale,
            options=opts,
            catalog=catalog,
            contact=ContactFacts(name=name, value_segment=segment, lifecycle_phase=phase),
            now=NOW,
            matcher=matcher,
        )

    return make
