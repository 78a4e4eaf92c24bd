"""Settings: config.yaml validated at start, CICBOT_* environment overrides, secrets."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, SecretStr

from bot import config
from bot.channel.settings import ConfigFile
from bot.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
REPO_CONFIG = ROOT / "config.yaml"
TOKEN = "123456789:AAF-very-secret-token"

Mutation = Callable[[dict[str, Any]], None]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CICBOT_ setting from the developer's shell; CICBOT_CONFIG restored afterwards."""
    for key in list(os.environ):
        if key.startswith("CICBOT_") and "__" in key:
            monkeypatch.delenv(key)
    monkeypatch.setenv("CICBOT_CONFIG", str(REPO_CONFIG))


@pytest.fixture(scope="module")
def repo_yaml() -> dict[str, Any]:
    data = yaml.safe_load(REPO_CONFIG.read_text("utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture
def write(tmp_path: Path, repo_yaml: dict[str, Any]) -> Callable[..., Path]:
    """write(mutation) → a copy of the repository's config.yaml, changed by `mutation`."""

    def make(mutation: Mutation | None = None, name: str = "config.yaml") -> Path:
        data = copy.deepcopy(repo_yaml)
        if mutation is not None:
            mutation(data)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, allow_unicode=True), "utf-8")
        return path

    return make


def setting(dotted: str, value: Any) -> Mutation:
    """A mutation that sets a dotted key, creating sections on the way."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return mutate


def removing(dotted: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        del node[last]

    return mutate


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    return str(err.value)


# --- paths ------------------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_config_folder(
    write: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the SQLite path was relative to the working directory, the knowledge
    base's to the config's folder: run from elsewhere, cicbot made a new empty database."""
    path = write(setting("email.smtp.ca_file", "certs/ca.pem"))
    monkeypatch.chdir(Path("/"))
    s = load_settings(path)
    assert s.database.url == f"sqlite+aiosqlite:///{tmp_path}/data/cicbot.db"
    assert s.webchat.key_file == str(tmp_path / "data" / "webchat.key")
    assert s.email.smtp.ca_file == str(tmp_path / "certs" / "ca.pem")


def test_channels_mark_their_file_fields_and_config_finds_them() -> None:
    """A channel says which of its fields name files (ConfigFile); bot/config.py keeps no
    list of other packages' field names."""

    class Inner(BaseModel):
        cert: ConfigFile | None = None
        name: str | None = None

    class Outer(BaseModel):
        key: ConfigFile = "k"
        inner: Inner = Inner()
        label: str = "x"

    assert config._file_paths(Outer) == ["key", "inner.cert"]
    assert {"webchat.key_file", "email.imap.ca_file", "email.smtp.ca_file"} <= set(
        config._file_paths(Settings)
    )


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:////var/lib/cicbot/cicbot.db",
        "sqlite+aiosqlite://",
        "sqlite+aiosqlite:///:memory:",
        "postgresql+asyncpg://cicbot@db.internal/cicbot",
    ],
)
def test_absolute_memory_and_server_urls_stay_as_given(
    write: Callable[..., Path], url: str
) -> None:
    assert load_settings(write(setting("database.url", url))).database.url == url


