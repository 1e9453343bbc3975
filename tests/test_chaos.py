"""Chaos, small: 30 orders on PostgreSQL, 3 `delegate worker` processes SIGKILLed at random
(seeded) moments and restarted, and a Slack that answers 429s, 5xxs and a timeout at random.

Every order comes to rest (awaiting review, or an exception) with its final message delivered
exactly once, nothing is posted twice, and the spend ledger pays for each model response the
fake served once (bench/chaos.py is the full-size run that prints the figures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import ChaosConfig, run_chaos
from tests.support.databases import Database

CONFIG = ChaosConfig(
    orders=30,
    workers=3,
    concurrency=3,
    seed=7,
    model_latency_s=(0.5, 2.0),
    kill_every_s=(1.0, 4.0),
    restart_after_s=(0.0, 1.0),
    max_kills=4,
    slack_fault_rate=0.2,
    max_slack_timeouts=1,
    # Generous: only a failing run waits this long (a loaded 2-core machine is slow, not red).
    deadline_s=300.0,
)


@pytest.mark.timeout(CONFIG.deadline_s + 120)
@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_kills_and_a_flaky_slack_lose_nothing_and_post_nothing_twice(
    database: Database, tmp_path: Path
) -> None:
    report = await run_chaos(CONFIG, database, tmp_path, say=print)
    figures = "\n".join(report.lines())

    assert report.kills >= 1, figures
    assert sum(report.slack_faults.values()) > 0, figures
    # Every order at rest, with its final message (review prompt / exception notice) in Slack.
    assert report.unsettled == [], figures
    assert report.lost_finals == [], figures
    assert report.undelivered == 0, figures
    assert report.unrecovered == 0, figures
    # Nothing posted twice, no order finished twice.
    assert report.duplicate_posts == 0, figures
    assert report.extra_deliverables == [], figures
    # Spend: each served response paid for once, at its price; totals agree; nothing held.
    assert report.double_counted == 0 and report.unknown_ledger_rows == 0, figures
    assert report.ledger_ok_micro_usd == report.ledger_matched_micro_usd, figures
    assert report.served_not_charged <= report.interrupted, figures
    assert report.order_total_mismatches == [], figures
    assert report.team_spent_micro_usd == report.ledger_micro_usd, figures
    assert report.reserved_left_micro_usd == 0, figures
    assert report.problems == [], figures
