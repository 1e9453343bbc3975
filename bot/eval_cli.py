"""`delegate eval`: run the suites on model routes and gate on thresholds; `delegate eval
export`: reviewers' decisions as a private verify suite. The work is in workers.evals."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workers.config import ModelRef, Role, Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_MAX_USD = 5.0


def _command(sub: Any, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=description)
    return parser


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number such as 4, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_parser(sub: Any) -> None:
    evals = _command(
        sub,
        "eval",
        "score model routes on the intake and verify suites; export reviewers' decisions",
        "Run the shipped suites (intake, verify) and suite files through the real intake engine "
        "and verifier on the configured routes, or on --route overrides (several for one role "
        "compare them side by side). Writes results.jsonl, report.md, report.json and chart.png "
        "to --out; a second run with the same --out skips finished cases. Sends nothing to a "
        "provider without --yes or a configured budget (evals.max_usd). Exits 1 when a "
        "threshold is crossed or a case did not finish. See docs/EVALS.md.",
    )
    evals.add_argument(
        "--suite",
        action="append",
        metavar="NAME|FILE",
        help="intake, verify, or a .jsonl suite file; repeatable (default: intake and verify)",
    )
    evals.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="ROLE=PROVIDER:MODEL",
        help="run ROLE (intake or verify) on this model instead of the configured route; "
        "repeatable, several for one role compare them",
    )
    evals.add_argument(
        "--yes", action="store_true", help="send the cases to the model providers (costs money)"
    )
    evals.add_argument(
        "--max-usd",
        type=_positive_usd,
        default=None,
        help="budget over the run directory (default: evals.max_usd, else 5)",
    )
    evals.add_argument(
        "--concurrency",
        type=_at_least_one,
        default=None,
        help="cases at once (default: evals.concurrency, 4)",
    )
    evals.add_argument(
        "--out", type=Path, default=None, help="run directory (default: eval-runs/<UTC time>)"
    )
    evals.add_argument(
        "--min",
        action="append",
        default=[],
        metavar="SUITE.METRIC=N",
        help="fail (exit 1) when a route scores below N, e.g. verify.kappa=0.6",
    )
    evals.add_argument(
        "--max",
        action="append",
        default=[],
        metavar="SUITE.METRIC=N",
        help="fail (exit 1) when a route scores above N, e.g. verify.false_accept=0.1",
    )
    actions = evals.add_subparsers(dest="eval_command", metavar="[export]")
    export = _command(
        actions,
        "export",
        "write reviewers' decisions as a private verify suite",
        "Every reviewer decision since --since becomes a verify case: the order's criteria, "
        "the deliverable decided on, and the decision as the case's label. Keep the file "
        "private; --redact replaces emails, URLs, Slack mentions and secret-looking strings.",
    )
    export.add_argument(
        "--since", required=True, metavar="DATE", help="decisions from this UTC date (2026-11-01)"
    )
    export.add_argument("--redact", action="store_true", help="replace personal data and secrets")
    export.add_argument("--out", type=Path, required=True, help="the suite file to write")


def _positive_usd(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an amount such as 5 or 0.50, got {text!r}") from None
    if not value > 0 or value > 1_000_000:
        raise argparse.ArgumentTypeError(f"must be above 0 (and sane), got {text}")
    return value


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"delegate: {message}", file=sys.stderr)
    return code


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from workers.evals import report as reporting
    from workers.evals import runner
    from workers.evals.cases import SHIPPED, SuiteError, load_suite
    from workers.evals.routes import EVAL_ROLES, RouteError, parse_route, variants

    try:
        suites = [load_suite(spec) for spec in dict.fromkeys(args.suite or SHIPPED)]
    except SuiteError as exc:
        return _fail(str(exc))
    names = [s.name for s in suites]
    if len(set(names)) != len(names):
        return _fail(f"two suites are named alike ({', '.join(names)}); rename a file")
    overrides: dict[Role, list[ModelRef]] = {role: [] for role in EVAL_ROLES}
    try:
        for text in args.route:
            role, ref = parse_route(text)
            overrides[role].append(ref)
        routes = {role: variants(settings, role, overrides[role]) for role in EVAL_ROLES}
        thresholds = [reporting.parse_threshold(t, "min", suites) for t in args.min]
        thresholds += [reporting.parse_threshold(t, "max", suites) for t in args.max]
    except (RouteError, reporting.ThresholdError) as exc:
        return _fail(str(exc))
    count = sum(len(s.cases) * len(routes[s.kind]) for s in suites)
    configured = settings.evals.max_usd
    if not args.yes and configured is None:
        return _fail(
            f"not sending {count} eval cases to model providers without --yes (or a configured "
            "budget, evals.max_usd); they cost money"
        )
    missing = _missing_keys(settings, routes, {s.kind for s in suites})
    if missing:
        return _fail(missing)
    max_usd = args.max_usd or configured or DEFAULT_MAX_USD
    out_dir = args.out or Path("eval-runs") / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    concurrency = args.concurrency or settings.evals.concurrency
    print(
        f"Running {count} cases ({', '.join(names)}) into {out_dir}, {concurrency} at a time, "
        f"within ${max_usd:.2f}.",
        file=sys.stderr,
    )
    from workers.budget import usd_to_micro

    outcome = await runner.run(
        suites,
        routes,
        out_dir=out_dir,
        max_micro_usd=usd_to_micro(max_usd),
        concurrency=concurrency,
    )
    report = reporting.build(suites, routes, outcome)
    text = reporting.markdown(report)
    (out_dir / "report.md").write_text(text)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "chart.png").write_bytes(reporting.render_chart(report))
    print(text)
    print(f"Written: {out_dir / 'report.md'}, report.json, chart.png, results.jsonl", file=sys.stderr)
    if outcome.skipped:
        print(f"{outcome.skipped} cases were finished in {out_dir} already: skipped.", file=sys.stderr)
    code = EXIT_OK
    not_run = sum(len(r["not_run"]) for s in report["suites"] for r in s["routes"])
    errors = sum(len(r["errors"]) for s in report["suites"] for r in s["routes"])
    if outcome.budget_stopped:
        print(
            f"delegate: the budget of ${max_usd:.2f} is spent (${report['spent_usd']:.4f} "
            f"charged in {out_dir}); {not_run} cases did not run. Re-run with the same --out "
            "and a larger --max-usd to finish them.",
            file=sys.stderr,
        )
        code = EXIT_FAILED
    if errors:
        print(
            f"delegate: {errors} cases failed at the provider (see report.md); re-run with the "
            "same --out to retry them.",
            file=sys.stderr,
        )
        code = EXIT_FAILED
    for problem in reporting.crossed(report, thresholds):
        print(f"delegate: threshold crossed: {problem}", file=sys.stderr)
        code = EXIT_FAILED
    return code


def _missing_keys(settings: Settings, routes: dict[Role, Any], kinds: set[str]) -> str | None:
    """Every primary model routed to needs its provider's key (or, for OpenAI, a base URL)."""
    have = {
        "anthropic": settings.anthropic_api_key is not None,
        "openai": settings.openai_api_key is not None or bool(settings.openai_base_url),
    }
    for role, found in routes.items():
        if role not in kinds:
            continue
        for variant in found:
            for route in variant.settings.routing[role].values():
                if not have[route.primary.provider]:
                    variable = f"{route.primary.provider.upper()}_API_KEY"
                    return f"{role} is routed to {route.primary}, but {variable} is not set"
    return None


async def export(settings: Settings, args: argparse.Namespace) -> int:
    from workers.evals.cases import dump_case
    from workers.evals.export import export_decisions
    from workers.store import Store

    try:
        since = _since(args.since)
    except ValueError as exc:
        return _fail(str(exc))
    store = Store.for_settings(settings)
    try:
        found = await export_decisions(
            store, since, redact_with=settings.secret_values() if args.redact else None
        )
    finally:
        await store.close()
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(dump_case(c) + "\n" for c in found.cases))
    except OSError as exc:
        return _fail(f"cannot write {args.out}: {exc.strerror or exc}", EXIT_FAILED)
    left_out = ""
    if found.self_approved:
        left_out += f"; {found.self_approved} self-approvals left out"
    if found.without_deliverable:
        left_out += f"; {found.without_deliverable} decisions without a deliverable left out"
    redacted = " (redacted)" if args.redact else " (not redacted: keep it private)"
    print(
        f"Exported {len(found.cases)} decisions since {since.date().isoformat()} to "
        f"{args.out}{redacted}{left_out}. Run it with: delegate eval --suite {args.out} --yes"
    )
    return EXIT_OK


def _since(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: expected a date such as 2026-11-01") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