def test_an_env_database_path_is_relative_to_the_config_folder_too(
    write: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CICBOT_DATABASE__URL", "sqlite+aiosqlite:///other.db")
    assert load_settings(write()).database.url == f"sqlite+aiosqlite:///{tmp_path}/other.db"


def test_missing_config_names_the_folder(tmp_path: Path) -> None:
    message = config_error(tmp_path / "nope.yaml")
    assert f"config file not found: nope.yaml in {tmp_path}" in message


# --- the repository's config ------------------------------------------------------------


def test_repo_config_loads() -> None:
    s = load_settings(REPO_CONFIG)
    assert s.company.name == "Beispiel GmbH"
    assert s.company.default_locale == "en"
    assert s.database.url == f"sqlite+aiosqlite:///{ROOT}/data/cicbot.db"  # the config's folder
    assert s.server.port == 8000
    assert s.flows.max_failed_answers == 3
    assert s.flows.max_selfservice_misses == 2
    assert [c.id for c in s.complaint.categories] == [
        "delivery",
        "product",
        "billing",
        "service",
        "other",
    ]
    assert s.complaint.sla_hours == {"low": 40, "medium": 20, "high": 8, "critical": 2}
    assert set(s.winback.offers) == {
        "price",
        "quality",
        "service",
        "competitor",
        "no_longer_needed",
        "other",
    }
    ids = [e.id for e in s.knowledge_base.entries]
    assert ids[:5] == [
        "opening_hours",
        "shipping_time",
        "return_policy",
        "payment_methods",
        "cancel_contract",
    ]
    assert len(ids) == 20 and {"order_status", "vouchers", "account_deletion"} <= set(ids)
    assert [i.id for i in s.knowledge_base.intents] == [
        "human",
        "complaint",
        "status",
        "stop",
        "start",
        "greeting",
        "thanks",
        "goodbye",
        "yes",
        "no",
        "noise",
        "other",
    ]
    assert s.knowledge_base.threshold == pytest.approx(0.45)
    assert s.telegram.token is None


def test_load_settings_without_path_reads_cicbot_config(
    monkeypatch: pytest.MonkeyPatch, write: Callable[..., Path]
) -> None:
    path = write(setting("company.name", "Env GmbH"))
    monkeypatch.setenv("CICBOT_CONFIG", str(path))
    assert load_settings().company.name == "Env GmbH"


def test_load_settings_with_path_names_it_in_cicbot_config(write: Callable[..., Path]) -> None:
    path = write(setting("company.name", "Path GmbH"))
    assert load_settings(path).company.name == "Path GmbH"
    assert os.environ["CICBOT_CONFIG"] == str(path)  # restored by monkeypatch afterwards


def test_defaults_fill_missing_sections(write: Callable[..., Path]) -> None:
    def strip(data: dict[str, Any]) -> None:
        for section in ("server", "dispatcher", "flows", "database"):
            data.pop(section)

    s = load_settings(write(strip))
    assert s.server.port == 8000
    assert s.flows.max_failed_answers == 3
    assert s.dispatcher.max_attempts == 8


# --- invalid values name the key ----------------------------------------------------------


@pytest.mark.parametrize(
    ("mutation", "key"),
    [
        (setting("complaint.sla_hours.high", -1), "complaint.sla_hours.high"),
        (setting("complaint.sla_hours.low", 0), "complaint.sla_hours.low"),
        (setting("server.port", "abc"), "server.port"),
        (setting("server.port", 70000), "server.port"),
        (setting("server.prot", 8000), "server.prot"),
        (setting("srever", {"port": 1}), "srever"),
        (setting("database.auto_migrate", "maybe"), "database.auto_migrate"),
        (setting("company.default_locale", "fr"), "company.default_locale"),
        (setting("flows.max_failed_answers", 0), "flows.max_failed_answers"),
        (setting("knowledge_base.threshold", 1.5), "knowledge_base.threshold"),
        (setting("winback.offers.price.kind", "rational"), "winback.offers.price.kind"),
        (
            setting("winback.offers.weather", {"kind": "factual", "text": {"de": "x", "en": "x"}}),
            "winback.offers.weather",
        ),
        (setting("complaint.escalate_segments", ["Z"]), "complaint.escalate_segments.0"),
        (setting("dispatcher.concurrency", 0), "dispatcher.concurrency"),
        (removing("winback"), "winback"),
    ],
)
def test_invalid_value_names_the_dotted_key(
    write: Callable[..., Path], mutation: Mutation, key: str
) -> None:
    message = config_error(write(mutation))
    assert message.startswith("invalid configuration")
    assert f"  {key}" in message


def test_invalid_list_item_names_its_index(write: Callable[..., Path]) -> None:
    def bad_id(data: dict[str, Any]) -> None:
        data["complaint"]["categories"][1]["id"] = "Faulty Product!"

    assert "complaint.categories.1.id" in config_error(write(bad_id))


def test_missing_severity_is_named(write: Callable[..., Path]) -> None:
    message = config_error(write(removing("complaint.sla_hours.critical")))
    assert "complaint.sla_hours" in message and "critical" in message


def test_every_error_is_reported_at_once(write: Callable[..., Path]) -> None:
    def two(data: dict[str, Any]) -> None:
        data["server"]["port"] = "abc"
        data["flows"]["max_selfservice_misses"] = 99

    message = config_error(write(two))
    assert "server.port" in message and "flows.max_selfservice_misses" in message


# --- environment overrides ---------------------------------------------------------------


def test_env_overrides_win_over_yaml(
    monkeypatch: pytest.MonkeyPatch, write: Callable[..., Path]
) -> None:
    def yaml_values(data: dict[str, Any]) -> None:
        data["database"] = {"url": "sqlite+aiosqlite:///yaml.db", "auto_migrate": False}
        data["server"] = {"host": "0.0.0.0", "port": 8001}

    path = write(yaml_values)
    monkeypatch.setenv("CICBOT_DATABASE__URL", "postgresql+asyncpg://db/cicbot")
    monkeypatch.setenv("CICBOT_SERVER__PORT", "9001")
    s = load_settings(path)
    assert s.database.url == "postgresql+asyncpg://db/cicbot"
    assert s.server.port == 9001
    # the rest of each section still comes from the YAML
    assert s.database.auto_migrate is False
    assert s.server.host == "0.0.0.0"


def test_env_override_of_a_nested_flow_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CICBOT_FLOWS__MAX_FAILED_ANSWERS", "5")
    monkeypatch.setenv("CICBOT_COMPANY__NAME", "Env GmbH")
    s = load_settings(REPO_CONFIG)
    assert s.flows.max_failed_answers == 5
    assert s.flows.max_selfservice_misses == 2
    assert s.company.name == "Env GmbH"


@pytest.mark.parametrize("value", ["abc", "0", "65536"])
def test_invalid_env_override_names_the_key(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CICBOT_SERVER__PORT", value)
    assert "server.port" in config_error(REPO_CONFIG)


def test_unrelated_cicbot_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    # the test suite itself uses these; they are not settings
    monkeypatch.setenv("CICBOT_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    monkeypatch.setenv("CICBOT_REQUIRE_POSTGRES", "1")
    assert load_settings(REPO_CONFIG).server.port == 8000


# --- secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "env"),
    [
        ("telegram.token", "CICBOT_TELEGRAM__TOKEN"),
        ("telegram.webhook_secret", "CICBOT_TELEGRAM__WEBHOOK_SECRET"),
    ],
)
def test_secret_in_yaml_is_refused(write: Callable[..., Path], key: str, env: str) -> None:
    message = config_error(write(setting(key, TOKEN)))
    assert key in message
    assert env in message
    assert TOKEN not in message  # the secret itself is never echoed


def test_secret_in_yaml_is_refused_even_if_not_a_string(write: Callable[..., Path]) -> None:
    assert "CICBOT_TELEGRAM__TOKEN" in config_error(write(setting("telegram.token", 123456)))


def test_secret_from_env_is_accepted_and_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CICBOT_TELEGRAM__TOKEN", TOKEN)
    s = load_settings(REPO_CONFIG)
    token = s.telegram.token
    assert isinstance(token, SecretStr)
    assert token.get_secret_value() == TOKEN
    assert TOKEN not in str(token)
    assert TOKEN not in repr(token)
    assert TOKEN not in repr(s)
    assert TOKEN not in s.model_dump_json()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://cicbot:hunter2-secret@db.example.com/cicbot",
        "postgresql+asyncpg://cicbot@db.example.com/cicbot?password=hunter2-secret",
    ],
)
def test_a_password_inside_database_url_is_refused(write: Callable[..., Path], url: str) -> None:
    """Regression (issue 15): a password in database.url was accepted although secrets in
    the YAML are refused."""
    message = config_error(write(setting("database.url", url)))
    assert "database.url" in message and "CICBOT_DATABASE__URL" in message
    assert "PGPASSWORD" in message
    assert "hunter2" not in message


