"""Secrets read from files: `X_FILE=/run/secrets/x` instead of `X=value` (the Docker and
Kubernetes secrets convention), so a secret need not sit in the process environment.

One settings source for every secret variable. The file's content is the value with surrounding
whitespace removed: no token, key or URL has any, an editor or `echo` adds some, and it is how
DELEGATE_AUDIT_KEY_FILE was always read, so audit chains keyed from such a file still verify. Setting both `X` and `X_FILE` is an error
rather than a silent choice, and a file that cannot be read is named with its variable; the
content itself is never shown.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

from workers.errors import ConfigError

# A secret is a line; more means the variable points at the wrong file (a log, /dev/zero).
MAX_SECRET_BYTES = 64 * 1024

# Settings field -> the environment variable that holds it; `<variable>_FILE` names a file.
SECRET_VARIABLES: dict[str, str] = {
    "slack_bot_token": "SLACK_BOT_TOKEN",
    "slack_signing_secret": "SLACK_SIGNING_SECRET",
    "slack_app_token": "SLACK_APP_TOKEN",
    "anthropic_api_key": "ANTHROPIC_API_KEY",
    "openai_api_key": "OPENAI_API_KEY",
    "database_url": "DATABASE_URL",  # it carries the database password
    "audit_key": "DELEGATE_AUDIT_KEY",
}


def file_variables(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Settings field -> (`X_FILE`, path) for each secret set through a file.

    Names match case-insensitively, as the settings' own environment source does; an empty
    value counts as unset, so a compose file may pass `X: ${X:-}` alongside `X_FILE`.
    """
    upper = {name.upper(): value for name, value in environ.items()}
    found: dict[str, tuple[str, str]] = {}
    for field, variable in SECRET_VARIABLES.items():
        path = upper.get(f"{variable}_FILE", "")
        if not path:
            continue
        if upper.get(variable, "").strip():
            raise ConfigError(
                f"{variable} and {variable}_FILE are both set; set only one of them "
                f"({variable}_FILE names a file holding the value)"
            )
        found[field] = (f"{variable}_FILE", path)
    return found


def read_secret_file(variable: str, path: str) -> str:
    """The secret in `path` without surrounding whitespace; a ConfigError naming `variable` if the
    file cannot be read as text."""
    try:
        with Path(path).open("rb") as file:
            data = file.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            f"{variable} = {path!r}: cannot read the file ({exc.strerror or type(exc).__name__})"
        ) from None
    if len(data) > MAX_SECRET_BYTES:
        raise ConfigError(
            f"{variable} = {path!r}: the file is larger than {MAX_SECRET_BYTES // 1024} KiB; "
            "point it at a file holding only the secret"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{variable} = {path!r}: the file is not UTF-8 text") from None
    return text.strip()


def origin_note(fields: set[str], environ: Mapping[str, str]) -> str:
    """Lines telling which of `fields` were read from a file, for a validation message."""
    try:
        used = file_variables(environ)
    except ConfigError:
        return ""
    return "".join(
        f"\n  ({SECRET_VARIABLES[field]} was read from {variable} = {path!r})"
        for field, (variable, path) in used.items()
        if field in fields
    )


class SecretFilesSource(PydanticBaseSettingsSource):
    """Every `X_FILE` variable, read into its setting."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ does the work

    def __call__(self) -> dict[str, Any]:
        return {
            field: read_secret_file(variable, path)
            for field, (variable, path) in file_variables(os.environ).items()
        }
