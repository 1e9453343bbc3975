"""The `delegate` command run as a real subprocess, with an environment the developer's shell
cannot leak into."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

DELEGATE = Path(sys.executable).with_name("delegate")

# Variables a developer's shell might carry that would change what the CLI sees.
_SCRUB = (
    "SLACK_BOT_TOKEN",
    "SLACK_SIGNING_SECRET",
    "SLACK_APP_TOKEN",
    "SLACK_API_URL",
    "DATABASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "DELEGATE_CONFIG",
    "DELEGATE_AUDIT_KEY",
    "DELEGATE_AUDIT_KEY_FILE",
    "DELEGATE_LOG_FORMAT",
    "DELEGATE_LOG_LEVEL",
    "PORT",
    "PGOPTIONS",
)


def cli_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(values)
    return env


async def delegate(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    """Run `delegate ARGS`; return (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        str(DELEGATE),
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
