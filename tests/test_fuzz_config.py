"""Fuzzing the configuration file: whatever YAML an operator writes, `load_settings` either
accepts it or raises `ConfigError` with a message, never another exception (Proof issue)."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.support.fuzz import FAST, junk, odd_text
from workers.config import load_settings
from workers.errors import ConfigError
from workers.secret_files import SECRET_VARIABLES

DEFAULTS: dict[str, Any] = yaml.safe_load(
    resources.files("workers").joinpath("defaults.yaml").read_text()
)

ENV = (
    "SLACK_BOT_TOKEN",
    "SLACK_SIGNING_SECRET",
    "SLACK_APP_TOKEN",
    "SLACK_API_URL",
    "DATABASE_URL",
    "PORT",
    "DELEGATE_CONFIG",
    "DELEGATE_AUDIT_KEY",
    "DELEGATE_LOG_LEVEL",
    "DELEGATE_LOG_FORMAT",
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    *(f"{name}_FILE" for name in SECRET_VARIABLES.values()),
)


@pytest.fixture
def config_file(tmp_path: Path) -> Iterator[Path]:
    """DELEGATE_CONFIG points at this file for the whole test (every example rewrites it)."""
    path = tmp_path / "delegate.yaml"
    with pytest.MonkeyPatch.context() as mp:
        for name in ENV:
            mp.delenv(name, raising=False)
        mp.setenv("DELEGATE_CONFIG", str(path))
        yield path


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into the shipped defaults, sections and leaves alike."""
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for key, value in tree.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            out += _paths(value, (*prefix, i))
    return out


PATHS = _paths(DEFAULTS)

# Values an operator could plausibly get wrong: huge, negative, wrong type, nested junk.
wrong = st.one_of(
    junk,
    st.sampled_from(
        [
            10**400,
            -(10**30),
            1e308,
            float("inf"),
            float("-inf"),
            float("nan"),
            -1,
            0,
            "",
            "yes",
            "0x10",
            "1e999",
            [],
            {},
            [[[[]]]],
            {"": None},
            "anthropic:",
            ":model",
            "openai:gpt-unknown",
            "* * * * * * *",
        ]
    ),
    odd_text,
)


def _set(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    key, rest = path[0], path[1:]
    if isinstance(tree, dict):
        return {**tree, key: _set(tree.get(key), rest, value)}
    if isinstance(tree, list) and isinstance(key, int) and key < len(tree):
        return [*tree[:key], _set(tree[key], rest, value), *tree[key + 1 :]]
    return {key: _set(None, rest, value)}


@st.composite
def broken_configs(draw: st.DrawFn) -> dict[str, Any]:
    """The shipped defaults with a few sections or leaves replaced and unknown keys added."""
    config: Any = DEFAULTS
    for path in draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3)):
        config = _set(config, path, draw(wrong))
    for path in draw(st.lists(st.sampled_from(PATHS), max_size=2)):
        unknown = (*path[:-1], draw(st.text(min_size=1, max_size=12)))
        config = _set(config, unknown, draw(junk))
    assert isinstance(config, dict)
    return config


def _load(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    try:
        load_settings()
    except ConfigError as exc:
        message = str(exc)
        assert message.strip(), "a ConfigError must say what is wrong"
        assert "Traceback" not in message
        # Plain words: not pydantic's prefix, not PyYAML's name for a string it was handed.
        assert "Value error, " not in message and "<unicode string>" not in message


@FAST
@given(config=broken_configs())
def test_a_wrongly_typed_config_is_a_config_error(
    config_file: Path, config: dict[str, Any]
) -> None:
    _load(config_file, yaml.safe_dump(config, allow_unicode=True))


@FAST
@given(config=st.dictionaries(st.text(max_size=20), junk, max_size=6))
def test_unknown_sections_are_a_config_error(config_file: Path, config: dict[str, Any]) -> None:
    _load(config_file, yaml.safe_dump(config, allow_unicode=True))


YAML_TRICKS = [
    "routing: !!python/object/apply:os.system ['echo pwned']\n",
    "a: &a [*a]\n",
    "budgets: {quick: {max_usd: .nan}}\n",
    "budgets: {quick: {max_usd: .inf}}\n",
    "max_order_usd: 1e400\n",
    "port: 99999999999999999999999999\n",
    "admins: !!set {U1, U2}\n",
    "admins: !!binary aGVsbG8=\n",
    "digests: [{channel: C1, cron: 2024-01-01}]\n",
    "teams: {default: {weekly_usd: 2024-01-01}}\n",
    "engine: {lease_ttl_s: 1, heartbeat_s: 0.5}\n",
    "? [a, b]\n: c\n",
    "? {a: 1}\n: c\n",
    "1: 2\n",
    "null: 1\n",
    "channels: {1: {policy: default}}\n",
    "policies: {research: null}\n",
    "\t- tab\n",
    "%YAML 9.9\n---\na: 1\n",
    "--- a\n--- b\n",
    "\ufeffadmins: [U1]\n",
    "a: " + "[" * 200 + "]" * 200 + "\n",
]


@FAST
@given(
    text=st.one_of(
        st.sampled_from(YAML_TRICKS),
        st.text(max_size=300),
        st.lists(st.sampled_from(YAML_TRICKS), min_size=2, max_size=4).map("".join),
    )
)
def test_any_yaml_text_is_accepted_or_a_config_error(config_file: Path, text: str) -> None:
    _load(config_file, text)
