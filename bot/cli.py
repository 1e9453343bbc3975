"""`delegate`: run the bot and workers, manage the database, inspect the audit trail."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from workers import logs
from workers.config import Settings, load_settings
from workers.db import DATABASE_ERRORS, redact_error, redact_url
from workers.errors import ConfigError, DatabaseUnavailable, NotFound, SetupError

if TYPE_CHECKING:
    from workers.store import Store

log = logging.getLogger("delegate")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="delegate",
        description="Delegate: turn Slack requests into budgeted, verified work orders.",
        epilog="`delegate COMMAND --help` explains a command and its options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = _command(
        sub,
        "run",
        "run the Slack bot, a worker pool and the scheduler",
        "Serve Slack (Socket Mode with SLACK_APP_TOKEN, else HTTP on PORT), run work orders and "
        "post scheduled digests, in one process, until SIGTERM or Ctrl-C. Applies pending "
        "database migrations on start.",
    )
    run.add_argument("--host", default="0.0.0.0", help="HTTP bind address (default 0.0.0.0)")
    run.add_argument(
        "--concurrency", type=_at_least_one, default=2, help="work orders run at once (default 2)"
    )

    worker = _command(
        sub,
        "worker",
        "run only a worker pool (for scale-out on PostgreSQL)",
        "Claim and run queued work orders until SIGTERM or Ctrl-C, posting progress to Slack "
        "threads when SLACK_BOT_TOKEN is set (to the log otherwise). Run several beside "
        "`delegate run` on one PostgreSQL database to scale out.",
    )
    worker.add_argument(
        "--concurrency", type=_at_least_one, default=2, help="work orders run at once (default 2)"
    )
    worker.add_argument(
        "--worker-id", default=None, help="name in leases and the audit trail (default: host:pid)"
    )
    worker.add_argument(
        "--port",
        type=int,
        default=None,
        help="port of its /healthz and /metrics (default: DELEGATE_WORKER_PORT, or 3001)",
    )

    db = _command(
        sub,
        "db",
        "database maintenance",
        "Apply Delegate's migrations to DATABASE_URL, or show where the database stands.",
    )
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    _command(
        db_sub,
        "upgrade",
        "apply pending migrations",
        "Create Delegate's tables, or bring them to the latest schema (creates a SQLite file).",
    )
    _command(
        db_sub,
        "current",
        "print the applied and the latest migration",
        "Print the migration the database is at and the latest one; creates nothing.",
    )

    audit = _command(
        sub,
        "audit",
        "print an order's audit trail, verify every chain, or write a signed checkpoint",
        "`delegate audit WO-42 [--format md|json]` prints a trail; "
        "`delegate audit verify [--checkpoint PATH]` checks every chain and names the first "
        "broken event (and, with a checkpoint, any chain rolled back below it); "
        "`delegate audit checkpoint [--to PATH]` appends a signed checkpoint to PATH "
        "(default: audit.checkpoint_path).",
    )
    audit.add_argument(
        "target",
        metavar="WO-42|verify|checkpoint",
        help="an order (WO-42, wo-42 or 42), `verify` or `checkpoint`",
    )
    audit.add_argument(
        "--format", choices=["md", "json"], default="md", help="Markdown or JSON (default md)"
    )
    audit.add_argument(
        "--checkpoint",
        type=Path,
        metavar="PATH",
        help="verify: also check the trail against the latest checkpoint in PATH",
    )
    audit.add_argument(
        "--to",
        type=Path,
        metavar="PATH",
        help="checkpoint: the file (or directory) to append to (default: audit.checkpoint_path)",
    )

    console = _command(
        sub,
        "console",
        "delegate from a terminal: the Slack dialogue over standard input and output",
        "Draft a work order in a conversation on standard input and output, as in Slack, "
        "without Slack; prints the confirmed order's id. Needs a model provider key.",
    )
    console.add_argument("--user", default="console", help="who is asking (default: console)")
    console.add_argument("--tz", default="UTC", help="the requester's time zone (default: UTC)")

    from bot.digest_args import add_parser as add_digest_parser
    from bot.eval_cli import add_parser as add_eval_parser
    from bot.review_cli import add_parser as add_review_parser

    add_digest_parser(sub)
    add_review_parser(sub)
    add_eval_parser(sub)

    show = _command(
        sub,
        "show",
        "print an order's state, spend, deliverable and the verifier's verdicts",
        "Print one work order as a terminal reader needs it: state, requester, spend, deadline, "
        "the latest deliverable and the verifier's verdicts.",
    )
    show.add_argument("order", metavar="WO-42", help="the order: WO-42, wo-42 or 42")
    show.add_argument("--tz", default="UTC", help="time zone for times (default: UTC)")

    _command(
        sub,
        "schema",
        "print the work order's JSON Schema",
        "Print the JSON Schema of a work order, as the intake model fills it in.",
    )
    doctor = _command(
        sub,
        "doctor",
        "check configuration, database, Slack and model providers",
        "Check for real everything Delegate depends on (configuration, database, Slack tokens "
        "and scopes, a Socket Mode connection, provider keys and routed models, the audit key) "
        "and say how to fix what is wrong. Exits 0 when everything required works.",
    )
    doctor.add_argument(
        "--format", choices=["text", "json"], default="text", help="text or JSON (default text)"
    )
    doctor.add_argument(
        "--no-slack",
        dest="slack",
        action="store_false",
        help="skip the Slack checks (a local trial with `delegate console`)",
    )
    return parser


def _command(sub: Any, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=description)
    return parser


def _version() -> str:
    try:
        return metadata.version("delegate-bot")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


def _at_least_one(text: str) -> int:
    """An argparse type: a whole number of at least 1, refused before anything starts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number such as 2, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def order_number(text: str) -> int:
    """`WO-42`, `wo-42` or plain `42` -> 42; ValueError otherwise."""
    from workers.workorder import parse_order_id

    bare = text.strip()
    return parse_order_id(f"WO-{bare}" if bare.isascii() and bare.isdigit() else text)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (`delegate audit WO-1 | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "schema":
        return _schema()
    try:
        settings = load_settings()
    except ConfigError as exc:
        if args.command == "doctor" and args.format == "json":
            from bot.doctor import config_failure, render

            print(render([config_failure(str(exc))], format="json"))
        else:
            print(exc, file=sys.stderr)
        return EXIT_USAGE
    logs.configure(
        level=settings.log_level, format=settings.log_format, secrets=settings.secret_values()
    )
    handlers: dict[str, Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]] = {
        "run": _run,
        "worker": _worker,
        "db": _db,
        "audit": _audit,
        "doctor": _doctor,
        "console": _console,
        "show": _show,
        "digest": _digest,
        "review": _review,
        "eval": _eval,
    }
    try:
        return asyncio.run(handlers[args.command](settings, args))
    except (KeyboardInterrupt, asyncio.CancelledError):  # the latter: Ctrl-C pressed twice
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise  # a ConnectionError too, but about our output, not the database: main() handles it
    except (DatabaseUnavailable, SetupError) as exc:
        for line in str(exc).splitlines():
            print(f"delegate: {line}", file=sys.stderr)
        return EXIT_FAILED
    except DATABASE_ERRORS as exc:
        url = settings.database_url
        print(
            f"delegate: cannot use the database at {redact_url(url)} "
            f"({redact_error(exc, url)})\n  fix: check DATABASE_URL and that the server is running",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except OSError as exc:  # after DATABASE_ERRORS: a refused connection is an OSError too
        if exc.errno != errno.EADDRINUSE:
            raise
        port, variable = settings.port, "PORT"
        if args.command == "worker":
            port, variable = args.port or settings.worker_port, "--port or DELEGATE_WORKER_PORT"
        print(
            f"delegate: port {port} is already in use; set {variable} to a free port, "
            "or stop the program that holds it",
            file=sys.stderr,
        )
        return EXIT_FAILED


def _schema() -> int:
    from workers.workorder import WorkOrder

    print(json.dumps(WorkOrder.model_json_schema(), indent=2))
    return EXIT_OK


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    from bot.runner import missing_slack_credentials, run_bot

    missing = missing_slack_credentials(settings)
    if missing:
        from bot.messages import MISSING_SLACK_CREDENTIALS

        print(MISSING_SLACK_CREDENTIALS.format(missing=missing), file=sys.stderr)
        return EXIT_USAGE
    await run_bot(settings, host=args.host, concurrency=args.concurrency)
    return EXIT_OK


async def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from bot.runner import run_workers_only

    await run_workers_only(
        settings,
        concurrency=args.concurrency,
        worker_id=args.worker_id,
        port=args.port or settings.worker_port,
    )
    return EXIT_OK


async def _db(settings: Settings, args: argparse.Namespace) -> int:
    from workers.db import create_engine
    from workers.migrate import current_revision, head_revision, upgrade

    if args.db_command == "current" and not await _has_delegate_database(settings):
        return EXIT_FAILED
    engine = create_engine(settings.database_url)
    try:
        if args.db_command == "upgrade":
            before = await current_revision(engine)
            await upgrade(engine)
            after = await current_revision(engine)
            if before == after:
                print(f"Database is up to date (revision {after}).")
            else:
                print(f"Upgraded database from {before or 'empty'} to {after}.")
        else:
            print(f"applied: {await current_revision(engine) or 'none'}; latest: {head_revision()}")
    finally:
        await engine.dispose()
    return EXIT_OK


async def _has_delegate_database(settings: Settings) -> bool:
    """For read-only commands: say so when there is nothing to read, and create nothing."""
    from workers.db import create_engine
    from workers.migrate import schema_present

    engine = create_engine(settings.database_url)
    try:
        if await schema_present(engine):
            return True
    finally:
        await engine.dispose()
    print(
        f"delegate: no Delegate database at {redact_url(settings.database_url)}; "
        "set DATABASE_URL or run `delegate db upgrade`",
        file=sys.stderr,
    )
    return False


async def _audit(settings: Settings, args: argparse.Namespace) -> int:
    from workers.audit import SYSTEM_CHAIN, render_json, render_markdown
    from workers.store import Store
    from workers.workorder import format_order_id

    if not await _has_delegate_database(settings):
        return EXIT_FAILED
    store = Store.for_settings(settings)
    try:
        if args.target == "verify":
            return await _audit_verify(store, args.checkpoint)
        if args.target == "checkpoint":
            return await _audit_checkpoint(store, args.to or settings.audit.checkpoint_path)
        if args.target == SYSTEM_CHAIN:
            chain = SYSTEM_CHAIN
        else:
            try:
                chain = format_order_id(order_number(args.target))
            except ValueError as exc:
                print(exc, file=sys.stderr)
                return EXIT_USAGE
        try:
            await store.orders.get_order(chain) if chain != SYSTEM_CHAIN else None
        except NotFound as exc:
            print(exc, file=sys.stderr)
            return EXIT_FAILED
        records = await store.audit.audit_trail(chain)
        render = render_json if args.format == "json" else render_markdown
        print(render(chain, records))
        return EXIT_OK
    finally:
        await store.close()


async def _audit_verify(store: Store, checkpoint_path: Path | None) -> int:
    from workers.audit_checkpoint import CheckpointError, latest_checkpoint

    checkpoint = None
    if checkpoint_path is not None:
        try:
            checkpoint = latest_checkpoint(checkpoint_path, key=store.audit_key)
        except CheckpointError as exc:
            print(f"BROKEN checkpoint: {exc}")
            return EXIT_FAILED
    checked, breaks = await store.audit.verify_audit()
    chains = len(await store.audit.audit_chains())
    if checkpoint is not None:
        breaks += await store.audit.below_checkpoint(checkpoint)
    if breaks:
        for broken in breaks:
            print(f"BROKEN {broken}")
        print(f"{len(breaks)} of {chains} chains broken ({checked} events checked).")
        return EXIT_FAILED
    consistent = "" if checkpoint is None else f", consistent with checkpoint of {checkpoint.at}"
    print(f"OK: {chains} chains, {checked} events verified{consistent}.")
    return EXIT_OK


async def _audit_checkpoint(store: Store, path: Path | None) -> int:
    from workers.audit_checkpoint import append_checkpoint

    if path is None:
        print("delegate: say where: --to PATH, or set audit.checkpoint_path", file=sys.stderr)
        return EXIT_USAGE
    checkpoint = await store.audit.audit_checkpoint()
    try:
        written = append_checkpoint(path, checkpoint)
    except OSError as exc:
        print(f"delegate: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    if not checkpoint.keyed:
        print(
            "delegate: warning: no audit key (DELEGATE_AUDIT_KEY) is set, so anyone can forge "
            "this checkpoint",
            file=sys.stderr,
        )
    print(
        f"Checkpoint of {checkpoint.at}: {checkpoint.chains} chains, {checkpoint.events} events, "
        f"appended to {written}."
    )
    return EXIT_OK


def _stdin_line_reader() -> Callable[[], Awaitable[str]]:
    """Read a line of standard input on a daemon thread.

    A default-executor thread blocked in readline() would keep Ctrl-C from exiting until the
    user pressed Enter (asyncio.run waits for the executor); a daemon thread is simply dropped.
    """
    loop = asyncio.get_running_loop()

    async def read_line() -> str:
        future: asyncio.Future[str] = loop.create_future()

        def read() -> None:
            try:
                line = sys.stdin.readline()
            except Exception as exc:
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, line, None)

        threading.Thread(target=read, name="console-stdin", daemon=True).start()
        return await future

    return read_line


def _settle(future: asyncio.Future[str], line: str | None, error: Exception | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(line or "")


async def _show(settings: Settings, args: argparse.Namespace) -> int:
    from bot.show import render_order
    from workers.store import Store
    from workers.workorder import format_order_id

    try:
        number = order_number(args.order)
        ZoneInfo(args.tz)
    except (ValueError, ZoneInfoNotFoundError) as exc:
        print(f"delegate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not await _has_delegate_database(settings):
        return EXIT_FAILED
    store = Store.for_settings(settings)
    try:
        try:
            order = await store.orders.get_order(number)
        except NotFound:
            print(f"delegate: there is no work order {format_order_id(number)}", file=sys.stderr)
            return EXIT_FAILED
        row = await store.orders.get_row(number)
        deliverables = await store.runs.deliverables(number)
        rated = await store.reporting.order_feedback([format_order_id(number)])
    finally:
        await store.close()
    feedback = rated.get(format_order_id(number))
    print(
        render_order(
            order, row, deliverables, tz=args.tz, feedback=feedback.tally if feedback else None
        )
    )
    return EXIT_OK


async def _digest(settings: Settings, args: argparse.Namespace) -> int:
    from bot.digest_cli import run

    if not await _has_delegate_database(settings):
        return EXIT_FAILED
    return await run(settings, args)


async def _review(settings: Settings, args: argparse.Namespace) -> int:
    from bot.review_cli import run

    if not await _has_delegate_database(settings):
        return EXIT_FAILED
    return await run(settings, args)


async def _eval(settings: Settings, args: argparse.Namespace) -> int:
    from bot.eval_cli import export, run

    if args.eval_command == "export":
        if not await _has_delegate_database(settings):
            return EXIT_FAILED
        return await export(settings, args)
    return await run(settings, args)


async def _console(settings: Settings, args: argparse.Namespace) -> int:
    from bot.console import Console
    from workers.intake import IntakeEngine
    from workers.providers import ModelRouter
    from workers.store import Store

    interrupted = _cancel_on_ctrl_c()
    store = Store.for_settings(settings)
    try:
        await store.upgrade()
        engine = IntakeEngine(settings, ModelRouter.from_settings(settings, store))
        # Bytes that are not UTF-8 become U+FFFD instead of a UnicodeDecodeError.
        sys.stdin.reconfigure(errors="replace")  # type: ignore[union-attr]
        order_id = await Console(
            settings,
            store=store,
            engine=engine,
            user=args.user,
            tz=args.tz,
            read_line=_stdin_line_reader(),
        ).run()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not interrupted.is_set() or task is None:
            raise
        task.uncancel()
        return EXIT_INTERRUPTED
    finally:
        await store.close()
    return EXIT_OK if order_id else EXIT_FAILED


def _cancel_on_ctrl_c() -> asyncio.Event:
    """Ctrl-C cancels the running command, whichever of its threads the kernel hands SIGINT to;
    the event says it was pressed.

    asyncio.run's own handler runs only when the main thread next runs Python code. Delivered to
    the thread blocked reading standard input, the signal left an idle loop asleep and the
    console hung; the loop's handler wakes it through its self-pipe."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    pressed = asyncio.Event()

    def interrupt() -> None:
        if not pressed.is_set():  # a second press must not cut the clean-up short
            pressed.set()
            task.cancel()

    loop.add_signal_handler(signal.SIGINT, interrupt)
    return pressed


async def _doctor(settings: Settings, args: argparse.Namespace) -> int:
    from bot.doctor import render, run_checks

    results = await run_checks(settings, slack=args.slack)
    print(render(results, format=args.format))
    return EXIT_FAILED if any(not r.ok for r in results) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
