"""Message catalogs: both languages complete, every key the flows use exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from flows.catalog import LOCALES, Catalog, CatalogError, normalize_locale, placeholders
from flows.dialogue import decide
from flows.model import UserInput
from flows.registry import FLOWS
from tests.flows.conftest import CtxFactory
from tests.flows.support import ROOT, Chat

FLOWS_DIR = ROOT / "flows"
KEY_RE = re.compile(r"""(?<![\w{])["']([a-z_]+\.[a-z_]+)["']""")
PREFIX_RE = re.compile(r"""f["']([a-z_]+\.[a-z_]*)\{""")  # f"complaint.severity_{s}"
NOT_KEYS = re.compile(r"\.(py|yaml|yml|json|txt)$")


def sources() -> list[Path]:
    files = sorted(FLOWS_DIR.glob("*.py"))
    assert files
    return files


def test_locales_have_identical_keys(catalog: Catalog) -> None:
    assert set(catalog.messages) == set(LOCALES)
    en, de = set(catalog.messages["en"]), set(catalog.messages["de"])
    assert en - de == set(), "missing in de"
    assert de - en == set(), "missing in en"


def test_locales_have_identical_placeholders(catalog: Catalog) -> None:
    en, de = catalog.messages["en"], catalog.messages["de"]
    differ = {
        k: (placeholders(en[k]), placeholders(de[k]))
        for k in en
        if placeholders(en[k]) != placeholders(de[k])
    }
    assert differ == {}


@pytest.mark.parametrize("locale", LOCALES)
def test_every_template_renders(catalog: Catalog, locale: str) -> None:
    for key, template in catalog.messages[locale].items():
        params = dict.fromkeys(placeholders(template), "X")
        text = catalog.text(locale, key, **params)
        assert text.strip(), key
        assert "{" not in text and "}" not in text, key


def test_flow_steps_intros_and_options_exist(catalog: Catalog, ctx: CtxFactory) -> None:
    c = ctx()
    used: set[str] = set()
    for flow in FLOWS.values():
        if flow.intro:
            used.add(flow.intro)
        for step in flow.steps:
            used.add(step.prompt)
            used.update(o.label_key for o in step.options(c) if o.label_key)
    assert {
        "complaint.ask_category",
        "complaint.severity_critical",
        "winback.reason_other",
        "common.skip",
        "common.yes",
        "consent.optin_question",
    } <= used
    assert sorted(k for k in used if not catalog.has(k)) == []


def test_every_key_literal_in_the_flows_source_exists(catalog: Catalog) -> None:
    found: dict[str, str] = {}
    for path in sources():
        for m in KEY_RE.finditer(path.read_text("utf-8")):
            if not NOT_KEYS.search(m.group(1)):
                found[m.group(1)] = path.name
    # the scan must see the keys the router and the runner use
    assert {
        "errors.unknown_button",
        "errors.stale_button",
        "menu.greeting",
        "escalation.after_failures",
        "selfservice.not_sure",
    } <= set(found)
    assert {k: f for k, f in found.items() if not catalog.has(k)} == {}


def escalation_reasons() -> dict[str, str]:
    """The reason of every Escalate(...) in the flows' source, found by its syntax tree."""
    found: dict[str, str] = {}
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "Escalate"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found[str(node.args[0].value)] = path.name
    return found


def test_every_escalation_reason_has_a_label(catalog: Catalog) -> None:
    """Agents read why a conversation came to them in their language (console, Slack
    card): a flow that escalates names its reason in `reasons:` of both catalogs."""
    reasons = escalation_reasons()
    assert {"customer_request", "complaint", "callback", "low_csat"} <= set(reasons)
    assert {r: f for r, f in reasons.items() if not catalog.has(f"reasons.{r}")} == {}
    assert catalog.label("de", "reasons", "callback") == "Rückruf gewünscht"
    assert catalog.group("en", "reasons")["callback"] == "callback requested"
    # a reason without a label (a company's own flow) still reads as words
    assert catalog.label("en", "reasons", "vip_request") == "Vip request"


def test_every_key_prefix_built_in_the_source_exists(catalog: Catalog) -> None:
    prefixes = {m.group(1) for p in sources() for m in PREFIX_RE.finditer(p.read_text("utf-8"))}
    assert "menu." in prefixes
    for prefix in prefixes:
        assert any(k.startswith(prefix) for k in catalog.messages["en"]), prefix


@pytest.mark.parametrize("locale", LOCALES)
def test_menu_buttons_have_texts(ctx: CtxFactory, locale: str) -> None:
    menu = decide("bot", {}, UserInput("menu"), ctx(locale)).replies[0]
    # the built-in entries and the flows' (flows/registry.py); linking needs a mail channel
    assert [b.payload for b in menu.buttons][:5] == [
        "c:faq",
        "c:complaint",
        "c:status",
        "c:human",
        "c:language",
    ]
    assert all(b.label and "{" not in b.label for b in menu.buttons)


@pytest.mark.parametrize(
    "value", ["{name}", "{0}", "{company}", "{description!r:>10}", "{{x}}", "{", "}"]
)
def test_customer_text_in_a_parameter_stays_literal(catalog: Catalog, value: str) -> None:
    text = catalog.text(
        "en",
        "complaint.confirm",
        category="Billing",
        description=value,
        reference="–",
        severity="Minor",
        resolution="Refund",
    )
    assert f"Description: {value}\n" in text


def test_braces_in_a_description_survive_the_confirmation(ctx: CtxFactory) -> None:
    chat = Chat(ctx())
    chat.send("complaint")
    chat.send("1")
    description = "Order {0} for {name} arrived {company} broken"
    chat.send(description)
    chat.send("ref {reference}")
    chat.send("1")
    decision = chat.send("1")
    assert description in decision.replies[0].text
    assert "ref {reference}" in decision.replies[0].text


def test_braces_in_the_contact_name_stay_literal(ctx: CtxFactory) -> None:
    menu = decide("bot", {}, UserInput("hi"), ctx(name="{company}")).replies[0]
    assert menu.text.startswith("Hello {company}!")


def test_unknown_locale_falls_back_and_unknown_key_raises(catalog: Catalog) -> None:
    assert catalog.text("fr", "common.yes") == catalog.text("en", "common.yes")
    with pytest.raises(CatalogError):
        catalog.text("en", "no.such_key")


def test_catalog_load_rejects_non_text(tmp_path: Path) -> None:
    for loc in LOCALES:
        (tmp_path / f"{loc}.yaml").write_text("a:\n  b: 1\n", "utf-8")
    with pytest.raises(CatalogError, match=r"a\.b"):
        Catalog.load(tmp_path)


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        ("de-DE", "de"),
        ("de_AT", "de"),
        ("DE", "de"),
        ("en-GB", "en"),
        ("en", "en"),
        ("fr", "en"),
        ("fr-FR", "en"),
        ("", "en"),
        (None, "en"),
    ],
)
def test_normalize_locale(hint: str | None, expected: str) -> None:
    assert normalize_locale(hint) == expected


def test_normalize_locale_fallback_is_configurable() -> None:
    assert normalize_locale("fr", fallback="de") == "de"
    assert normalize_locale(None, fallback="de") == "de"
