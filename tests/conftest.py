"""Registers the test-support plugin (tests/support/plugin.py lists its fixtures and helpers)."""

pytest_plugins = ["tests.support.plugin"]


def pytest_xdist_auto_num_workers(config: object) -> int:
    """`-n auto`: two test processes per core (DELEGATE_TEST_WORKERS overrides). The suite
    mostly waits on subprocesses, sockets and databases, so one per core left the cores idle."""
    import os

    if os.environ.get("DELEGATE_TEST_WORKERS"):
        return int(os.environ["DELEGATE_TEST_WORKERS"])
    return 2 * (os.cpu_count() or 1)
