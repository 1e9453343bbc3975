"""Configuration: environment plus YAML over shipped defaults; bad values fail with clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.config import load_settings
from workers.errors import ConfigError
from workers.workorder import WorkloadClass


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "SLACK_APP_TOKEN",
        "SLACK_API_URL",
        "DATABASE_URL",
        "PORT",
        "DELEGATE_CONFIG",
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)


def _with_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> None:
    path = tmp_path / "delegate.yaml"
    path.write_text(text)
    monkeypatch.setenv("DELEGATE_CONFIG", str(path))


def test_defaults_need_no_file() -> None:
    settings = load_settings()
    assert settings.database_url == "sqlite+aiosqlite:///delegate.db"
    assert settings.port == 3000 and settings.slack_api_url == "https://slack.com/api/"
    assert settings.socket_mode is False
    assert settings.route("execute", WorkloadClass.DEEP).primary.model in settings.prices
    # The verifier is a different model from the executor by default.
    assert (
        settings.route("verify", "standard").primary
        != settings.route("execute", "standard").primary
    )
    assert (
        settings.budgets[WorkloadClass.QUICK].max_usd < settings.budgets[WorkloadClass.DEEP].max_usd
    )


def test_environment_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-123-abc")
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-1-abc")
    monkeypatch.setenv("SLACK_API_URL", "http://127.0.0.1:9999/api")
    monkeypatch.setenv("PORT", "8080")
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@db/delegate")
    settings = load_settings()
    assert settings.socket_mode is True
    assert settings.slack_api_url == "http://127.0.0.1:9999/api/"
    assert settings.port == 8080
    assert settings.database_url == "postgresql+asyncpg://postgres@db/delegate"
    assert "xoxb-123-abc" not in repr(settings), "secrets must not appear in reprs or logs"


def test_yaml_is_merged_over_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _with_yaml(
        monkeypatch,
        tmp_path,
        """
teams:
  growth: {weekly_usd: 250, members: [U7]}
channels:
  C9: {reviewers: [U2], escalation_contact: U3, policy: research, team: growth}
budgets:
  quick: {max_usd: 0.25, max_tokens: 50000, max_wall_clock_s: 120, max_tool_calls: 5}
""",
    )
    settings = load_settings()
    assert settings.budgets[WorkloadClass.QUICK].max_usd == 0.25
    assert settings.budgets[WorkloadClass.DEEP].max_usd == 10.0  # untouched default
    assert settings.team_of("U7") == "growth" and settings.team_of("U8") == "default"
    assert settings.channel_defaults("C9").reviewers == ["U2"]
    assert settings.channel_defaults("C-unknown").policy == "default"


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "budgets:\n  quick: {max_usd: -1}\n",
            "budgets.quick.max_usd = -1: Input should be greater than 0",
        ),
        ("routing:\n  execute:\n    quick: {primary: claude}\n", "expected 'provider:model'"),
        (
            "routing:\n  execute:\n    quick: {primary: 'anthropic:mystery-model'}\n",
            "model 'mystery-model' has no entry in prices",
        ),
        ("channels:\n  C1: {policy: nope}\n", "channels.C1.policy: 'nope' is not a policy"),
        ("digests:\n  - {channel: C1, cron: 'every monday'}\n", "cron 'every monday'"),
        (
            "engine: {heartbeat_s: 90, lease_ttl_s: 60}\n",
            "heartbeat_s (90) must be shorter than lease_ttl_s",
        ),
        (
            "prices:\n  gpt-5: {input: cheap, output: 1, cache_write: 1, cache_read: 1}\n",
            "prices.gpt-5.input = 'cheap'",
        ),
        ("budgest: {}\n", "budgest = {}: not a setting Delegate knows"),
        ("- just\n- a list\n", "expected a mapping at the top level"),
        ("budgets: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_yaml_fails_with_field_value_and_expectation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, yaml_text: str, expected: str
) -> None:
    _with_yaml(monkeypatch, tmp_path, yaml_text)
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    assert expected in str(excinfo.value)


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("channels:\n  C1: {policy: nope}\n", ": channels.C1.policy: 'nope' is not a policy"),
        ("engine: {heartbeat_s: 90, lease_ttl_s: 60}\n", ": engine: heartbeat_s (90) must be"),
        ("intake: {max_rounds: 9}\n", ": intake.max_rounds = 9: Input should be less than"),
        ("admins: [U1]\nbudgets:\n\tquick: 1\n", ", line 3, column 1: not valid YAML: found"),
        ("budgets: {quick: [1, 2}\n", ", line 1, column 23: not valid YAML: expected ','"),
    ],
    ids=["reference", "rule-across-fields", "bound", "tab", "unclosed"],
)
def test_a_mistake_names_the_file_and_the_key_in_plain_words(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, yaml_text: str, expected: str
) -> None:
    _with_yaml(monkeypatch, tmp_path, yaml_text)
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = str(excinfo.value)
    assert f"{tmp_path / 'delegate.yaml'}{expected}" in message
    assert "Value error" not in message and "<unicode string>" not in message


def test_several_reference_mistakes_are_one_line_each(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _with_yaml(monkeypatch, tmp_path, "channels:\n  C1: {policy: nope, team: nobody}\n")
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    path = tmp_path / "delegate.yaml"
    assert str(excinfo.value).splitlines()[1:] == [
        f"  - {path}: channels.C1.policy: 'nope' is not a policy; expected one of default, research",
        f"  - {path}: channels.C1.team: 'nobody' is not a team; expected one of default",
    ]


def test_missing_config_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DELEGATE_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SLACK_BOT_TOKEN", "xapp-wrong-kind", "starts with 'xoxb-'"),
        ("SLACK_BOT_TOKEN", "changeme", "placeholder"),
        ("SLACK_APP_TOKEN", "xoxb-wrong-kind", "starts with 'xapp-'"),
        ("PORT", "eighty", "PORT"),
        ("DATABASE_URL", "mysql://x", "expected sqlite+aiosqlite"),
        ("SLACK_API_URL", "slack.com/api", "http(s) URL"),
    ],
)
def test_invalid_environment_values(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = str(excinfo.value)
    assert expected.lower() in message.lower()
    if "TOKEN" in name:
        assert value not in message, "secret values are never echoed"
