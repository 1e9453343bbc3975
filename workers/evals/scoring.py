"""Scores: pure functions of the cases and what the engine did with them (docs/EVALS.md).

A rate with nothing to count (no failing criterion to accept falsely, no case that asked) is
None, shown as "n/a": a 0 there would read as a result.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workers.evals.cases import IntakeCase, VerifyCase
from workers.evals.fields import fields_asked


def ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def f1(true_positives: int, false_positives: int, false_negatives: int) -> float | None:
    """Harmonic mean of precision and recall: 2TP / (2TP + FP + FN)."""
    return ratio(2 * true_positives, 2 * true_positives + false_positives + false_negatives)


def cohen_kappa(pairs: Sequence[tuple[bool, bool]]) -> float | None:
    """Agreement of (label, verdict) pairs beyond chance: (po - pe) / (1 - pe). None when chance
    agreement is certain (both sides always said the same thing): kappa is undefined there."""
    n = len(pairs)
    if not n:
        return None
    observed = sum(label == verdict for label, verdict in pairs) / n
    labels_yes = sum(label for label, _ in pairs) / n
    verdicts_yes = sum(verdict for _, verdict in pairs) / n
    chance = labels_yes * verdicts_yes + (1 - labels_yes) * (1 - verdicts_yes)
    if chance == 1:
        return None
    return (observed - chance) / (1 - chance)


@dataclass(frozen=True)
class Run:
    """What one finished case cost and took."""

    cost_micro_usd: int
    latency_ms: int


def _money_and_time(runs: Sequence[Run]) -> dict[str, float | None]:
    costs = [r.cost_micro_usd / 1_000_000 for r in runs]
    latencies = [r.latency_ms / 1000 for r in runs]
    return {
        "cost_usd_total": round(sum(costs), 6),
        "cost_usd_per_case": round(statistics.fmean(costs), 6) if costs else None,
        "latency_s_per_case": round(statistics.fmean(latencies), 3) if latencies else None,
        "latency_s_p95": round(_percentile(latencies, 0.95), 3) if latencies else None,
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def _found(words: list[str], text: str) -> bool:
    lowered = text.lower()
    return any(w.lower() in lowered for w in words)


def intake_scores(results: Sequence[tuple[IntakeCase, dict[str, Any], Run]]) -> dict[str, Any]:
    """decision_accuracy: first decision (chat / ask / draft) as expected, over every case.
    ask_f1: micro F1 of the fields the first round of questions asked about against the
    expected missing fields, over the cases that should ask. over_asking: share of the cases
    that should be drafted at once where intake asked instead. workload_accuracy: the final
    draft's class as expected, over cases that name one (no draft counts as wrong).
    deliverable_match / criteria_recall: the final draft names the expected deliverable, and
    has the criteria that must be there. rounds_per_case: rounds of questions before the end."""
    decided = tp = fp = fn = over = complete = classes = right_class = 0
    deliverables = right_deliverable = groups = found_groups = 0
    rounds: list[int] = []
    for case, outcome, _ in results:
        expect = case.expect
        decided += outcome["decision"] == expect.decision
        rounds.append(int(outcome.get("rounds", 0)))
        asked = fields_asked(outcome.get("questions") or []) if outcome["decision"] == "ask" else set()
        if expect.decision == "ask":
            missing = set(expect.missing)
            tp += len(asked & missing)
            fp += len(asked - missing)
            fn += len(missing - asked)
        if expect.decision == "draft":
            complete += 1
            over += outcome["decision"] == "ask"
        draft = outcome.get("draft")
        if expect.workload_class is not None:
            classes += 1
            right_class += draft is not None and draft["workload_class"] == expect.workload_class
        if expect.deliverable:
            deliverables += 1
            right_deliverable += draft is not None and _found(expect.deliverable, draft["deliverable"])
        for words in expect.criteria:
            groups += 1
            found_groups += draft is not None and any(_found(words, c) for c in draft["criteria"])
    return {
        "cases": len(results),
        "decision_accuracy": ratio(decided, len(results)),
        "ask_f1": f1(tp, fp, fn),
        "over_asking": ratio(over, complete),
        "workload_accuracy": ratio(right_class, classes),
        "deliverable_match": ratio(right_deliverable, deliverables),
        "criteria_recall": ratio(found_groups, groups),
        "rounds_per_case": round(statistics.fmean(rounds), 3) if rounds else None,
        **_money_and_time([run for _, _, run in results]),
    }


def verify_units(case: VerifyCase, passed: list[bool]) -> list[tuple[bool, bool]]:
    """(label met, verifier passed) pairs: one per criterion when each is labelled, else one
    for the case (the verifier passes a case when it passes every criterion)."""
    if case.per_criterion:
        return [(bool(c.met), p) for c, p in zip(case.criteria, passed, strict=True)]
    return [(bool(case.met), all(passed))]


def verify_scores(results: Sequence[tuple[VerifyCase, dict[str, Any], Run]]) -> dict[str, Any]:
    """accuracy: verdicts equal to labels. false_accept: of the criteria not met, the share the
    verifier passed. false_reject: of the criteria met, the share it failed. kappa: Cohen's
    kappa between labels and verdicts. A case labelled as a whole counts as one unit."""
    pairs = [u for case, outcome, _ in results for u in verify_units(case, outcome["passed"])]
    not_met = [verdict for label, verdict in pairs if not label]
    met = [verdict for label, verdict in pairs if label]
    kappa = cohen_kappa(pairs)
    return {
        "cases": len(results),
        "units": len(pairs),
        "accuracy": ratio(sum(label == verdict for label, verdict in pairs), len(pairs)),
        "false_accept": ratio(sum(not_met), len(not_met)),
        "false_reject": ratio(sum(not v for v in met), len(met)),
        "kappa": round(kappa, 6) if kappa is not None else None,
        **_money_and_time([run for _, _, run in results]),
    }


# What a threshold may name, per kind of suite; "higher is better" decides the default sense.
INTAKE_METRICS = (
    "decision_accuracy", "ask_f1", "over_asking", "workload_accuracy", "deliverable_match",
    "criteria_recall", "rounds_per_case", "cost_usd_total", "cost_usd_per_case",
    "latency_s_per_case", "latency_s_p95",
)  # fmt: skip
VERIFY_METRICS = (
    "accuracy", "false_accept", "false_reject", "kappa", "cost_usd_total", "cost_usd_per_case",
    "latency_s_per_case", "latency_s_p95",
)  # fmt: skip
