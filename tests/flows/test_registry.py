"""The flow registry: what each flow declares, read by the router, the menu, the command
parser, campaigns and the analytics (no flow is named anywhere else)."""

from __future__ import annotations

from flows import registry
from flows.catalog import LOCALES, Catalog
from flows.commands import WORDS, Command, Parsed, parse
from flows.dialogue import decide, help_text, menu
from flows.model import UserInput, normalize
from tests.flows.conftest import CtxFactory


def test_every_declared_text_is_in_both_catalogs(catalog: Catalog) -> None:
    keys = set()
    for flow in registry.FLOWS.values():
        t = flow.trigger
        keys.update(k for k in (t.menu.label if t.menu else None, t.help) if k)
    assert {"menu.complaint", "menu.link", "help.link"} <= keys
    for locale in LOCALES:
        assert all(k in catalog.messages[locale] for k in keys), locale


def test_words_belong_to_one_flow_and_never_to_a_built_in_command() -> None:
    declared = [normalize(w) for f in registry.FLOWS.values() for w in f.trigger.words]
    assert len(declared) == len(set(declared))
    assert not set(declared) & set(WORDS)
    commands = {c.value for c in Command}
    assert not {n for n in registry.FLOWS if registry.startable(n)} & commands


def test_what_a_customer_may_start() -> None:
    assert registry.startable("complaint") and registry.startable("link")
    # started by a campaign, a command or another flow, never by a "c:" button
    for name in ("csat", "winback", "consent", "language", "link_code", "nope"):
        assert not registry.startable(name), name
    assert registry.by_word("beschwerde") == "complaint"
    assert registry.by_intent("complaint") == "complaint"
    assert registry.hinted("The parcel arrived BROKEN") == "complaint"
    assert registry.hinted("when do you open?") is None
    assert parse("Reklamation", None) == Parsed(Command.FLOW, "complaint")


def test_the_menu_is_built_from_the_entries_in_their_order(ctx: CtxFactory) -> None:
    linking = ctx(email_linking=True)  # as configured with an email channel
    payloads = [b.payload for b in menu(linking).buttons]
    # the built-in numbers stay where customers know them; linking is last
    assert payloads[:5] == ["c:faq", "c:complaint", "c:status", "c:human", "c:language"]
    assert payloads[-1] == "c:link"
    without = ctx(email_linking=False)  # an entry's `shown` hides it, and its help line
    assert "c:link" not in [b.payload for b in menu(without).buttons]
    assert without.t("help.link") not in help_text(without)
    assert linking.t("help.link") in help_text(linking)


def test_a_gate_speaks_before_the_flow_starts(ctx: CtxFactory) -> None:
    d = decide("bot", {}, UserInput(payload="c:link"), ctx(email_linking=False))
    assert [r.key for r in d.replies] == ["link.unavailable"] and d.state == {}


def test_campaign_flows_and_their_aliases() -> None:
    assert set(registry.campaign_flows()) == {"csat", "winback", "consent"}
    assert registry.campaign_flow("winback_survey") == "winback"
    assert registry.campaign_flow("csat_survey") == "csat"
    assert registry.campaign_flow("complaint") == "complaint"  # known, but no campaign's
    assert registry.campaign_flow("nope") is None


def test_surveys_the_report_counts() -> None:
    surveys = registry.surveys()
    assert {n: a.kind for n, a in surveys.items()} == {
        "csat": "satisfaction",
        "winback": "recovery",
    }
