"""Configuration: environment variables plus an optional YAML file, validated once at start.

Nothing else in Delegate reads ``os.environ``: every other module receives a ``Settings``.
One module on purpose: the settings classes and the messages their validation gives belong
together, so a user's mistake is explained in one place.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import make_url

from workers.audit import AuditKey
from workers.db import redact_url
from workers.errors import ConfigError
from workers.secret_files import SecretFilesSource, origin_note
from workers.workorder import MAX_BUDGET_USD, Budget, WorkloadClass

Provider = Literal["anthropic", "openai"]
Role = Literal["intake", "execute", "verify"]
ROLES: tuple[Role, ...] = ("intake", "execute", "verify")

MIN_AUDIT_KEY_BYTES = 16
_PLACEHOLDERS = {"changeme", "change-me", "todo", "xxx", "placeholder", "secret", "your-token"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRef(_Strict):
    provider: Provider
    model: str = Field(min_length=1)

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


def _parse_model_ref(value: Any) -> Any:
    if isinstance(value, str):
        provider, sep, model = value.partition(":")
        if not sep or not model:
            raise ValueError(
                f"expected 'provider:model' such as 'anthropic:claude-sonnet-4-5', got {value!r}"
            )
        return {"provider": provider, "model": model}
    return value


class Route(_Strict):
    primary: ModelRef
    fallback: ModelRef | None = None

    _parse = field_validator("primary", "fallback", mode="before")(_parse_model_ref)


class Price(_Strict):
    """USD per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_write: float = Field(ge=0)
    cache_read: float = Field(ge=0)


Approval = Literal["allow", "ask", "deny"]
Approver = Literal["requester", "escalation", "reviewers"]
DEFAULT_APPROVERS: tuple[Approver, ...] = ("requester", "escalation")


class AuthorityPolicy(_Strict):
    description: str = ""
    tools: list[str] = Field(
        default_factory=list,
        description="tool names, 'server.tool' or 'server.*' for an MCP server's tools",
    )
    domains: list[str] = Field(default_factory=list)
    allow_private_network: bool = False
    approvals: dict[str, Approval] = Field(
        default_factory=dict,
        description="per tool ('server.tool', 'server.*' or a built-in name): allow, ask or deny",
    )
    approvers: list[Approver] = Field(
        default_factory=lambda: list(DEFAULT_APPROVERS),
        description="who may answer an 'ask' (admins always may)",
    )

    @field_validator("approvals")
    @classmethod
    def _hand_in_stays_allowed(cls, value: dict[str, Approval]) -> dict[str, Approval]:
        if value.get("submit_deliverable", "allow") != "allow":
            raise ValueError("submit_deliverable is always allowed: a run must be able to hand in")
        return value


class ChannelDefaults(_Strict):
    reviewers: list[str] = Field(default_factory=list)
    escalation_contact: str | None = None
    policy: str = "default"
    # Policies a request from this channel may be granted when it needs more than `policy`.
    allowed_policies: list[str] = Field(default_factory=list)
    team: str = "default"
    # Domains web_fetch may read from this channel's orders on top of their policy's domains.
    extra_domains: list[str] = Field(default_factory=list)

    def grantable_policies(self) -> list[str]:
        return [self.policy, *(p for p in self.allowed_policies if p != self.policy)]


class TeamQuota(_Strict):
    weekly_usd: float = Field(gt=0)
    max_concurrent_runs_per_user: int = Field(default=2, gt=0)
    members: list[str] = Field(default_factory=list)
    leads: list[str] = Field(default_factory=list, description="see the team's figures in App Home")


class DigestSchedule(_Strict):
    channel: str = Field(min_length=1)
    cron: str = Field(default="0 9 * * mon", description="5-field cron expression")
    timezone: str = "UTC"
    teams: list[str] = Field(default_factory=list, description="empty: every team")
    post_empty: bool = Field(default=False, description="post a week with nothing in it too")

    @model_validator(mode="after")
    def _cron_parses(self) -> DigestSchedule:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(self.cron, timezone=self.timezone)
        except Exception as exc:  # apscheduler raises ValueError or pytz/zoneinfo errors
            raise ValueError(
                f"cron {self.cron!r} with timezone {self.timezone!r} is not valid: {exc}"
            ) from exc
        return self


