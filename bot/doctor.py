"""`delegate doctor`: check each thing Delegate depends on, for real, and say how to fix it.

Every check talks to the thing it checks: Slack's `auth.test` for the bot token, a Socket Mode
connection opened and closed for the app token, each provider's model list for its key and the
routed models. Nothing here writes: a SQLite file that does not exist yet is not created.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.engine import make_url

from bot.delivery import fix_for
from bot.scopes import AGENT_SCOPES, BOT_SCOPES
from bot.slack_client import is_transient, make_slack_client
from workers.config import Route, Settings
from workers.db import create_engine, missing_sqlite_directory, redact_error, redact_url
from workers.migrate import current_revision, head_revision
from workers.providers.catalog import anthropic_models, openai_models
from workers.store import Store
from workers.store.outbox import SLACK
from workers.workorder import WorkloadClass

CHECK_TIMEOUT_S = 15.0
SIGNING_SECRET_SHAPE = re.compile(r"[0-9a-f]{32}")
Status = Literal["ok", "warn", "fail"]
APP_TOKEN_FIX = (
    "create an app-level token with the connections:write scope under Basic Information → "
    "App-Level Tokens, and copy it (xapp-…) into SLACK_APP_TOKEN"
)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""
    fix: str = ""
    warning: bool = False
    """Works, but weaker than it should be: shown with its fix, does not fail the doctor."""
    transient: bool = False
    """Failed because something could not be reached: trying again later may succeed (a
    refused token or a missing key never does). `delegate run` starts anyway and retries."""

    @property
    def status(self) -> Status:
        return "fail" if not self.ok else "warn" if self.warning else "ok"

    def line(self) -> str:
        mark = {"fail": "[FAIL]", "warn": "[warn]", "ok": "[ok]  "}[self.status]
        text = f"{mark} {self.name}"
        if self.detail:
            text += f": {self.detail}"
        if self.status != "ok" and self.fix:
            text += f"\n       fix: {self.fix}"
        return text

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def render(checks: list[Check], *, format: str) -> str:
    failed = [c for c in checks if not c.ok]
    warnings = [c for c in checks if c.status == "warn"]
    if format == "json":
        report = {
            "ok": not failed,
            "problems": len(failed),
            "warnings": len(warnings),
            "checks": [c.as_json() for c in checks],
        }
        return json.dumps(report, indent=2)
    lines = [c.line() for c in checks]
    counts = [_count(len(failed), "problem"), _count(len(warnings), "warning")]
    summary = ", ".join(c for c in counts if c)
    lines += ["", f"{summary}." if summary else "Everything looks good."]
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}" if n else ""


def config_failure(message: str) -> Check:
    """The one check there is when the configuration does not load."""
    return Check(
        "configuration",
        False,
        message,
        "correct the values named above in the environment or the DELEGATE_CONFIG file",
    )


async def run_checks(settings: Settings, *, slack: bool = True) -> list[Check]:
    """Every check; `slack=False` leaves out Slack (a local trial with `delegate console`)."""
    checks = [Check("configuration", True, "loaded and valid")]
    database = await _check_database(settings)
    checks.append(database)
    if slack and database.status == "ok":  # at the latest schema: the outbox can be read
        checks.extend(await _check_delivery(settings))
    if slack:
        checks.extend(await _check_slack(settings))
    else:
        checks.append(Check("Slack", True, "not checked (--no-slack)"))
    checks.extend(await check_providers(settings))
    checks.append(_check_verifier_independence(settings))
    checks.append(_check_audit_key(settings))
    checks.extend(await check_mcp_servers(settings))
    return checks


async def startup_checks(settings: Settings, *, socket_mode: bool) -> list[Check]:
    """The doctor's checks that `delegate run` and `delegate worker` make before they start:
    the bot token (if set), the app token in Socket Mode, and a key for every routed provider.
    Missing scopes only warn here: the bot works, less well, and the doctor names them."""

    async def nothing() -> list[Check]:
        return []

    async def app_token() -> list[Check]:
        return [await check_app_token(settings)]

    bot, app, providers = await asyncio.gather(
        check_bot_token(settings) if settings.slack_bot_token is not None else nothing(),
        app_token() if socket_mode else nothing(),
        check_providers(settings),
    )
    scopes_warn = [
        replace(c, ok=True, warning=True) if c.name == "Slack scopes" and not c.ok else c
        for c in bot
    ]
    return [*scopes_warn, *app, *providers]


# ---------------------------------------------------------------------------------- delivery

STUCK_AFTER_S = 300.0


async def _check_delivery(settings: Settings) -> list[Check]:
    """What the threads are owed: messages Slack refused for good, and a token it refuses."""
    store = Store.from_url(settings.database_url)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            undelivered = await store.outbox.undelivered()
            problem = await store.outbox.problem(SLACK)
    except Exception as exc:
        return [Check("thread messages", True, f"could not be read ({type(exc).__name__})")]
    finally:
        await store.close()
    checks = []
    if problem is not None:
        checks.append(
            Check(
                "Slack delivery",
                False,
                f"the workers found the bot token refused: {problem}; no new work is claimed",
                "reinstall the app or set a valid SLACK_BOT_TOKEN; delivery resumes on its own",
            )
        )
    failed = [u for u in undelivered if u.permanent]
    if failed:
        listed = ", ".join(f"{u.order_id} ({u.error})" for u in failed[:10])
        fixes = "; ".join(dict.fromkeys(fix_for(u.error) for u in failed))
        checks.append(
            Check(
                "thread messages",
                False,
                f"{len(failed)} message{'s' if len(failed) != 1 else ''} could not be "
                f"delivered: {listed}",
                fixes,
            )
        )
    now = datetime.now(UTC)
    stuck = [
        u
        for u in undelivered
        if not u.permanent and (now - u.created_at).total_seconds() > STUCK_AFTER_S
    ]
    if stuck:
        checks.append(
            Check(
                "thread messages",
                True,
                f"{len(stuck)} waiting more than {STUCK_AFTER_S / 60:g} min to be delivered "
                f"(last error: {stuck[0].error or 'none'})",
                "check that `delegate run` is up and Slack is reachable",
                warning=True,
            )
        )
    if not checks:
        checks.append(Check("thread messages", True, "every message was delivered"))
    return checks


# ---------------------------------------------------------------------------------- database


async def _check_database(settings: Settings) -> Check:
    url = settings.database_url
    try:
        parsed = make_url(url)
    except Exception:
        return Check(
            "database",
            False,
            "DATABASE_URL cannot be parsed",
            "write it as sqlite+aiosqlite:///path.db or postgresql+asyncpg://user:password@host:5432/db",
        )
    directory = missing_sqlite_directory(url)
    if directory is not None:
        return Check(
            "database",
            False,
            f"the directory {directory} does not exist",
            "create it, or point DATABASE_URL at a file in an existing directory",
        )
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database or "")
        if not path.exists():  # noqa: ASYNC240 (instant)
            return Check(
                "database",
                True,
                f"no database yet at {path}",
                "`delegate run` creates it and applies the migrations on start",
                warning=True,
            )
    engine = create_engine(url)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
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
    if applied == head:
        return Check("database", True, f"reachable, schema at {head}")
    return Check(
        "database",
        True,
        f"reachable; schema at {applied or 'empty'}, latest is {head}",
        "`delegate run` applies pending migrations on start (or run `delegate db upgrade`)",
        warning=True,
    )


# ------------------------------------------------------------------------------------- Slack


async def _check_slack(settings: Settings) -> list[Check]:
    checks = await check_bot_token(settings)
    checks.append(await check_app_token(settings))
    checks.append(_check_signing_secret(settings))
    return checks


async def check_bot_token(settings: Settings) -> list[Check]:
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
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            response = await client.auth_test()
    except SlackApiError as exc:
        error = exc.response.get("error", "unknown error")
        return [
            Check(
                "Slack auth.test",
                False,
                f"Slack refused the token ({error})",
                "reinstall the app and copy a fresh Bot User OAuth Token into SLACK_BOT_TOKEN",
                transient=is_transient(exc),
            )
        ]
    except Exception as exc:
        return [
            Check(
                "Slack auth.test",
                False,
                f"cannot reach {settings.slack_api_url} ({type(exc).__name__})",
                "check network access to Slack, or SLACK_API_URL",
                transient=True,
            )
        ]
    granted = _scopes_header(response.headers.get("x-oauth-scopes"))
    missing = sorted(BOT_SCOPES - granted)
    return [
        Check(
            "Slack auth.test",
            True,
            f"bot {response.get('user_id')} in team {response.get('team_id')}",
        ),
        Check(
            "Slack scopes",
            not missing,
            "all granted" if not missing else f"missing {', '.join(missing)}",
            "add the scopes from manifest.yml under OAuth & Permissions, then reinstall the app",
        ),
        Check(
            "Slack agent surface",
            True,
            "declared an agent: sessions and live plans"
            if AGENT_SCOPES <= granted
            else "not declared an agent: threads keep an edited status message",
        ),
    ]


async def check_app_token(settings: Settings) -> Check:
    """Open a Socket Mode connection the way `delegate run` will, wait for Slack's hello, close."""
    if settings.slack_app_token is None:
        return Check(
            "Slack Socket Mode",
            True,
            "SLACK_APP_TOKEN is not set: HTTP mode (Slack must reach /slack/events)",
            "the manifest turns Socket Mode on; set SLACK_APP_TOKEN to use it",
            warning=True,
        )
    app_token = settings.slack_app_token.get_secret_value()
    client = AsyncWebClient(base_url=settings.slack_api_url)
    fix = APP_TOKEN_FIX
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            opened = await client.apps_connections_open(app_token=app_token)
            url = str(opened.get("url") or "")
            async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
                hello = await ws.receive_json()
                await ws.close()
    except SlackApiError as exc:
        error = exc.response.get("error", "unknown error")
        return Check(
            "Slack Socket Mode",
            False,
            f"Slack refused the app token ({error})",
            fix,
            transient=is_transient(exc),
        )
    except Exception as exc:
        return Check(
            "Slack Socket Mode",
            False,
            f"could not open a Socket Mode connection ({type(exc).__name__})",
            "check network access to Slack and that Socket Mode is on in the app settings",
            transient=True,
        )
    if not isinstance(hello, dict) or hello.get("type") != "hello":
        return Check(
            "Slack Socket Mode", False, "the connection opened but Slack did not say hello", fix
        )
    return Check("Slack Socket Mode", True, "connection opened and closed")


