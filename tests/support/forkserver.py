"""A fork server for `delegate` commands: one process per test process imports what every
`delegate` start imports (about 1 to 2 s of CPU), and the model SDKs that a console's or an
eval's first model call imports (as much again), then forks a child for each command.

The suite runs a few hundred short commands (`delegate audit verify`, `doctor`, `show`,
`console`, ...). Each child is still a separate process with its own pipes, environment,
working directory, signals and exit code, and runs `bot.cli.main` exactly as the installed
`delegate` script does, ending by the interpreter's normal exit (atexit, thread joins); only the
import is shared. Long-running `delegate run`/`worker` processes, and every command when
TESTS_EXEC_DELEGATE=1, are started the ordinary way.

Run as a script: `python forkserver.py SOCKET SCRIPT`. Per request, on a Unix socket: a JSON
line {"argv", "env", "cwd"} with the command's stdin, stdout and stderr attached; it answers the
child's pid, then its exit code (negative: killed by that signal), a line each.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DELEGATE = Path(sys.executable).with_name("delegate")
EXEC_EVERY_COMMAND = os.environ.get("TESTS_EXEC_DELEGATE") == "1"

_server: subprocess.Popen[bytes] | None = None
_socket = ""


async def forked(
    argv: list[str], *, env: dict[str, str], cwd: Path, stdin: str | None, timeout: float
) -> tuple[int, bytes, bytes]:
    """Run `delegate ARGV` forked from this test process's fork server: (exit code, stdout,
    stderr). On `timeout` it is killed and TimeoutError raised."""
    path = _server_socket()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    if stdin is None:
        in_r, in_w = os.open(os.devnull, os.O_RDONLY), -1
    else:
        in_r, in_w = os.pipe()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        request = {"argv": argv, "env": env, "cwd": str(cwd)}
        socket.send_fds(sock, [json.dumps(request).encode() + b"\n"], [in_r, out_w, err_w])
    except OSError:
        sock.close()
        for fd in (out_r, err_r, in_w):
            if fd != -1:
                os.close(fd)
        raise
    finally:
        for fd in (in_r, out_w, err_w):  # the child has its own copies
            os.close(fd)
    feeding = None if stdin is None else asyncio.create_task(_feed(in_w, stdin.encode()))
    out, err = asyncio.create_task(_drain(out_r)), asyncio.create_task(_drain(err_r))
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    pid = 0
    try:
        async with asyncio.timeout(timeout):
            pid = int(await reader.readline())
            code = int(await reader.readline())
            if feeding is not None:
                await feeding
            return code, await out, await err
    except TimeoutError:
        if pid:
            os.kill(pid, signal.SIGKILL)
        raise
    finally:
        writer.close()
        for task in (feeding, out, err):
            if task is not None and not task.done():
                task.cancel()


async def _drain(fd: int) -> bytes:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0)
    )
    try:
        return await reader.read()
    finally:
        transport.close()


async def _feed(fd: int, data: bytes) -> None:
    def write() -> None:
        with os.fdopen(fd, "wb", 0) as pipe:
            try:
                pipe.write(data)
            except BrokenPipeError:  # it stopped reading: as Process.communicate, not an error
                pass

    await asyncio.to_thread(write)


def _server_socket() -> str:
    """Start this test process's fork server once (again if it died); its socket's path."""
    global _server, _socket
    if _server is None or _server.poll() is not None:
        directory = tempfile.mkdtemp(prefix="delegate-forkserver-")
        _socket = os.path.join(directory, "socket")
        log = os.path.join(directory, "log")
        with open(log, "wb") as errors:
            _server = subprocess.Popen(
                [sys.executable, __file__, _socket, str(DELEGATE)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
            )
        assert _server.stdout is not None
        if _server.stdout.readline() != b"ready\n":
            _server.wait()
            said = Path(log).read_text()
            shutil.rmtree(directory, ignore_errors=True)
            raise RuntimeError(f"the fork server did not start:\n{said}")
        atexit.register(_stop, _server, directory)
    return _socket


def _stop(server: subprocess.Popen[bytes], directory: str) -> None:
    server.kill()
    server.wait()
    shutil.rmtree(directory, ignore_errors=True)


def _serve(path: str, script: str) -> None:
    sys.path[0] = os.path.dirname(script)  # as the installed script's, not tests/support
    import bot.cli
    import workers.providers.anthropic
    import workers.providers.openai  # noqa: F401  (what a console's or eval's first call loads)

    bot.cli.build_parser()  # every start builds it: it imports the subcommands' modules
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        while not data.endswith(b"\n"):
            data += conn.recv(1 << 20)
        if os.fork() == 0:
            listener.close()
            _supervise(conn, json.loads(data), fds, script)  # never returns
        conn.close()
        for fd in fds:
            os.close(fd)


def _supervise(
    conn: socket.socket, request: dict[str, Any], fds: list[int], script: str) -> None:
    """Fork the command's process, report its pid and, once it ends, its exit code."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    pid = os.fork()
    if pid == 0:
        conn.close()
        _become_command(request, fds, script)
        return
    for fd in fds:
        os.close(fd)
    conn.sendall(f"{pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    os._exit(0)


def _become_command(request: dict[str, Any], fds: list[int], script: str) -> None:
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()  # a fresh interpreter reads TZ at start
    sys.argv = [script, *request["argv"]]
    import bot.cli

    # As the installed script does; SystemExit unwinds through _serve to a normal exit.
    sys.exit(bot.cli.main())


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])