class IntakeSettings(_Strict):
    max_rounds: int = Field(default=2, ge=0, le=5)
    max_questions_per_round: int = Field(default=3, ge=1, le=5)
    max_requests_per_user_per_hour: int = Field(
        default=30, ge=1, description="intake model calls one person may cause in an hour"
    )


class SlackSettings(_Strict):
    socket_ping_interval_s: float = Field(default=10, gt=0, description="Socket Mode ping period")
    socket_watchdog_s: float = Field(
        default=120, gt=0, description="reconnect after this long with no traffic and no ping reply"
    )
    thread_retention_days: float = Field(
        default=30, gt=0, description="stored thread text older than this is deleted"
    )
    token_check_s: float = Field(
        default=60, gt=0, description="how often auth.test confirms the bot token still works"
    )
    rate_budget_scale: float = Field(
        default=1.0,
        gt=0,
        description="multiplies Slack's per-method rate budgets that calls are spaced to",
    )
    order_links: str | None = Field(
        default=None,
        description="base URL of order links (e.g. https://delegate.example.com/orders/): "
        "links under it unfurl as work orders and lead to their threads",
    )
    docs_url: str | None = Field(
        default=None, description="where App Home's getting-started section links for more"
    )

    @field_validator("order_links", "docs_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value


class ReviewSettings(_Strict):
    requester_may_approve: bool = Field(
        default=False,
        description="may the requester decide their own order when a reviewer is named",
    )
    reminder_after_s: int = Field(default=4 * 3600, gt=0, description="undecided review: remind")
    escalate_after_s: int = Field(
        default=24 * 3600, gt=0, description="undecided review: mention the escalation contact"
    )
    quiet_after_s: int = Field(
        default=1800, gt=0, description="an active order silent this long gets a note saying why"
    )
    sweep_interval_s: float = Field(default=60, gt=0, description="how often reminders are checked")
    extend_factor: float = Field(
        default=1.5, gt=1, le=10, description="Extend budget multiplies by"
    )

    @model_validator(mode="after")
    def _escalation_after_reminder(self) -> ReviewSettings:
        if self.escalate_after_s <= self.reminder_after_s:
            raise ValueError(
                f"escalate_after_s ({self.escalate_after_s}) must be later than reminder_after_s "
                f"({self.reminder_after_s})"
            )
        return self


class EngineSettings(_Strict):
    lease_ttl_s: int = Field(default=60, gt=0)
    heartbeat_s: int = Field(default=15, gt=0)
    max_attempts: int = Field(default=3, gt=0)
    status_update_interval_s: float = Field(default=5, ge=0)
    ignore_bot_messages: bool = True
    # Worker runtime.
    poll_interval_s: float = Field(default=1.0, gt=0, description="idle wait between claims")
    cancel_poll_s: float = Field(
        default=1.0, gt=0, description="how often a run checks for cancellation"
    )
    shutdown_grace_s: float = Field(
        default=20, ge=0, description="SIGTERM: time running steps get before being checkpointed"
    )
    max_steps: int = Field(default=60, gt=0, description="agent loop iterations per attempt")
    max_forbidden_tool_calls: int = Field(
        default=3, gt=0, description="forbidden tool calls before the run ends in exception"
    )
    max_output_tokens: int = Field(default=4096, gt=0, description="per model call")
    min_output_tokens: int = Field(
        default=256, gt=0, description="a call that cannot afford this many output tokens stops"
    )
    inline_retry_after_s: float = Field(
        default=20, ge=0, description="longer provider Retry-After waits defer the run instead"
    )
    startup_database_wait_s: float = Field(
        default=60, ge=0, description="how long start-up waits for the database to answer"
    )
    provider_attempts: int = Field(
        default=3,
        ge=1,
        description="calls to one model on transient failures before failing over; each is "
        "reserved and charged on its own (the SDKs' hidden retries are off)",
    )
    provider_backoff_s: float = Field(
        default=0.5, ge=0, description="first wait between attempts, doubled each time"
    )
    quota_headroom_usd: float = Field(
        default=0.05, ge=0, description="a team needs this much weekly quota left to start a run"
    )
    max_quota_wait_s: int | None = Field(
        default=None, gt=0, description="queued behind quota longer than this: exception"
    )

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> EngineSettings:
        if self.heartbeat_s >= self.lease_ttl_s:
            raise ValueError(
                f"heartbeat_s ({self.heartbeat_s}) must be shorter than lease_ttl_s "
                f"({self.lease_ttl_s}), or leases expire between heartbeats"
            )
        return self


class WebFetchSettings(_Strict):
    timeout_s: float = Field(
        default=15, gt=0, description="total time per fetch, redirects included"
    )
    max_bytes: int = Field(default=2_000_000, gt=0, description="response body cap")
    max_chars: int = Field(default=20_000, gt=0, description="text handed to the model")
    max_redirects: int = Field(default=5, ge=0)
    user_agent: str = "DelegateBot/0.1 (+https://github.com/delegate-bot)"


MCP_SERVER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class McpServerSettings(_Strict):
    """One MCP server: a command run over stdio, or a Streamable HTTP endpoint.

    `${VAR}` in `command`, `env`, `url` and `headers` is replaced by that environment variable
    when the configuration loads; the values so read are secrets (scrubbed from logs and from
    what servers return)."""

    command: list[str] | None = Field(
        default=None, description="stdio: the program and its arguments"
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="stdio: environment of the server (it inherits only HOME, PATH and the like)",
    )
    cwd: str | None = Field(default=None, description="stdio: working directory")
    url: str | None = Field(default=None, description="Streamable HTTP endpoint")
    headers: dict[str, str] = Field(default_factory=dict, description="HTTP: request headers")
    trusted: bool = Field(
        default=False,
        description="take the server's read-only annotations as facts (see docs/TOOLS.md)",
    )
    timeout_s: float = Field(
        default=30,
        gt=0,
        le=120,  # the agent stops any tool call at 120 s
        description="per tool call; never more than the order's remaining wall-clock budget",
    )
    connect_timeout_s: float = Field(
        default=30, gt=0, le=300, description="starting the server and listing its tools"
    )
    max_result_chars: int = Field(
        default=20_000, gt=0, le=200_000, description="text of one result handed to the model"
    )
    _secrets: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _expand_environment(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        found: list[str] = []
        if isinstance(data, dict):
            data = {
                key: _expand(value, key, found)
                if key in ("command", "env", "url", "headers", "cwd")
                else value
                for key, value in data.items()
            }
        model = handler(data)
        model._secrets = found
        return model

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerSettings:
        if (self.command is None) == (self.url is None):
            raise ValueError(
                "give exactly one of `command` (a list: the program and its arguments, run over "
                "stdio) or `url` (a Streamable HTTP endpoint)"
            )
        if self.command is not None:
            if not self.command or not self.command[0].strip():
                raise ValueError("`command` is empty; give the program and its arguments")
            if self.headers:
                raise ValueError("`headers` is for `url` servers; a `command` server takes `env`")
        if self.url is not None:
            if not self.url.startswith(("http://", "https://")):
                raise ValueError(f"`url` must be an http(s) URL, got {self.url!r}")
            if self.env or self.cwd:
                raise ValueError("`env` and `cwd` are for `command` servers; a `url` takes `headers`")
        return self

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "stdio" if self.command is not None else "http"

    @property
    def secrets(self) -> list[str]:
        """The values read from the environment through `${VAR}`."""
        return list(self._secrets)


def _expand(value: Any, where: str, found: list[str]) -> Any:
    """`value` with every `${VAR}` replaced from the environment (strings, lists, dict values)."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ValueError(
                    f"{where} refers to ${{{name}}}, which is not set in the environment"
                )
            found.append(os.environ[name])
            return os.environ[name]

        return _ENV_REFERENCE.sub(replace, value)
    if isinstance(value, list):
        return [_expand(v, where, found) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}", found) for k, v in value.items()}
    return value


class FileSettings(_Strict):
    """Files a run hands in with its deliverable, and files a requester attached that it reads."""

    max_file_bytes: int = Field(default=5_000_000, gt=0, description="per handed-in file")
    max_total_bytes: int = Field(default=20_000_000, gt=0, description="all files of one hand-in")
    max_files: int = Field(default=10, gt=0, description="files per hand-in")
    read_max_bytes: int = Field(
        default=1_000_000, gt=0, description="largest attached file read_file downloads"
    )
    read_max_chars: int = Field(default=50_000, gt=0, description="text read_file hands the model")


class WebSearchSettings(_Strict):
    """The model provider's own web search (a server-side tool), charged per search."""

    max_uses: int = Field(default=5, gt=0, description="searches per model call at most")
    price_per_1000_usd: dict[str, float] = Field(
        default_factory=lambda: {"anthropic": 10.0, "openai": 10.0},
        description="per provider: USD per 1,000 searches (a provider not listed cannot search)",
    )


class ToolSettings(_Strict):
    plugins: list[str] = Field(
        default_factory=list,
        description="extra tools as 'module:attribute' (a Tool, a list of them or a factory)",
    )
    web_fetch: WebFetchSettings = Field(default_factory=WebFetchSettings)
    files: FileSettings = Field(default_factory=FileSettings)
    web_search: WebSearchSettings = Field(default_factory=WebSearchSettings)


class AuditSettings(_Strict):
    checkpoint_path: Path | None = Field(
        default=None,
        description="where `delegate run` appends signed audit checkpoints (a file, or a "
        "directory for audit-checkpoints.jsonl); somewhere the database's writer cannot write",
    )
    checkpoint_channel: str | None = Field(
        default=None,
        description="a Slack channel id `delegate run` also posts each checkpoint to",
    )
    checkpoint_interval_s: float = Field(
        default=3600, gt=0, description="how often `delegate run` writes a checkpoint"
    )


class EvalSettings(_Strict):
    max_usd: float | None = Field(
        default=None,
        gt=0,
        le=MAX_BUDGET_USD,
        description="`delegate eval`'s budget per run directory; set, it also stands for --yes",
    )
    concurrency: int = Field(default=4, ge=1, le=64, description="eval cases run at once")


class _YamlSource(PydanticBaseSettingsSource):
    """Shipped defaults.yaml, with the file named by DELEGATE_CONFIG merged over it."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ does the work

    def __call__(self) -> dict[str, Any]:
        data = copy.deepcopy(_shipped_defaults())
        path = os.environ.get("DELEGATE_CONFIG")
        if path:
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise ConfigError(
                    f"DELEGATE_CONFIG={path!r}: cannot read the file ({exc.strerror})"
                ) from exc
            user = _load_yaml_text(text, source=path)
            data = _deep_merge(data, user)
        return data


@functools.cache
def _shipped_defaults() -> dict[str, Any]:
    """defaults.yaml, parsed once per process (settings are loaded again for each app, CLI
    command and test; PyYAML takes tens of milliseconds over the file)."""
    return _load_yaml_text(resources.files("workers").joinpath("defaults.yaml").read_text())


def _load_yaml_text(text: str, *, source: str = "defaults.yaml") -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(_describe_yaml_error(exc, source)) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{source}: top-level key {key!r} is not a setting name")
    return data


def _describe_yaml_error(exc: yaml.YAMLError, source: str) -> str:
    """`delegate.yaml, line 3, column 5: not valid YAML: <what>`, without PyYAML's
    `in "<unicode string>"` (it was handed a string, not the file)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        text = f"{source}, line {mark.line + 1}, column {mark.column + 1}: not valid YAML: "
        text += exc.problem or "cannot be parsed"
        if exc.context and exc.context_mark is not None:
            text += f" ({exc.context} that began on line {exc.context_mark.line + 1})"
        return text
    detail = " ".join(str(exc).replace('"<unicode string>"', source).split())
    return f"{source}: not valid YAML: {detail}"


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _Problems(ValueError):
    """Mistakes found by one rule across sections, each reported on a line of its own."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Settings(BaseSettings):
    """Everything Delegate is configured with."""

    model_config = SettingsConfigDict(extra="forbid", case_sensitive=False, populate_by_name=True)

    # Environment contract: these names are fixed.
    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"
    port: int = Field(default=3000, ge=1, le=65535)
    worker_port: int = Field(
        default=3001,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("DELEGATE_WORKER_PORT", "worker_port"),
        description="`delegate worker`'s /healthz and /metrics (its --port overrides it)",
    )
    database_url: str = "sqlite+aiosqlite:///delegate.db"
    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    audit_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DELEGATE_AUDIT_KEY", "audit_key")
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", validation_alias=AliasChoices("DELEGATE_LOG_LEVEL", "log_level")
    )
    log_format: Literal["text", "json"] = Field(
        default="text", validation_alias=AliasChoices("DELEGATE_LOG_FORMAT", "log_format")
    )

    # From YAML (defaults shipped).
    routing: dict[Role, dict[str, Route]]
    prices: dict[str, Price]
    budgets: dict[WorkloadClass, Budget]
    priorities: dict[WorkloadClass, int]
    max_order_usd: float = Field(
        default=1000, gt=0, le=MAX_BUDGET_USD, description="no order's budget (Edit, Extend) above"
    )
    policies: dict[str, AuthorityPolicy]
    channels: dict[str, ChannelDefaults]
    teams: dict[str, TeamQuota]
    digests: list[DigestSchedule] = Field(default_factory=list)
    admins: list[str] = Field(default_factory=list)
    intake: IntakeSettings = Field(default_factory=IntakeSettings)
    slack: SlackSettings = Field(default_factory=SlackSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    tools: ToolSettings = Field(default_factory=ToolSettings)
    mcp_servers: dict[str, McpServerSettings] = Field(
        default_factory=dict, description="MCP servers whose tools policies may grant, by name"
    )
    audit: AuditSettings = Field(default_factory=AuditSettings)
    evals: EvalSettings = Field(default_factory=EvalSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Files before the environment, so that an empty `X` left beside `X_FILE` does not win.
        return (
            init_settings,
            SecretFilesSource(settings_cls),
            env_settings,
            _YamlSource(settings_cls),
        )

    @field_validator("slack_bot_token", "slack_app_token", "slack_signing_secret")
    @classmethod
    def _not_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value().strip()
        if not raw:
            return None
        lowered = raw.lower()
        if lowered in _PLACEHOLDERS or "your" in lowered or "..." in raw:
            raise ValueError("looks like a placeholder; paste the real value from your Slack app")
        return SecretStr(raw)

    @field_validator("slack_bot_token")
    @classmethod
    def _bot_token_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xoxb-"):
            raise ValueError("a bot token starts with 'xoxb-' (OAuth & Permissions page)")
        return value

    @field_validator("slack_app_token")
    @classmethod
    def _app_token_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xapp-"):
            raise ValueError("an app-level token starts with 'xapp-' (Basic Information page)")
        return value

    @field_validator("audit_key")
    @classmethod
    def _audit_key_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if len(value.get_secret_value().encode()) < MIN_AUDIT_KEY_BYTES:
            raise ValueError(
                f"an audit key needs at least {MIN_AUDIT_KEY_BYTES} bytes; "
                "generate one with: python3 -c 'import secrets; print(secrets.token_hex(32))'"
            )
        return value

    @field_validator("slack_api_url")
    @classmethod
    def _api_url_shape(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http(s) URL such as https://slack.com/api/")
        return value if value.endswith("/") else value + "/"

    @field_validator("database_url")
    @classmethod
    def _database_url_shape(cls, value: str) -> str:
        if value.startswith("sqlite:"):
            value = "sqlite+aiosqlite:" + value.removeprefix("sqlite:")
        elif value.startswith(("postgresql:", "postgres:")):
            value = "postgresql+asyncpg:" + value.split(":", 1)[1]
        if not value.startswith(("sqlite+aiosqlite:", "postgresql+asyncpg:")):
            raise ValueError(
                "expected sqlite+aiosqlite:///path.db or postgresql+asyncpg://user@host/db"
            )
        try:
            make_url(value)
        except Exception:
            raise ValueError(
                "cannot be parsed; expected postgresql+asyncpg://user:password@host:5432/db "
                "(percent-encode special characters in the password)"
            ) from None
        return value

    @model_validator(mode="after")
    def _references_resolve(self) -> Settings:
        problems: list[str] = []
        for role in ROLES:
            routes = self.routing.get(role)
            if not routes:
                problems.append(
                    f"routing.{role}: missing; every role needs at least a 'default' route"
                )
                continue
            if "default" not in routes and not all(w.value in routes for w in WorkloadClass):
                problems.append(
                    f"routing.{role}: needs a 'default' route or one per workload class "
                    f"({', '.join(w.value for w in WorkloadClass)})"
                )
            for key, route in routes.items():
                if key != "default" and key not in WorkloadClass.__members__.values():
                    problems.append(
                        f"routing.{role}.{key}: unknown workload class; expected 'default' or one of "
                        f"{', '.join(w.value for w in WorkloadClass)}"
                    )
                for ref in (route.primary, route.fallback):
                    if ref is not None and ref.model not in self.prices:
                        problems.append(
                            f"routing.{role}.{key}: model {ref.model!r} has no entry in prices; "
                            "add its USD per million tokens so budgets can be enforced"
                        )
        for wc in WorkloadClass:
            if wc not in self.budgets:
                problems.append(f"budgets.{wc.value}: missing; every workload class needs a budget")
        if "default" not in self.channels:
            problems.append("channels.default: missing; it applies to channels without an entry")
        if "default" not in self.teams:
            problems.append("teams.default: missing; users in no team are charged to it")
        team_of: dict[str, str] = {}
        for name, team in self.teams.items():
            for member in team.members:
                if member in team_of and team_of[member] != name:
                    problems.append(
                        f"teams.{name}.members: {member} is also in teams.{team_of[member]}; "
                        "a user belongs to one team, which their spend is charged to"
                    )
                team_of.setdefault(member, name)
        for i, digest in enumerate(self.digests):
            for team_name in digest.teams:
                if team_name != "all" and team_name not in self.teams:
                    problems.append(
                        f"digests[{i}].teams: {team_name!r} is not a team; expected 'all' or one "
                        f"of {', '.join(sorted(self.teams))}"
                    )
        for name, channel in self.channels.items():
            if channel.policy not in self.policies:
                problems.append(
                    f"channels.{name}.policy: {channel.policy!r} is not a policy; expected one of "
                    f"{', '.join(sorted(self.policies))}"
                )
            for extra in channel.allowed_policies:
                if extra not in self.policies:
                    problems.append(
                        f"channels.{name}.allowed_policies: {extra!r} is not a policy; expected one of "
                        f"{', '.join(sorted(self.policies))}"
                    )
            if channel.team not in self.teams:
                problems.append(
                    f"channels.{name}.team: {channel.team!r} is not a team; expected one of "
                    f"{', '.join(sorted(self.teams))}"
                )
        problems += _mcp_problems(self)
        if problems:
            raise _Problems(problems)
        return self

    # Lookups used across the engine.

    def route(self, role: Role, workload_class: WorkloadClass | str) -> Route:
        routes = self.routing[role]
        return routes.get(str(workload_class)) or routes["default"]

    def price(self, model: str) -> Price:
        return self.prices[model]

    def channel_defaults(self, channel: str | None) -> ChannelDefaults:
        return self.channels.get(channel or "", self.channels["default"])

    def team_of(self, user: str) -> str:
        return self._team_by_member.get(user, "default")

    @cached_property
    def _team_by_member(self) -> dict[str, str]:
        return {m: name for name, team in self.teams.items() for m in team.members}

    @property
    def socket_mode(self) -> bool:
        return self.slack_app_token is not None

    def secret_values(self) -> list[str]:
        """Every secret configured, so that logs can scrub them wherever they appear."""
        values = [
            self.slack_bot_token,
            self.slack_signing_secret,
            self.slack_app_token,
            self.anthropic_api_key,
            self.openai_api_key,
            self.audit_key,
        ]
        secrets = [v.get_secret_value() for v in values if v is not None]
        return secrets + [s for server in self.mcp_servers.values() for s in server.secrets]

    def audit_signing_key(self) -> AuditKey:
        """The key the audit trail is chained with (DELEGATE_AUDIT_KEY or DELEGATE_AUDIT_KEY_FILE),
        else none: the trail still links and counts its events, unkeyed."""
        if self.audit_key is None:
            return AuditKey.unkeyed()
        return AuditKey(self.audit_key.get_secret_value().encode())


def _mcp_problems(settings: Settings) -> list[str]:
    """Server names the tool names can be built from, and policies that name real servers."""
    problems: list[str] = []
    for name in settings.mcp_servers:
        if not MCP_SERVER_NAME.match(name) or "__" in name:
            problems.append(
                f"mcp_servers.{name}: a server name is a letter followed by up to 31 letters, "
                "digits, '_' or '-' (no '__'), e.g. 'warehouse'"
            )
    for policy_name, policy in settings.policies.items():
        for section, names in (("tools", policy.tools), ("approvals", list(policy.approvals))):
            for entry in names:
                server, dot, tool = entry.partition(".")
                if not dot:
                    continue
                if server not in settings.mcp_servers:
                    known = ", ".join(sorted(settings.mcp_servers)) or "none are configured"
                    problems.append(
                        f"policies.{policy_name}.{section}: {entry!r} names the MCP server "
                        f"{server!r}, which is not in mcp_servers ({known})"
                    )
                elif not tool:
                    problems.append(
                        f"policies.{policy_name}.{section}: {entry!r} names no tool; write "
                        f"'{server}.<tool>' or '{server}.*'"
                    )
    return problems


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning validation failures into one readable ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        fields = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
        note = origin_note(fields, os.environ)
        message = describe_validation_error(exc, config_file=os.environ.get("DELEGATE_CONFIG"))
        raise ConfigError(message + note) from None


def describe_validation_error(exc: ValidationError, *, config_file: str | None = None) -> str:
    """One line per mistake, naming the environment variable or the file and key it is in."""
    lines = ["Invalid configuration:"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        where = _where(loc, config_file)
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _Problems):
            lines += [f"  - {where}{problem}" for problem in cause.problems]
            continue
        message = _plain_message(err["type"], err["msg"])
        field = ".".join(loc)
        value = err.get("input")
        if field == "database_url":
            shown = repr(redact_url(str(value)))
        elif isinstance(value, dict | list) and len(repr(value)) > 60:
            # A rule across fields: its message names them; the whole section is noise.
            lines.append(f"  - {where}{_name(loc, where)}: {message}")
            continue
        else:
            shown = "<hidden>" if _is_secret_field(field) else repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        lines.append(f"  - {where}{_name(loc, where)} = {shown}: {message}")
    return "\n".join(lines)


def _where(loc: list[str], config_file: str | None) -> str:
    """`path: ` for a key read from the DELEGATE_CONFIG file; empty for the environment."""
    if not config_file or (loc and loc[0] in _ENV_NAMES and _in_environment(loc[0])):
        return ""
    return f"{config_file}: "


def _in_environment(field: str) -> bool:
    name = _ENV_NAMES[field]
    return any(key.upper() in (name, field.upper()) for key in os.environ)


def _name(loc: list[str], where: str) -> str:
    field = ".".join(loc) or "(top level)"
    return field if where else _ENV_NAMES.get(field, field)


def _plain_message(kind: str, message: str) -> str:
    """Pydantic's message without its `Value error, ` prefix, in a reader's words."""
    if kind == "extra_forbidden":
        return "not a setting Delegate knows (check the spelling and the indentation)"
    if kind == "missing":
        return "missing; this setting is required"
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


# Fields set from the environment are named as the user wrote them.
_ENV_NAMES = {
    name: name.upper()
    for name in (
        "slack_bot_token", "slack_signing_secret", "slack_app_token", "slack_api_url", "port",
        "database_url", "anthropic_api_key", "anthropic_base_url", "openai_api_key",
        "openai_base_url",
    )
} | {"audit_key": "DELEGATE_AUDIT_KEY",
     "worker_port": "DELEGATE_WORKER_PORT",
     "log_level": "DELEGATE_LOG_LEVEL", "log_format": "DELEGATE_LOG_FORMAT"}  # fmt: skip


def _is_secret_field(field: str) -> bool:
    # Case-blind: a value set from the environment is reported under its alias
    # (DELEGATE_AUDIT_KEY), not its field name.
    name = field.lower()
    if name.startswith("mcp_servers"):
        return True  # values there may hold what `${VAR}` read from the environment
    return any(word in name for word in ("token", "secret", "api_key", "audit_key", "password"))


def schedule_teams(schedule: DigestSchedule, settings: Settings) -> list[str]:
    """The teams a `digests:` entry reports on: those listed, or every configured team."""
    return list(schedule.teams) or sorted(settings.teams)


def schedule_for(settings: Settings, team: str) -> DigestSchedule | None:
    """The first `digests:` entry that reports on `team` (its channel and time zone)."""
    for schedule in settings.digests:
        if team in schedule_teams(schedule, settings):
            return schedule
    return None