def _check_signing_secret(settings: Settings) -> Check:
    secret = settings.slack_signing_secret
    fix = (
        "copy the Signing Secret from Basic Information → App Credentials into SLACK_SIGNING_SECRET"
    )
    if secret is None:
        if settings.slack_app_token is None:
            return Check("Slack signing secret", False, "SLACK_SIGNING_SECRET is not set", fix)
        return Check("Slack signing secret", True, "not needed in Socket Mode")
    if not SIGNING_SECRET_SHAPE.fullmatch(secret.get_secret_value()):
        # HTTP mode verifies every request with it; a wrong one refuses all of them.
        return Check(
            "Slack signing secret",
            settings.slack_app_token is not None,
            "does not look like a signing secret (32 hexadecimal characters)",
            fix,
            warning=settings.slack_app_token is not None,
        )
    return Check("Slack signing secret", True, "well-formed")


def _scopes_header(value: object) -> set[str]:
    """auth.test reports granted scopes in a comma-separated `x-oauth-scopes` header."""
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    return {s.strip() for s in str(value or "").split(",") if s.strip()}


# --------------------------------------------------------------------------------- providers

_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}


@dataclass(frozen=True)
class _Provider:
    name: str
    models: frozenset[str] | None  # None: not usable
    problem: str = ""
    missing_key: bool = False
    refused_key: bool = False
    transient: bool = False
    """Could not be reached: whether the key and the models work is not known yet."""


