"""Registers the test-support plugin (tests/support/plugin.py lists its fixtures and helpers)."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.support.plugin"]


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: two test processes per core. Most tests spend their time waiting on a fake
    server, a subprocess or a poll, not computing, so one process per core leaves cores idle."""
    return 2 * (os.cpu_count() or 1)
