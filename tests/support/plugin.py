"""The test-support plugin, registered once in tests/conftest.py: every fixture a test module
uses without importing it.

- `fake_slack`, `fake_anthropic`, `fake_openai`: the fake servers (tests/fakes/fixtures.py)
- `database`, `store`, `sqlite_url`: the database the test runs on (databases.py)
- `settings_factory`: settings pointed at the fakes and that database (settings.py)
- `harness`: the engine harness (engine.py)
- `pipeline`: the bot and a worker pool on that store and the fakes (pipeline.py)

Helpers a test imports by name live next to them: `bot.py` (a running bot), `pipeline.py` (bot
plus worker pool), `processes.py` (worker processes), `slack.py` (modal state), `intake.py`
(scripted intake-model replies), `factories.py` (domain objects), `waiting.py` (waiting on
conditions, never on the clock), `cli.py` (the `delegate` command as a subprocess, short ones
forked from `forkserver.py`), `records.py` (rows only tests read back), `statements.py`
(statements an engine sends), `fuzz.py` (hypothesis settings and strategies).

It also sets how many test processes `-n auto` starts: one and a half per core.
"""

import os

import pytest

pytest_plugins = [
    "tests.fakes.fixtures",
    "tests.support.databases",
    "tests.support.settings",
    "tests.support.engine",
    "tests.support.pipeline",
]


def pytest_configure(config: pytest.Config) -> None:
    """The suite starts many Python processes (test processes, fork servers, `delegate run` and
    `worker`, MCP servers). Where PYTHONDONTWRITEBYTECODE is set (many container images set
    it), each compiled the app from source again, about 0.25 s of CPU apiece: they write the
    bytecode (into the ignored __pycache__ directories) and reuse it. Set before xdist starts
    its processes."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


@pytest.hookimpl(optionalhook=True)  # xdist's hook: without xdist (-p no:xdist) it is unused
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Tests wait about a quarter of their time (on `delegate` subprocesses, servers, conditions),
    so with one process per core the cores idled that long; half a process more per core keeps
    them busy (on 2 cores: 7 min 10 s against 8 min 0 s for the whole suite)."""
    cores = os.cpu_count() or 1
    return cores + cores // 2
