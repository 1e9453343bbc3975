"""MCP servers for the tests: the SDK-built test server over stdio or Streamable HTTP, the
hand-written 2024-11-05 server, and the published mcp-server-time."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import free_port

REPO = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 30.0


def stdio_server(**extra: Any) -> dict[str, Any]:
    """mcp_servers entry: the test server as a subprocess over stdio."""
    return {
        "command": [sys.executable, "-m", "tests.fakes.mcp_server", "stdio"],
        "cwd": str(REPO),
        **extra,
    }


def legacy_server(**extra: Any) -> dict[str, Any]:
    return {
        "command": [sys.executable, "-m", "tests.fakes.mcp_legacy_server"],
        "cwd": str(REPO),
        **extra,
    }


def time_server(**extra: Any) -> dict[str, Any]:
    """mcp-server-time, installed from PyPI as a dev dependency."""
    program = shutil.which("mcp-server-time", path=str(Path(sys.executable).parent))
    assert program, "mcp-server-time is a dev dependency; install requirements/dev.txt"
    return {"command": [program, "--local-timezone", "UTC"], **extra}


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the MCP test server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # polling a condition (the port accepts), bounded by the deadline
    raise RuntimeError("the MCP test server did not start listening")


@pytest.fixture(scope="module")
def http_server_url() -> Iterator[str]:
    """The test server over Streamable HTTP on 127.0.0.1, one process per test module."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.mcp_server", "http", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