async def check_providers(settings: Settings) -> list[Check]:
    used = sorted(
        {
            ref.provider
            for routes in settings.routing.values()
            for route in routes.values()
            for ref in (route.primary, route.fallback)
            if ref is not None
        }
    )
    providers: dict[str, _Provider] = {name: await _probe(settings, name) for name in used}
    broken_routes = _broken_routes(settings, providers)
    checks: list[Check] = []
    for name in used:
        probe = providers[name]
        env = _KEY_ENV[name]
        if probe.models is not None:
            checks.append(Check(f"{name} API key", True, f"valid; {len(probe.models)} models"))
            continue
        needed = [r for r, problems in broken_routes.items() if any(name in p for p in problems)]
        if probe.missing_key and not needed:
            checks.append(
                Check(
                    f"{name} API key",
                    True,
                    f"{env} is not set; every route that uses {name} has a working alternative",
                    f"set {env} to use {name} as well",
                    warning=True,
                )
            )
            continue
        checks.append(
            Check(
                f"{name} API key",
                False,
                probe.problem,
                f"set {env}{'' if probe.missing_key else f' to a key {name} accepts'}, or route "
                f"every role away from {name} in DELEGATE_CONFIG",
                transient=probe.transient,
            )
        )
    unreachable = {name for name, probe in providers.items() if probe.transient}
    routes = {f"{role}.{key}": r for role, rs in settings.routing.items() for key, r in rs.items()}
    for route, problems in broken_routes.items():
        checks.append(
            Check(
                f"routing.{route}",
                False,
                "; ".join(problems),
                _route_fix(routes[route], providers),
                transient=any(name in p for p in problems for name in unreachable),
            )
        )
    if not broken_routes:
        checks.append(Check("model routing", True, "every role and class has a working model"))
    return checks


