"""Logging: one line per event, in text or JSON, carrying the order it is about.

Every line logged while a run is under way carries its order id, attempt, worker id and the role
of the model call in progress (set with `bind()` / `scope()` on a context variable, so tasks of
one run share it and other runs do not see it). `grep WO-42` over several processes' logs
follows one order. Known token and key shapes, and any secret handed to `configure()`, are
replaced before a line is written, whatever code logged it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
CONTEXT_FIELDS = ("order", "attempt", "worker", "role")

_context: ContextVar[dict[str, str]] = ContextVar("delegate_log_context", default={})  # noqa: B039

# Slack tokens, app tokens and provider keys, wherever they appear in a message.
_SECRET_SHAPES = re.compile(
    r"xox[abposr]-[A-Za-z0-9-]{6,}|xapp-[A-Za-z0-9-]{6,}|sk-(?:ant-)?[A-Za-z0-9_-]{6,}"
)
# Library lines that say nothing an operator can act on, at every start.
_NOISE = (
    ("slack_bolt", "As you gave `client` as well, `token` will be unused."),
)
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def bind(**fields: object) -> None:
    """Add fields to every line logged from here on in this task (and tasks it starts)."""
    _context.set({**_context.get(), **{k: str(v) for k, v in fields.items() if v is not None}})


@contextlib.contextmanager
def scope(**fields: object) -> Iterator[None]:
    """Add fields to the lines logged inside the block."""
    token = _context.set(
        {**_context.get(), **{k: str(v) for k, v in fields.items() if v is not None}}
    )
    try:
        yield
    finally:
        _context.reset(token)


REDACTED = "[redacted]"
MIN_SECRET_CHARS = 8
"""Values shorter than this would redact ordinary words; a real secret is far longer."""


def secrets_to_scrub(values: Iterable[str]) -> list[str]:
    return [v for v in values if v and len(v) >= MIN_SECRET_CHARS]


def scrub_secrets(value: Any, secrets: Sequence[str]) -> Any:
    """`value` with every secret replaced wherever it appears in a string, in nested dicts and
    lists too (keys included): for text from outside (model output) on its way in or out."""
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {scrub_secrets(k, secrets): scrub_secrets(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_secrets(v, secrets) for v in value]
    return value


def scrub_token_shapes(text: str) -> str:
    """`text` with every known token and key shape (Slack, Anthropic, OpenAI) replaced."""
    return _SECRET_SHAPES.sub(REDACTED, text)


class _Enrich(logging.Filter):
    """Attach the bound context, drop known noise, and scrub secrets from the message."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 8]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(record.name.startswith(name) and message == text for name, text in _NOISE):
            return False
        clean = self.scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        record.delegate_context = dict(_context.get())
        return True

    def scrub(self, text: str) -> str:
        text = _SECRET_SHAPES.sub("[redacted]", text)
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return text


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = _fields(record)
        if context:
            line += " [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the run's context, extras."""

    def __init__(self, scrub: _Enrich) -> None:
        super().__init__()
        self.scrubber = scrub

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.scrubber.scrub(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The run's context, then whatever was passed with `extra=` (it wins on a clash)."""
    fields: dict[str, Any] = dict(getattr(record, "delegate_context", {}))
    for key, value in vars(record).items():
        if key not in _RECORD_ATTRS and key != "delegate_context":
            fields[key] = value
    return fields


def configure(
    *, level: str = "INFO", format: LogFormat = "text", secrets: Iterable[str] = ()
) -> None:
    """Route every logger to stderr in `format`; quiet libraries' start-up chatter."""
    enrich = _Enrich(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(enrich)
    handler.setFormatter(JsonFormatter(enrich) if format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if level != "DEBUG":
        # Alembic announces each of its plugins, the SDKs' HTTP clients every request, and
        # APScheduler every job it adds, runs and finishes, at INFO; what an operator needs of
        # those is in Delegate's own lines (its failures still show, at WARNING and above).
        for chatty in ("alembic", "apscheduler", "httpx", "httpx2", "httpcore"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
