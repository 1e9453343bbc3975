"""Secrets from files (`X_FILE`, the Docker secrets convention): every secret variable can be
read from a file, without surrounding whitespace; both `X` and `X_FILE` is an error; a file that
cannot be read is named with its variable, and no error shows the secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import cli_env, delegate
from workers.config import load_settings
from workers.errors import ConfigError
from workers.secret_files import SECRET_VARIABLES

# A valid value for each secret, as its validators expect it.
VALUES = {
    "SLACK_BOT_TOKEN": "xoxb-1-filed-bot-token",
    "SLACK_SIGNING_SECRET": "filed-signing-secret",
    "SLACK_APP_TOKEN": "xapp-1-filed-app-token",
    "ANTHROPIC_API_KEY": "sk-ant-filed-key",
    "OPENAI_API_KEY": "sk-filed-openai-key",
    "DATABASE_URL": "postgresql+asyncpg://delegate:filed-Password@db:5432/delegate",
    "DELEGATE_AUDIT_KEY": "filed-audit-key-0123456789abcdef",
}
FIELDS = {variable: field for field, variable in SECRET_VARIABLES.items()}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in VALUES:
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv(f"{variable}_FILE", raising=False)
    monkeypatch.delenv("DELEGATE_CONFIG", raising=False)


def _value(settings: object, variable: str) -> str:
    value = getattr(settings, FIELDS[variable])
    return value if isinstance(value, str) else value.get_secret_value()


def test_every_secret_variable_has_a_file_variant() -> None:
    assert set(SECRET_VARIABLES.values()) == set(VALUES)


@pytest.mark.parametrize("variable", list(VALUES))
@pytest.mark.parametrize("ending", ["\n", "\r\n", ""], ids=["newline", "crlf", "none"])
def test_a_secret_is_read_from_its_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, ending: str
) -> None:
    path = tmp_path / variable.lower()
    path.write_bytes((VALUES[variable] + ending).encode())
    monkeypatch.setenv(f"{variable}_FILE", str(path))
    assert _value(load_settings(), variable) == VALUES[variable]


def test_an_audit_key_file_with_stray_whitespace_keys_the_trail_as_it_always_did(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Chains keyed from `key \\n\\n` before _FILE variables existed must still verify."""
    path = tmp_path / "audit.key"
    path.write_text(" " + VALUES["DELEGATE_AUDIT_KEY"] + " \n\n")
    monkeypatch.setenv("DELEGATE_AUDIT_KEY_FILE", str(path))
    from_file = load_settings().audit_signing_key()
    monkeypatch.delenv("DELEGATE_AUDIT_KEY_FILE")
    monkeypatch.setenv("DELEGATE_AUDIT_KEY", VALUES["DELEGATE_AUDIT_KEY"])
    assert from_file == load_settings().audit_signing_key()


def test_an_audit_key_file_keys_the_audit_trail(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "audit.key"
    path.write_text(VALUES["DELEGATE_AUDIT_KEY"] + "\n")
    monkeypatch.setenv("DELEGATE_AUDIT_KEY_FILE", str(path))
    assert load_settings().audit_signing_key().keyed


def test_an_empty_variable_beside_its_file_is_not_a_conflict(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Compose files pass `X: ${X:-}`; the file is what was meant."""
    path = tmp_path / "token"
    path.write_text(VALUES["SLACK_BOT_TOKEN"])
    monkeypatch.setenv("SLACK_BOT_TOKEN", "")
    monkeypatch.setenv("SLACK_BOT_TOKEN_FILE", str(path))
    assert _value(load_settings(), "SLACK_BOT_TOKEN") == VALUES["SLACK_BOT_TOKEN"]


@pytest.mark.parametrize("variable", list(VALUES))
def test_setting_both_a_secret_and_its_file_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    path = tmp_path / "secret"
    path.write_text(VALUES[variable])
    monkeypatch.setenv(variable, VALUES[variable])
    monkeypatch.setenv(f"{variable}_FILE", str(path))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert f"{variable} and {variable}_FILE are both set" in message
    assert VALUES[variable] not in message


@pytest.mark.parametrize("what", ["missing", "directory", "not text", "too large"])
def test_an_unreadable_secret_file_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, what: str
) -> None:
    path = tmp_path / "slack_bot_token"
    if what == "directory":
        path.mkdir()
    elif what == "not text":
        path.write_bytes(b"xoxb-\xff\xfe-S3CR3T")
    elif what == "too large":
        path.write_text("xoxb-S3CR3T" + "x" * 70_000)
    monkeypatch.setenv("SLACK_BOT_TOKEN_FILE", str(path))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"SLACK_BOT_TOKEN_FILE = {str(path)!r}: ")
    assert "S3CR3T" not in message


def test_an_invalid_secret_from_a_file_names_the_file_but_not_the_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "audit.key"
    path.write_text("too-short-key\n")
    monkeypatch.setenv("DELEGATE_AUDIT_KEY_FILE", str(path))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "at least 16 bytes" in message
    assert f"read from DELEGATE_AUDIT_KEY_FILE = {str(path)!r}" in message
    assert "too-short-key" not in message


async def test_the_cli_uses_a_database_url_from_a_file(tmp_path: Path) -> None:
    database = tmp_path / "filed.db"
    url_file = tmp_path / "database_url"
    url_file.write_text(f"sqlite+aiosqlite:///{database}\n")
    code, _, err = await delegate(
        "db", "upgrade", env=cli_env(DATABASE_URL_FILE=str(url_file)), cwd=tmp_path
    )
    assert code == 0, err
    assert database.exists() and not (tmp_path / "delegate.db").exists()


async def test_the_cli_refuses_a_secret_given_twice_without_showing_it(tmp_path: Path) -> None:
    password = "hunter2-Very-Secret"
    url = f"postgresql+asyncpg://postgres:{password}@127.0.0.1:1/db"
    url_file = tmp_path / "database_url"
    url_file.write_text(url)
    env = cli_env(DATABASE_URL=url, DATABASE_URL_FILE=str(url_file))
    code, out, err = await delegate("db", "upgrade", env=env, cwd=tmp_path)
    assert code == 2
    assert "DATABASE_URL and DATABASE_URL_FILE are both set" in err
    assert password not in out + err and "Traceback" not in out + err