def _route_fix(route: Route, providers: dict[str, _Provider]) -> str:
    """What to change for a broken route: the key when a provider refuses it or cannot be
    reached, the model name only when the provider lacks that model."""
    fixes: list[str] = []
    for ref in (route.primary, route.fallback):
        if ref is None:
            continue
        probe = providers[ref.provider]
        env = _KEY_ENV[ref.provider]
        if probe.missing_key:
            fixes.append(f"set {env}")
        elif probe.refused_key:
            fixes.append(f"set {env} to a key {ref.provider} accepts")
        elif probe.models is None:
            fixes.append(f"check that {ref.provider} is reachable")
        elif ref.model not in probe.models:
            fixes.append(f"fix the model name {ref.model!r} in DELEGATE_CONFIG")
            break
        else:
            break
    fixes.append("or give the route a fallback that works")
    return ", ".join(dict.fromkeys(fixes))


def _broken_routes(settings: Settings, providers: dict[str, _Provider]) -> dict[str, list[str]]:
    """Routes whose first usable model fails: a missing key falls through to the fallback, but an
    unknown model or a rejected key stops the call, as the router does."""
    broken: dict[str, list[str]] = {}
    for role, routes in settings.routing.items():
        for key, route in routes.items():
            problems: list[str] = []
            for ref in (route.primary, route.fallback):
                if ref is None:
                    continue
                probe = providers[ref.provider]
                if probe.missing_key:
                    problems.append(f"{ref.provider} has no key")
                    continue
                if probe.models is None:
                    problems.append(f"{ref.provider}: {probe.problem}")
                    break
                if ref.model not in probe.models:
                    problems.append(f"{ref.provider} has no model {ref.model!r}")
                    break
                problems = []
                break
            if problems:
                broken[f"{role}.{key}"] = problems
    return broken