def test_database_url_without_a_password_is_fine_and_the_env_may_carry_one(
    write: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(setting("database.url", "postgresql+asyncpg://cicbot@db.example.com/cicbot"))
    assert load_settings(path).database.url.endswith("@db.example.com/cicbot")
    url = "postgresql+asyncpg://cicbot:hunter2-secret@db.example.com/cicbot"
    monkeypatch.setenv("CICBOT_DATABASE__URL", url)
    assert load_settings(path).database.url == url


def test_webchat_secret_only_from_the_environment(
    write: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s" * 40
    message = config_error(write(setting("webchat.secret", secret)))
    assert "CICBOT_WEBCHAT__SECRET" in message and secret not in message
    monkeypatch.setenv("CICBOT_WEBCHAT__SECRET", "short")
    assert "webchat.secret" in config_error(REPO_CONFIG)
    monkeypatch.setenv("CICBOT_WEBCHAT__SECRET", secret)
    loaded = load_settings(REPO_CONFIG).webchat.secret
    assert loaded is not None and loaded.get_secret_value() == secret


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("webchat.allowed_origins", ["https://shop.example.com/chat"]),
        ("webchat.allowed_origins", ["shop.example.com"]),
        ("webchat.allowed_origins", ["https://shop.example.com; script-src *"]),
        ("server.trusted_proxies", ["proxy.example.com"]),
    ],
)
def test_origins_and_proxies_are_validated(
    write: Callable[..., Path], key: str, value: list[str]
) -> None:
    assert key in config_error(write(setting(key, value)))


