"""Registers the test-support plugin (tests/support/plugin.py lists its fixtures and helpers)."""

pytest_plugins = ["tests.support.plugin"]