async def _probe(settings: Settings, name: str) -> _Provider:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            if name == "anthropic":
                if settings.anthropic_api_key is None:
                    return _Provider(name, None, "ANTHROPIC_API_KEY is not set", missing_key=True)
                models = await anthropic_models(
                    settings.anthropic_api_key.get_secret_value(), settings.anthropic_base_url
                )
                return _Provider(name, models)
            if settings.openai_api_key is None and not settings.openai_base_url:
                return _Provider(name, None, "OPENAI_API_KEY is not set", missing_key=True)
            key = settings.openai_api_key
            models = await openai_models(
                key.get_secret_value() if key is not None else None, settings.openai_base_url
            )
            return _Provider(name, models)
    except Exception as exc:
        status = getattr(exc, "status_code", None)
        if status in (401, 403):
            env = _KEY_ENV[name]
            return _Provider(
                name, None, f"{name} refused the key in {env} (HTTP {status})", refused_key=True
            )
        reason = f"HTTP {status}" if status else type(exc).__name__
        return _Provider(name, None, f"could not list {name}'s models ({reason})", transient=True)


def _check_verifier_independence(settings: Settings) -> Check:
    """The verifier checks the work best from another model family than the one that did it."""
    shared: dict[str, list[str]] = {}
    for workload in WorkloadClass:
        execute = settings.route("execute", workload).primary.provider
        if settings.route("verify", workload).primary.provider == execute:
            shared.setdefault(execute, []).append(workload.value)
    if not shared:
        return Check("verifier", True, "verify uses another provider than execute for every class")
    same = "; ".join(f"{provider} for {', '.join(classes)}" for provider, classes in shared.items())
    return Check(
        "verifier",
        True,
        f"verify and execute use the same provider ({same}): the checker may share the "
        "executor's blind spots",
        "route verify to another provider in DELEGATE_CONFIG, e.g. "
        "routing.verify.default: {primary: 'openai:gpt-5-mini'}",
        warning=True,
    )


# ------------------------------------------------------------------------------- MCP servers


async def check_mcp_servers(settings: Settings) -> list[Check]:
    """Connect to every configured MCP server, list its tools and which policies grant each."""
    if not settings.mcp_servers:
        return []
    from workers.tools.mcp import McpServers
    from workers.tools.policy import decision, granted

    source = McpServers(settings)
    checks: list[Check] = []
    try:
        await source.start()
        tools = source.tools()
        for name, connection in source.connections.items():
            if not connection.listed:
                checks.append(
                    Check(
                        f"MCP server {name}",
                        False,
                        f"could not connect: {connection.last_error}",
                        "check the command or URL, its credentials, and that it speaks MCP",
                        transient=connection.settings.url is not None,
                    )
                )
                continue
            lines = []
            for tool in (t for t in tools if t.origin.server == name):
                grants = [
                    f"{policy_name} ({decision(policy_name, policy, tool)})"
                    for policy_name, policy in sorted(settings.policies.items())
                    if granted(tool.spec.name, policy, tool)
                ]
                hints = ", ".join(k for k, v in tool.origin.hints().items() if v)
                lines.append(
                    f"{tool.grant_name}{f' [{hints}]' if hints else ''}: "
                    f"{', '.join(grants) or 'granted by no policy'}"
                )
            trust = "trusted" if connection.settings.trusted else "not trusted"
            detail = (
                f"{len(lines)} tools, protocol {connection.protocol_version}, {trust}"
                + "".join(f"\n       {line}" for line in lines)
            )
            checks.append(Check(f"MCP server {name}", True, detail))
    finally:
        await source.close()
    return checks


# ----------------------------------------------------------------------------------- audit


def _check_audit_key(settings: Settings) -> Check:
    if settings.audit_signing_key().keyed:
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
