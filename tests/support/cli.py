"""The `delegate` command run as a real subprocess, with an environment the developer's shell
cannot leak into: short commands forked from the fork server (forkserver.py), `delegate run`
and `delegate worker` started afresh."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.support.forkserver import DELEGATE, EXEC_EVERY_COMMAND, forked
from workers.secret_files import SECRET_VARIABLES

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
    "DELEGATE_WORKER_PORT",
    "PGOPTIONS",
)
# ... and the files that hold secrets instead.
_SCRUB += tuple(f"{name}_FILE" for name in SECRET_VARIABLES.values())


def cli_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(values)
    return env


async def delegate(
    *args: str,
    env: dict[str, str],
    cwd: Path | None = None,
    timeout: float = 60,
    stdin: str | None = None,
) -> tuple[int, str, str]:
    """Run `delegate ARGS` (forked from the fork server, see forkserver.py), `stdin` its
    input (none: /dev/null); return (exit code, stdout, stderr)."""
    if EXEC_EVERY_COMMAND:
        proc = await asyncio.create_subprocess_exec(
            str(DELEGATE),
            *args,
            env=env,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        given = None if stdin is None else stdin.encode()
        out, err = await asyncio.wait_for(proc.communicate(given), timeout)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()
    code, out_bytes, err_bytes = await forked(
        [*args], env=env, cwd=cwd or Path.cwd(), stdin=stdin, timeout=timeout
    )
    return code, out_bytes.decode(), err_bytes.decode()


def provider_env(fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI) -> dict[str, str]:
    """Keys and URLs for both model providers' fakes: `delegate run` and `delegate worker`
    refuse to start without a key for every routed provider."""
    return {
        "ANTHROPIC_API_KEY": fake_anthropic.api_key,
        "ANTHROPIC_BASE_URL": fake_anthropic.base_url,
        "OPENAI_API_KEY": fake_openai.api_key,
        "OPENAI_BASE_URL": fake_openai.base_url,
    }


async def spawn_delegate(
    *args: str, env: dict[str, str], cwd: Path, log: Path
) -> asyncio.subprocess.Process:
    """Start `delegate ARGS` in the background, its output going to the file `log` (a pipe
    nobody reads would fill up and stall it)."""
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            str(DELEGATE), *args, env=env, cwd=cwd, stdout=out, stderr=asyncio.subprocess.STDOUT
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def health(port: int) -> tuple[int, dict[str, Any]] | None:
    """`GET /healthz` of a `delegate run` on `port`: (status, body), None while nothing answers."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as resp,
        ):
            return resp.status, await resp.json()
    except aiohttp.ClientConnectionError:
        return None


async def stop_delegate(proc: asyncio.subprocess.Process, *, within: float = 30) -> str:
    """SIGTERM, then the exit; stderr. Fails, killing it and showing what it wrote, if it does
    not exit `within`."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    assert proc.stderr is not None
    err = asyncio.create_task(proc.stderr.read())
    # A full stdout pipe would stall it: drained, not kept.
    out = asyncio.create_task(proc.stdout.read()) if proc.stdout is not None else None
    try:
        await asyncio.wait_for(proc.wait(), within)
        if out is not None:
            await out
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(
            f"delegate did not exit within {within} s of SIGTERM; it wrote:\n"
            + (await err).decode()[-6000:]
        ) from None
    return (await err).decode()
