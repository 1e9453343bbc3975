"""MCP call overhead: one tool call through Delegate's MCP tool wrapper, over stdio and over
Streamable HTTP, against calling the same Python function directly.

    python -m bench.mcp_overhead [--calls 500] [--warmup 50]
                                 [--query "SELECT value FROM meta WHERE key = 'data_as_of'"]

The server is the README's example warehouse (examples/mcp_sqlite/server.py) on a fresh
churn.db in a temporary directory. Each path runs the same `read_query`, one call at a time:

- direct: `Warehouse.read_query(query)` in this process, the function the server's tool calls;
- stdio: `McpTool.run` (schema validation, the call, secret scrubbing, the size cap) on a server
  Delegate started as a subprocess, then `fence`, as the agent does with every result;
- http: the same over Streamable HTTP, the server running the SDK's app under uvicorn on
  127.0.0.1 in a subprocess.

After `--warmup` calls per path, `--calls` calls are timed one by one: p50/p95/p99 per call,
calls per second (sequential), and each path's p50 minus the direct p50. The load average
is printed before and after (the machine may be shared). Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from bench._setup import machine, percentile
from tests.support.cli import free_port
from workers.config import McpServerSettings
from workers.tools.mcp import McpServers, McpTool
from workers.untrusted import fence

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "mcp_sqlite"
DEFAULT_QUERY = "SELECT value FROM meta WHERE key = 'data_as_of'"
# Scrubbed from every result, as Delegate's own secrets are: the scrub has work to do.
SECRETS = ["xoxb-bench-0000000000-secret", "sk-bench-000000000000000000000000"]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"mcp_sqlite_{name}", EXAMPLE / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def serve_http(db: str, port: int) -> None:
    """The example server over Streamable HTTP (run in a subprocess by `main`)."""
    import uvicorn

    example = _load("server")
    app = example.build_server(example.Warehouse(Path(db))).streamable_http_app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _wait_for_port(port: int, process: subprocess.Popen[bytes], deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the HTTP server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the HTTP server did not start listening")


def _sources(entries: dict[str, dict[str, Any]]) -> McpServers:
    configured = {name: McpServerSettings(**entry) for name, entry in entries.items()}
    settings = SimpleNamespace(mcp_servers=configured, secret_values=lambda: SECRETS)
    return McpServers(settings)  # type: ignore[arg-type]


async def _time(
    call: Callable[[], Awaitable[str]], *, calls: int, warmup: int
) -> tuple[list[float], float]:
    for _ in range(warmup):
        await call()
    samples = []
    began = time.perf_counter()
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples, time.perf_counter() - began


def _row(label: str, samples: list[float], total_s: float, baseline: float | None) -> str:
    p50, p95, p99 = (percentile(samples, q) or 0.0 for q in (0.5, 0.95, 0.99))
    extra = "" if baseline is None else f"{(p50 - baseline) * 1e3:8.3f}"
    return (
        f"| {label:<7} | {p50 * 1e3:8.3f} | {p95 * 1e3:8.3f} | {p99 * 1e3:8.3f} "
        f"| {len(samples) / total_s:8.0f} | {extra:>8} |"
    )


async def run(args: argparse.Namespace, db: Path, port: int) -> None:
    example = _load("server")
    warehouse = example.Warehouse(db)

    async def direct() -> str:
        return str(warehouse.read_query(args.query))

    sources = _sources(
        {
            "stdio": {
                "command": [sys.executable, str(EXAMPLE / "server.py"), "--db", str(db)],
                "trusted": True,
            },
            "http": {"url": f"http://127.0.0.1:{port}/mcp", "trusted": True},
        }
    )
    try:
        await sources.start()
        tools: dict[str, McpTool] = {t.grant_name: t for t in sources.tools()}
        ctx: Any = SimpleNamespace(remaining_s=60.0)

        def through(tool: McpTool) -> Callable[[], Awaitable[str]]:
            async def call() -> str:
                result = await tool.run({"query": args.query}, ctx)
                if result.is_error:
                    raise RuntimeError(result.content)
                return fence(result.content, result.untrusted_source or "")

            return call

        paths = {
            "direct": direct,
            "stdio": through(tools["stdio.read_query"]),
            "http": through(tools["http.read_query"]),
        }
        print(f"result: {await paths['stdio']()!r}"[:200])
        print()
        print("| path    | p50 ms   | p95 ms   | p99 ms   | calls/s  | +p50 ms  |")
        print("|---------|----------|----------|----------|----------|----------|")
        baseline: float | None = None
        for label, call in paths.items():
            samples, total_s = await _time(call, calls=args.calls, warmup=args.warmup)
            print(_row(label, samples, total_s, baseline), flush=True)
            if baseline is None:
                baseline = percentile(samples, 0.5)
    finally:
        await sources.close()


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-http":
        serve_http(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="timed calls per path")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls per path first")
    parser.add_argument("--query", default=DEFAULT_QUERY, help="the read_query every call runs")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"query: {args.query}; {args.calls} calls per path after {args.warmup} warm-up calls")
    with tempfile.TemporaryDirectory(prefix="mcp-bench-") as tmp:
        db = Path(tmp) / "churn.db"
        _load("make_db").make_db(db)
        port = free_port()
        http = subprocess.Popen(
            [sys.executable, "-m", "bench.mcp_overhead", "--serve-http", str(db), str(port)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for_port(port, http)
            asyncio.run(run(args, db, port))
        finally:
            http.terminate()
            http.wait(timeout=10)
    print()
    print(f"after: {machine()}")


if __name__ == "__main__":
    main()
