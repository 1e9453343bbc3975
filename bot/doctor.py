"""`delegate doctor`: check each thing Delegate depends on and say how to fix what is wrong."""

from __future__ import annotations

from dataclasses import dataclass

from slack_sdk.errors import SlackApiError

from bot.scopes import BOT_SCOPES
from bot.slack_client import make_slack_client
from workers.config import Settings
from workers.db import create_engine, redact_error, redact_url
from workers.errors import ConfigError
from workers.migrate import current_revision, head_revision


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""
    fix: str = ""
    warning: bool = False
    """Works, but weaker than it should be: shown with its fix, does not fail the doctor."""

    def line(self) -> str:
        mark = "[FAIL]" if not self.ok else "[warn]" if self.warning else "[ok]  "
        text = f"{mark} {self.name}"
        if self.detail:
            text += f": {self.detail}"
        if (not self.ok or self.warning) and self.fix:
            text += f"\n       fix: {self.fix}"
        return text


async def run_checks(settings: Settings) -> list[Check]:
    checks = [Check("configuration", True, "loaded and valid")]
    checks.append(await _check_database(settings))
    checks.extend(await _check_slack(settings))
    checks.extend(_check_providers(settings))
    checks.append(_check_audit_key(settings))
    return checks


def _check_audit_key(settings: Settings) -> Check:
    try:
        key = settings.audit_signing_key()
    except ConfigError as exc:
        return Check("audit key", False, str(exc), "fix DELEGATE_AUDIT_KEY_FILE or unset it")
    if key.keyed:
        return Check("audit key", True, "the audit trail is keyed")
    return Check(
        "audit key",
        True,
        "not set: the trail is linked and counted, but anyone who can write the database "
        "could recompute it",
        "set DELEGATE_AUDIT_KEY (e.g. `python3 -c 'import secrets; print(secrets.token_hex(32))'`)"
        " or DELEGATE_AUDIT_KEY_FILE, stored outside the database",
        warning=True,
    )


async def _check_database(settings: Settings) -> Check:
    url = settings.database_url
    try:
        engine = create_engine(url)
    except Exception as exc:
        return Check(
            "database",
            False,
            f"DATABASE_URL cannot be used ({type(exc).__name__})",
            "write it as sqlite+aiosqlite:///path.db or postgresql+asyncpg://user:password@host:5432/db",
        )
    try:
        applied = await current_revision(engine)
    except Exception as exc:
        return Check(
            "database",
            False,
            f"cannot connect to {redact_url(url)} ({redact_error(exc, url)})",
            "check DATABASE_URL and that the server is running",
        )
    finally:
        await engine.dispose()
    head = head_revision()
    if applied != head:
        return Check(
            "database",
            False,
            f"schema at {applied or 'empty'}, latest is {head}",
            "run `delegate db upgrade` (delegate run also does this on start)",
        )
    return Check("database", True, f"reachable, schema at {head}")


async def _check_slack(settings: Settings) -> list[Check]:
    if settings.slack_bot_token is None:
        return [
            Check(
                "Slack bot token",
                False,
                "SLACK_BOT_TOKEN is not set",
                "create the app from manifest.yml, install it, and copy the Bot User OAuth Token",
            )
        ]
    client = make_slack_client(settings)
    try:
        response = await client.auth_test()
    except SlackApiError as exc:
        error = exc.response.get("error", "unknown error")
        return [
            Check(
                "Slack auth.test",
                False,
                f"Slack refused the token ({error})",
                "reinstall the app and copy a fresh Bot User OAuth Token into SLACK_BOT_TOKEN",
            )
        ]
    except Exception as exc:
        return [
            Check(
                "Slack auth.test",
                False,
                f"cannot reach {settings.slack_api_url} ({type(exc).__name__})",
                "check network access to Slack, or SLACK_API_URL",
            )
        ]
    checks = [
        Check(
            "Slack auth.test",
            True,
            f"bot {response.get('user_id')} in team {response.get('team_id')}",
        )
    ]
    granted = _scopes_header(response.headers.get("x-oauth-scopes"))
    missing = sorted(BOT_SCOPES - granted)
    checks.append(
        Check(
            "Slack scopes",
            not missing,
            "all granted" if not missing else f"missing {', '.join(missing)}",
            "add the scopes from manifest.yml under OAuth & Permissions, then reinstall the app",
        )
    )
    if settings.slack_app_token is None:
        checks.append(
            Check(
                "Slack request signing",
                settings.slack_signing_secret is not None,
                "HTTP mode" if settings.slack_signing_secret else "SLACK_SIGNING_SECRET is not set",
                "copy the Signing Secret from Basic Information, or set SLACK_APP_TOKEN for Socket Mode",
            )
        )
    else:
        checks.append(Check("Slack Socket Mode", True, "SLACK_APP_TOKEN set"))
    return checks


def _check_providers(settings: Settings) -> list[Check]:
    used = {
        ref.provider
        for routes in settings.routing.values()
        for route in routes.values()
        for ref in (route.primary, route.fallback)
        if ref is not None
    }
    keys = {"anthropic": settings.anthropic_api_key, "openai": settings.openai_api_key}
    env = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
    return [
        Check(
            f"{provider} API key",
            keys[provider] is not None,
            "set" if keys[provider] is not None else f"{env[provider]} is not set",
            f"set {env[provider]}, or route every role away from {provider} in DELEGATE_CONFIG",
        )
        for provider in sorted(used)
    ]


def _scopes_header(value: object) -> set[str]:
    """auth.test reports granted scopes in a comma-separated `x-oauth-scopes` header."""
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    return {s.strip() for s in str(value or "").split(",") if s.strip()}
