"""The run's report (Markdown and JSON, and a PNG chart of the routes side by side), and the
thresholds a deployment gates a model change on."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from workers.config import Role
from workers.evals.cases import IntakeCase, Suite, VerifyCase
from workers.evals.routes import Variant
from workers.evals.runner import RunOutcome
from workers.evals.scoring import (
    INTAKE_METRICS,
    VERIFY_METRICS,
    Run,
    intake_scores,
    verify_scores,
    verify_units,
)

# Rates drawn in the chart (0..1), per kind of suite.
CHARTED = {
    "intake": ("decision_accuracy", "ask_f1", "over_asking", "workload_accuracy"),
    "verify": ("accuracy", "false_accept", "false_reject", "kappa"),
}
LOWER_IS_BETTER = {"over_asking", "false_accept", "false_reject", "rounds_per_case"}
_MONEY = re.compile(r"^cost_usd")


def metrics_of(kind: str) -> tuple[str, ...]:
    return INTAKE_METRICS if kind == "intake" else VERIFY_METRICS


def build(
    suites: Sequence[Suite], variants: dict[Role, list[Variant]], outcome: RunOutcome
) -> dict[str, Any]:
    """The report as JSON-ready data: per suite, per route, the scores over its finished cases,
    what did not finish, and the cases it got wrong."""
    records = outcome.state.records
    report_suites: list[dict[str, Any]] = []
    for suite in suites:
        routes: list[dict[str, Any]] = []
        for variant in variants[suite.kind]:
            done: list[tuple[Any, dict[str, Any], Run]] = []
            errors: list[dict[str, str]] = []
            not_run: list[str] = []
            for case in suite.cases:
                record = records.get((suite.name, variant.label, case.id))
                if record is None or record.status == "not_run":
                    not_run.append(case.id)
                elif record.status == "error":
                    errors.append({"case": case.id, "error": record.error or ""})
                else:
                    assert record.outcome is not None
                    done.append((case, record.outcome, Run(record.cost_micro_usd, record.latency_ms)))
            if suite.kind == "intake":
                scores = intake_scores(done)
                wrong = [_intake_miss(c, o) for c, o, _ in done if o["decision"] != c.expect.decision]
            else:
                scores = verify_scores(done)
                wrong = [_verify_miss(c, o) for c, o, _ in done if _disagrees(c, o)]
            routes.append(
                {
                    "route": variant.label,
                    "scores": scores,
                    "done": len(done),
                    "errors": errors,
                    "not_run": not_run,
                    "wrong": wrong,
                }
            )
        report_suites.append(
            {"name": suite.name, "kind": suite.kind, "cases": len(suite.cases), "routes": routes}
        )
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "max_usd": outcome.max_micro_usd / 1_000_000,
        "spent_usd": round(outcome.state.spent_micro_usd / 1_000_000, 6),
        "budget_stopped": outcome.budget_stopped,
        "complete": all(
            not r["errors"] and not r["not_run"] for s in report_suites for r in s["routes"]
        ),
        "suites": report_suites,
    }


def _intake_miss(case: IntakeCase, outcome: dict[str, Any]) -> str:
    return f"{case.id}: expected {case.expect.decision}, got {outcome['decision']}"


def _disagrees(case: VerifyCase, outcome: dict[str, Any]) -> bool:
    return any(label != verdict for label, verdict in verify_units(case, outcome["passed"]))


def _verify_miss(case: VerifyCase, outcome: dict[str, Any]) -> str:
    units = verify_units(case, outcome["passed"])
    if not case.per_criterion:
        label, verdict = units[0]
        return f"{case.id}: labelled {_word(label)}, verifier {_said(verdict)}"
    missed = [
        f"#{i} labelled {_word(label)}, verifier {_said(verdict)}"
        for i, (label, verdict) in enumerate(units, 1)
        if label != verdict
    ]
    return f"{case.id}: " + "; ".join(missed)


def _word(met: bool) -> str:
    return "met" if met else "not met"


def _said(passed: bool) -> str:
    return "passed" if passed else "failed"


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if _MONEY.match(name):
        return f"${value:,.4f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Delegate eval",
        "",
        f"Generated {report['generated_at']}. Spent ${report['spent_usd']:.4f} of a "
        f"${report['max_usd']:.2f} budget."
        + (" **Stopped by the budget: some cases did not run.**" if report["budget_stopped"] else ""),
    ]
    for suite in report["suites"]:
        routes = suite["routes"]
        lines += ["", f"## {suite['name']} ({suite['kind']}, {suite['cases']} cases)", ""]
        lines.append("| metric | " + " | ".join(_escape(r["route"]) for r in routes) + " |")
        lines.append("|---|" + "---:|" * len(routes))
        names = ["cases"] + (["units"] if suite["kind"] == "verify" else [])
        names += list(metrics_of(suite["kind"]))
        for name in names:
            cells = [_cell(name, r["scores"].get(name)) for r in routes]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("| errors | " + " | ".join(str(len(r["errors"])) for r in routes) + " |")
        lines.append("| not run | " + " | ".join(str(len(r["not_run"])) for r in routes) + " |")
        for r in routes:
            if r["wrong"]:
                lines += ["", f"Missed on {_escape(r['route'])}:", ""]
                lines += [f"- {_escape(w)}" for w in r["wrong"]]
            if r["errors"]:
                lines += ["", f"Errors on {_escape(r['route'])}:", ""]
                lines += [f"- {e['case']}: {_escape(e['error'])}" for e in r["errors"]]
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# Thresholds.


@dataclass(frozen=True)
class Threshold:
    suite: str
    metric: str
    bound: float
    sense: str  # "min" or "max"

    def __str__(self) -> str:
        return f"--{self.sense} {self.suite}.{self.metric}={self.bound:g}"


class ThresholdError(ValueError):
    """A threshold that names no suite or metric of this run, or no number."""


def parse_threshold(text: str, sense: str, suites: Sequence[Suite]) -> Threshold:
    key, sep, value = text.partition("=")
    suite_name, dot, metric = key.strip().partition(".")
    by_name = {s.name: s for s in suites}
    if not sep or not dot:
        raise ThresholdError(f"--{sense} {text!r}: expected SUITE.METRIC=NUMBER, e.g. verify.kappa=0.6")
    if suite_name not in by_name:
        raise ThresholdError(
            f"--{sense} {text!r}: no suite {suite_name!r} in this run (suites: "
            f"{', '.join(by_name)})"
        )
    known = metrics_of(by_name[suite_name].kind)
    if metric not in known:
        raise ThresholdError(
            f"--{sense} {text!r}: {suite_name} has no metric {metric!r}; one of {', '.join(known)}"
        )
    try:
        bound = float(value)
    except ValueError:
        raise ThresholdError(f"--{sense} {text!r}: {value!r} is not a number") from None
    return Threshold(suite_name, metric, bound, sense)


def crossed(report: dict[str, Any], thresholds: Sequence[Threshold]) -> list[str]:
    """A line per threshold a route crosses, or cannot be checked on (nothing scored)."""
    problems = []
    suites = {s["name"]: s for s in report["suites"]}
    for t in thresholds:
        for route in suites[t.suite]["routes"]:
            value = route["scores"].get(t.metric)
            where = f"{t.suite}.{t.metric} on {route['route']}"
            if value is None:
                problems.append(f"{where}: no value (no case could be scored), so {t} fails")
            elif t.sense == "min" and value < t.bound:
                problems.append(f"{where} is {value:.4g}, below the minimum {t.bound:g}")
            elif t.sense == "max" and value > t.bound:
                problems.append(f"{where} is {value:.4g}, above the maximum {t.bound:g}")
    return problems


# The chart.


def render_chart(report: dict[str, Any]) -> bytes:
    """PNG: per suite, its rates (0..1), one bar per route; drawn as workers.chart draws the
    digest's (its own Figure on the Agg canvas, no pyplot state)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from workers.chart import DPI, HEIGHT_IN, WIDTH_IN

    suites = report["suites"]
    figure = Figure(figsize=(WIDTH_IN, HEIGHT_IN * len(suites)), dpi=DPI)
    FigureCanvasAgg(figure)
    for row, suite in enumerate(suites, 1):
        axes = figure.add_subplot(len(suites), 1, row)
        names = CHARTED[suite["kind"]]
        routes = suite["routes"]
        width = 0.8 / max(1, len(routes))
        for i, route in enumerate(routes):
            xs = [n + (i - (len(routes) - 1) / 2) * width for n in range(len(names))]
            values = [route["scores"].get(name) for name in names]
            bars = axes.bar(xs, [v or 0 for v in values], width, label=route["route"][:60])
            axes.bar_label(
                bars, labels=["n/a" if v is None else f"{v:.2f}" for v in values], fontsize="x-small"
            )
        labels = [n + (" ↓" if n in LOWER_IS_BETTER else "") for n in names]
        axes.set_xticks(range(len(names)), labels, fontsize="small")
        axes.set_ylim(min(0, *(r["scores"].get("kappa") or 0 for r in routes)), 1.3)
        axes.set_title(f"{suite['name']} ({suite['cases']} cases)", fontsize="medium")
        axes.legend(loc="upper right", frameon=False, fontsize="x-small")
        axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
