"""A password in DATABASE_URL never shows in an error or in `doctor`; an unparsable URL gets a
message; `doctor` warns when the audit trail is not keyed (security issue, items 6 and 7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import cli_env, delegate

PASSWORD = "hunter2-Very-Secret"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+asyncpg://postgres:{PASSWORD}@127.0.0.1:1/db",  # nothing listens there
        f"postgresql+asyncpg://postgres:{PASSWORD}@127.0.0.1:5432/no_such_database_here",
        f"postgresql+asyncpg://postgres:{PASSWORD}@127.0.0.1:notaport/db",
    ],
    ids=["refused", "no database", "unparsable port"],
)
@pytest.mark.parametrize("command", [("doctor",), ("db", "upgrade"), ("audit", "verify")])
async def test_a_database_password_never_appears_in_output(
    tmp_path: Path, url: str, command: tuple[str, ...]
) -> None:
    code, out, err = await delegate(*command, env=cli_env(DATABASE_URL=url), cwd=tmp_path)
    assert code != 0
    assert PASSWORD not in out + err
    assert "Traceback" not in out + err
    assert "DATABASE_URL" in out + err


async def test_doctor_warns_when_the_audit_trail_is_not_keyed(tmp_path: Path) -> None:
    env = cli_env(DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    _, out, _ = await delegate("doctor", env=env, cwd=tmp_path)
    assert "[warn] audit key: not set" in out and "DELEGATE_AUDIT_KEY" in out
    key = "k" * 32
    _, out, _ = await delegate("doctor", env=env | {"DELEGATE_AUDIT_KEY": key}, cwd=tmp_path)
    assert "[ok]   audit key: the audit trail is keyed" in out
    assert key not in out
    key_file = tmp_path / "audit.key"
    key_file.write_text(key + "\n")
    _, out, _ = await delegate(
        "doctor", env=env | {"DELEGATE_AUDIT_KEY_FILE": str(key_file)}, cwd=tmp_path
    )
    assert "[ok]   audit key: the audit trail is keyed" in out
    # A short key from a file is refused at start, as a short DELEGATE_AUDIT_KEY is.
    key_file.write_text("short\n")
    code, _, err = await delegate(
        "doctor", env=env | {"DELEGATE_AUDIT_KEY_FILE": str(key_file)}, cwd=tmp_path
    )
    assert code == 2 and "at least 16" in err and "DELEGATE_AUDIT_KEY_FILE" in err


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DELEGATE_AUDIT_KEY", "MyAuditPass2026"),
        ("SLACK_SIGNING_SECRET", "changeme"),
        ("SLACK_BOT_TOKEN", "MyBotToken-not-xoxb"),
        ("SLACK_APP_TOKEN", "MyAppToken-not-xapp"),
    ],
)
async def test_a_refused_secret_is_never_echoed(tmp_path: Path, name: str, value: str) -> None:
    """Issue 19, item 11: secret fields are recognised whatever case their name is spelt in."""
    env = cli_env(DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'd.db'}") | {name: value}
    code, out, err = await delegate("doctor", env=env, cwd=tmp_path)
    assert code != 0
    assert name in out + err
    assert value not in out + err
    assert "Traceback" not in out + err
