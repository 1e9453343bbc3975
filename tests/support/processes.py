"""Worker processes for the crash and multi-process tests: `delegate worker` started with an
environment pointed at the test's database and fake servers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.support.cli import free_port
from tests.support.databases import Database
from tests.support.settings import FAST_ENGINE, POLICIES, ROUTING

REPO = Path(__file__).resolve().parents[2]
_INHERITED_PREFIXES = ("DELEGATE_", "SLACK_", "ANTHROPIC_", "OPENAI_", "DATABASE_URL", "PGOPTIONS")


def worker_env(
    database: Database,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    *,
    engine: dict[str, Any] | None = None,
    slack_api_url: str | None = None,
    extra_config: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Environment for `delegate worker`, pointed at this test's fakes and DB.

    `extra_config` adds top-level sections to the YAML configuration (e.g. `teams`)."""
    config = tmp_path / "delegate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "engine": {**FAST_ENGINE, **(engine or {})},
                "routing": ROUTING,
                "policies": POLICIES,
                **(extra_config or {}),
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_PREFIXES)}
    env |= {
        **database.env(),
        "DELEGATE_CONFIG": str(config),
        "ANTHROPIC_API_KEY": fake_anthropic.api_key,
        "ANTHROPIC_BASE_URL": fake_anthropic.base_url,
        "OPENAI_API_KEY": fake_openai.api_key,
        "OPENAI_BASE_URL": fake_openai.base_url,
        "PYTHONPATH": str(REPO),
    }
    if slack_api_url:
        env |= {"SLACK_BOT_TOKEN": "xoxb-test", "SLACK_API_URL": slack_api_url}
    return env


async def spawn_worker(
    env: dict[str, str], tmp_path: Path, *, worker_id: str, concurrency: int = 1
) -> asyncio.subprocess.Process:
    log = (tmp_path / f"{worker_id}.log").open("wb")
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "worker",
        "--worker-id",
        worker_id,
        "--concurrency",
        str(concurrency),
        "--port",
        str(free_port()),
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def stop_worker(process: asyncio.subprocess.Process, *, timeout_s: float = 15) -> int:
    """SIGTERM, and wait for the graceful exit."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(process.wait(), timeout_s)


async def kill_worker(process: asyncio.subprocess.Process) -> int:
    """SIGKILL: no shutdown, no checkpoint, no goodbye; returns once the process is gone."""
    if process.returncode is None:
        process.send_signal(signal.SIGKILL)
    return await process.wait()