def test_telegram_settings_from_yaml_without_secrets(write: Callable[..., Path]) -> None:
    s = load_settings(write(setting("telegram", {"mode": "webhook"})))
    assert s.telegram.mode == "webhook"
    assert s.telegram.token is None


# --- unreadable files --------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    message = config_error(path)
    assert "not found" in message and "CICBOT_CONFIG" in message
    assert f"{path.name} in {path.parent}" in message  # the folder it looked in


def test_missing_file_named_by_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CICBOT_CONFIG", str(tmp_path / "gone.yaml"))
    with pytest.raises(ConfigError, match=r"gone\.yaml"):
        load_settings()


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("server: [\n  port: 1\n", "utf-8")
    message = config_error(path)
    assert "not valid YAML" in message and str(path) in message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n", "utf-8")
    assert "mapping" in config_error(path)


def test_empty_file_names_the_required_sections(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", "utf-8")
    message = config_error(path)
    assert "complaint" in message and "winback" in message


# --- messages that say what to do (issue 21) -------------------------------------------


def test_a_misspelt_key_gets_a_did_you_mean(write: Callable[..., Path]) -> None:
    message = config_error(write(setting("server.prot", 80)))
    assert "server.prot: Extra inputs are not permitted; did you mean server.port?" in message
    message = config_error(write(setting("campains", {})))
    assert "did you mean campaigns?" in message
    message = config_error(write(setting("campaigns.definitions", [{"name": "x", "flw": "csat"}])))
    assert "did you mean campaigns.definitions.0.flow?" in message


def test_a_bad_value_from_the_environment_says_so(
    write: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CICBOT_SERVER__PORT", "abc")
    message = config_error(write())
    assert "server.port:" in message
    assert "(the value comes from the environment variable CICBOT_SERVER__PORT)" in message
    monkeypatch.delenv("CICBOT_SERVER__PORT")
    assert "environment variable" not in config_error(write(setting("server.port", "abc")))
    monkeypatch.setenv("CICBOT_SERVER__PROT", "80")  # a misspelt variable: both hints
    message = config_error(write())
    assert "did you mean server.port?" in message and "CICBOT_SERVER__PROT" in message


def test_a_slack_agent_channel_without_a_token_is_noticed(write: Callable[..., Path]) -> None:
    """Regression: `slack.agent_channel` without a bot token was silently ignored."""
    from bot.config import notices

    settings = load_settings(write(setting("slack.agent_channel", "C0123456789")))
    [notice] = notices(settings)
    assert "slack.agent_channel" in notice and "CICBOT_SLACK__BOT_TOKEN" in notice
    assert notices(load_settings(write())) == []


# --- channel sections: the channels' own models, found through their entry points ----------


def test_channel_sections_come_from_the_channels_own_models() -> None:
    from bot.config import Settings, channel_settings_models

    models = channel_settings_models()
    assert {"webchat", "telegram", "slack", "email"} <= set(models)
    for name, model in models.items():
        assert model.__module__ == f"channels.{name}.settings"  # the channel's folder
        assert Settings.model_fields[name].annotation is model
    settings = load_settings(REPO_CONFIG)
    assert type(settings.channel("telegram")) is models["telegram"]
    assert settings.channel("database") is None  # a core section is no channel's


def test_every_channel_secret_is_refused_in_yaml(write: Callable[..., Path]) -> None:
    """Config errors know the secrets of every channel from its model alone (SecretStr)."""
    from bot.config import _secret_paths, channel_settings_models

    paths = [
        f"{name}.{path}"
        for name, model in channel_settings_models().items()
        for path in _secret_paths(model)
    ]
    assert {"slack.signing_secret", "email.imap.password", "webchat.secret"} <= set(paths)
    for path in paths:
        env = "CICBOT_" + path.upper().replace(".", "__")
        message = config_error(write(setting(path, "x" * 40)))
        assert path in message and env in message


def test_reading_the_settings_imports_no_platform_library() -> None:
    """The channel settings modules are cheap: pydantic only (aiogram takes seconds)."""
    import subprocess
    import sys

    code = (
        "import sys; from bot.config import load_settings; load_settings('config.yaml'); "
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('aiogram', 'slack_bolt', 'slack_sdk', 'aioimaplib', 'aiosmtplib', 'nh3')]; "
        "print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
