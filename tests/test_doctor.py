"""`delegate doctor` against the fake Slack and the fake providers: each check really talks to
the thing it checks, right and wrong credentials are told apart, and it never writes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.scopes import BOT_SCOPES
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack
from tests.fakes.socket_mode import FakeSocketMode
from tests.support.cli import cli_env, delegate

SIGNING_SECRET = "0123456789abcdef0123456789abcdef"


@pytest.fixture
async def socket_mode(fake_slack: FakeSlack) -> AsyncIterator[FakeSocketMode]:
    async with FakeSocketMode(fake_slack) as server:
        yield server


@pytest.fixture
async def env(
    tmp_path: Path,
    fake_slack: FakeSlack,
    socket_mode: FakeSocketMode,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
) -> dict[str, str]:
    fake_slack.scopes = sorted(BOT_SCOPES)
    values = cli_env(
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'd.db'}",
        SLACK_BOT_TOKEN=next(t for t in fake_slack.tokens if t.startswith("xoxb-")),
        SLACK_APP_TOKEN=socket_mode.app_token,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_API_URL=fake_slack.api_url,
        ANTHROPIC_API_KEY=fake_anthropic.api_key,
        ANTHROPIC_BASE_URL=fake_anthropic.base_url,
        OPENAI_API_KEY=fake_openai.api_key,
        OPENAI_BASE_URL=fake_openai.base_url,
        DELEGATE_AUDIT_KEY="k" * 32,
    )
    code, _, err = await delegate("db", "upgrade", env=values, cwd=tmp_path)
    assert code == 0, err
    return values


async def _doctor(env: dict[str, str], tmp_path: Path, **changes: str) -> tuple[int, dict[str, dict[str, str]]]:
    code, out, err = await delegate("doctor", "--format", "json", env=env | changes, cwd=tmp_path)
    assert "Traceback" not in out + err
    report = json.loads(out)
    assert report["ok"] == (code == 0)
    return code, {c["name"]: c for c in report["checks"]}


async def test_everything_right_passes(env: dict[str, str], tmp_path: Path, socket_mode: FakeSocketMode) -> None:
    code, out, _ = await delegate("doctor", env=env, cwd=tmp_path)
    assert code == 0, out
    assert "Everything looks good." in out
    assert "[ok]   Slack Socket Mode: connection opened and closed" in out
    assert socket_mode.connections == 1  # it really connected
    assert "[ok]   anthropic API key: valid" in out and "[ok]   openai API key: valid" in out
    assert "[ok]   model routing" in out


async def test_the_agent_surface_is_reported_without_failing(
    env: dict[str, str], tmp_path: Path, fake_slack: FakeSlack
) -> None:
    """Declared an agent or not, the doctor passes; it says which (an older install keeps the
    edited status message, and the fix is to update the manifest)."""
    code, checks = await _doctor(env, tmp_path)
    assert code == 0 and "not declared an agent" in checks["Slack agent surface"]["detail"]
    fake_slack.agent()
    code, checks = await _doctor(env, tmp_path)
    assert code == 0
    assert checks["Slack agent surface"]["detail"].startswith("declared an agent")


async def test_a_wrong_app_token_fails_with_the_fix(env: dict[str, str], tmp_path: Path) -> None:
    code, checks = await _doctor(env, tmp_path, SLACK_APP_TOKEN="xapp-1-wrong")
    assert code == 1
    check = checks["Slack Socket Mode"]
    assert check["status"] == "fail" and "invalid_auth" in check["detail"]
    assert "connections:write" in check["fix"]


async def test_a_malformed_signing_secret_fails_in_http_mode(env: dict[str, str], tmp_path: Path) -> None:
    http = {k: v for k, v in env.items() if k != "SLACK_APP_TOKEN"}
    code, checks = await _doctor(http, tmp_path, SLACK_SIGNING_SECRET="not-the-secret")
    assert code == 1 and checks["Slack signing secret"]["status"] == "fail"
    assert "32 hexadecimal" in checks["Slack signing secret"]["detail"]
    assert "not-the-secret" not in json.dumps(checks)


async def test_a_rejected_provider_key_fails(env: dict[str, str], tmp_path: Path) -> None:
    code, checks = await _doctor(env, tmp_path, ANTHROPIC_API_KEY="sk-ant-wrong")
    assert code == 1
    assert checks["anthropic API key"]["status"] == "fail"
    assert (
        checks["anthropic API key"]["detail"]
        == "anthropic refused the key in ANTHROPIC_API_KEY (HTTP 401)"
    )
    assert "sk-ant-wrong" not in json.dumps(checks)
    # The routes it breaks point at the key, never at a model name that is fine.
    route = checks["routing.execute.deep"]
    assert "set ANTHROPIC_API_KEY to a key anthropic accepts" in route["fix"]
    assert not [c for c in checks.values() if "model name" in c["fix"]]


async def test_a_missing_key_with_a_working_fallback_is_a_warning(
    env: dict[str, str], tmp_path: Path
) -> None:
    without_openai = {k: v for k, v in env.items() if not k.startswith("OPENAI_")}
    code, checks = await _doctor(without_openai, tmp_path)
    assert code == 0
    assert checks["openai API key"]["status"] == "warn"
    assert "working alternative" in checks["openai API key"]["detail"]


async def test_a_routed_model_the_provider_does_not_have_fails(
    env: dict[str, str], tmp_path: Path, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.models.remove("claude-opus-4-6")
    code, checks = await _doctor(env, tmp_path)
    assert code == 1
    assert "anthropic has no model 'claude-opus-4-6'" in checks["routing.execute.deep"]["detail"]


async def test_a_fresh_setup_warns_and_creates_no_database(env: dict[str, str], tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    url = f"sqlite+aiosqlite:///{fresh / 'delegate.db'}"
    code, checks = await _doctor(env, fresh, DATABASE_URL=url)
    assert code == 0
    assert checks["database"]["status"] == "warn" and "delegate run" in checks["database"]["fix"]
    assert list(fresh.iterdir()) == []
    # An existing but empty database: pending migrations are a warning, not a failure.
    (fresh / "delegate.db").touch()
    code, checks = await _doctor(env, fresh, DATABASE_URL=url)
    assert code == 0 and checks["database"]["status"] == "warn"
    assert "schema at empty" in checks["database"]["detail"]


async def test_warnings_are_counted_instead_of_everything_looks_good(
    env: dict[str, str], tmp_path: Path
) -> None:
    without_audit_key = {k: v for k, v in env.items() if k != "DELEGATE_AUDIT_KEY"}
    code, out, _ = await delegate("doctor", env=without_audit_key, cwd=tmp_path)
    assert code == 0, out
    assert "[warn] audit key" in out
    assert out.rstrip().endswith("1 warning.") and "Everything looks good" not in out


async def test_no_slack_skips_the_slack_checks_for_a_local_trial(
    env: dict[str, str], tmp_path: Path
) -> None:
    local = {k: v for k, v in env.items() if not k.startswith("SLACK_")}
    code, out, err = await delegate("doctor", "--no-slack", env=local, cwd=tmp_path)
    assert code == 0, out + err
    assert "Slack: not checked (--no-slack)" in out
    assert "SLACK_BOT_TOKEN" not in out and "Slack auth.test" not in out
    assert "[ok]   anthropic API key: valid" in out


async def test_a_verifier_on_the_executors_provider_is_a_warning(
    env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "delegate.yaml"
    config.write_text(
        "routing:\n  verify:\n    default: {primary: 'anthropic:claude-haiku-4-5'}\n"
    )
    code, checks = await _doctor(env, tmp_path, DELEGATE_CONFIG=str(config))
    assert code == 0
    verifier = checks["verifier"]
    assert verifier["status"] == "warn"
    assert "same provider (anthropic for quick, standard, deep)" in verifier["detail"]
    assert "routing.verify" in verifier["fix"]


@pytest.mark.parametrize(
    ("config_text", "expected"),
    [
        ("budgets: [unclosed\n", "line 2, column 1: not valid YAML"),
        ("budgets:\n  quick: {max_usd: -1}\n", "budgets.quick.max_usd = -1"),
    ],
    ids=["invalid-yaml", "invalid-value"],
)
async def test_json_is_printed_even_for_a_configuration_that_does_not_load(
    tmp_path: Path, config_text: str, expected: str
) -> None:
    config = tmp_path / "delegate.yaml"
    config.write_text(config_text)
    code, out, err = await delegate(
        "doctor", "--format", "json", env=cli_env(DELEGATE_CONFIG=str(config)), cwd=tmp_path
    )
    assert code == 2 and "Traceback" not in out + err
    report = json.loads(out)
    assert report["ok"] is False
    [check] = report["checks"]
    assert check["name"] == "configuration" and check["status"] == "fail"
    assert str(config) in check["detail"] and expected in check["detail"]
