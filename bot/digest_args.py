"""`delegate digest`'s arguments, apart from the command (bot.digest_cli), whose imports (the
digest, the chart, the reporting queries) every other command would otherwise pay for at start."""

from __future__ import annotations

from typing import Any


def add_parser(sub: Any) -> None:
    digest = sub.add_parser(
        "digest",
        help="print, export or post a team's weekly digest",
        description="`delegate digest --team growth [--week 2026-W47] [--format md|json]` prints "
        "the digest; `--format csv --weeks 12` exports the weekly series; `--post` posts it in "
        "the team's digest channel; `--due` posts every scheduled digest that is due and not "
        "yet posted (what `delegate run` does every minute).",
    )
    digest.add_argument("--team", default=None, help="a configured team, or 'all'")
    digest.add_argument("--week", default=None, help="ISO week such as 2026-W47 (default: last)")
    digest.add_argument(
        "--format",
        choices=["md", "json", "csv"],
        default="md",
        help="Markdown, JSON, or the weekly series as CSV (default md)",
    )
    digest.add_argument("--weeks", type=int, default=12, help="CSV: how many weeks (default 12)")
    digest.add_argument("--tz", default=None, help="time zone of the week (default: the team's)")
    digest.add_argument("--post", action="store_true", help="post it in Slack as well")
    digest.add_argument("--channel", default=None, help="with --post: where (default: scheduled)")
    digest.add_argument("--due", action="store_true", help="post the scheduled digests now due")
