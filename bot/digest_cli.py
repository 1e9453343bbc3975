"""`delegate digest`: print, export or post a team's weekly digest."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from slack_sdk.errors import SlackApiError

from workers.config import DigestSchedule, Settings, schedule_for
from workers.digest import (
    DigestScheduler,
    build_digest,
    digest_json,
    render_markdown,
    series_csv,
)
from workers.models import utcnow
from workers.store import Store
from workers.store.reporting import Reporting
from workers.store.reporting.metrics import ALL, Period

if TYPE_CHECKING:
    from bot.digest_post import SlackDigestPublisher

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


async def run(settings: Settings, args: argparse.Namespace) -> int:
    if args.due:
        return await _due(settings)
    team = args.team
    if team is None or (team != ALL and team not in settings.teams):
        known = ", ".join([ALL, *sorted(settings.teams)])
        print(f"delegate digest: --team must be one of: {known}", file=sys.stderr)
        return EXIT_USAGE
    schedule = schedule_for(settings, team)
    tz = args.tz or (schedule.timezone if schedule else "UTC")
    try:
        week = (
            Period.iso_week(args.week, tz) if args.week else Period.last_complete_week(utcnow(), tz)
        )
    except (ValueError, KeyError) as exc:
        print(f"delegate digest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.weeks < 1:
        print("delegate digest: --weeks must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    store = Store.for_settings(settings)
    try:
        if args.format == "csv":
            rows = await store.reporting.series_metrics(settings, team, week.weeks_back(args.weeks))
            sys.stdout.write(series_csv(rows))
            return EXIT_OK
        digest = await build_digest(store.reporting, settings, team, week)
        if args.format == "json":
            print(json.dumps(digest_json(digest), indent=2))
        else:
            print(render_markdown(digest), end="")
        if args.post:
            return await _post(settings, store.reporting, team, args.channel, schedule, week)
        return EXIT_OK
    finally:
        await store.close()


async def _post(
    settings: Settings,
    reporting: Reporting,
    team: str,
    channel: str | None,
    schedule: DigestSchedule | None,
    week: Period,
) -> int:
    """Post through the schedule's ledger: once per team, channel and week, whoever posts."""
    channel = channel or (schedule.channel if schedule else None)
    if channel is None:
        print(
            "delegate digest: no channel; pass --channel or add the team to `digests:`",
            file=sys.stderr,
        )
        return EXIT_USAGE
    publisher = _publisher(settings)
    if publisher is None:
        return EXIT_USAGE
    from workers.chart import render_chart

    scheduler = DigestScheduler(settings, reporting, publisher, render_chart=render_chart)
    try:
        posted = await scheduler.post(team, channel, week)
    except SlackApiError as exc:
        print(
            f"delegate digest: Slack refused the post in {channel}: {exc.response.get('error')}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if posted is None:
        print(
            f"delegate digest: {team} {week.label} was already posted in {channel} "
            "(or is being posted); not posting it again",
            file=sys.stderr,
        )
        return EXIT_OK
    print(f"posted {team} {week.label} in {channel}", file=sys.stderr)
    return EXIT_OK


def _publisher(settings: Settings) -> SlackDigestPublisher | None:
    if settings.slack_bot_token is None:
        print("delegate digest: SLACK_BOT_TOKEN is not set, cannot post", file=sys.stderr)
        return None
    from bot.digest_post import SlackDigestPublisher
    from bot.slack_client import make_slack_client

    return SlackDigestPublisher(make_slack_client(settings))


async def _due(settings: Settings) -> int:
    if not settings.digests:
        print("delegate digest: no `digests:` are configured", file=sys.stderr)
        return EXIT_USAGE
    publisher = _publisher(settings)
    if publisher is None:
        return EXIT_USAGE
    from workers.chart import render_chart

    store = Store.for_settings(settings)
    try:
        # Closed days first, as `delegate run` summarises them hourly: a crontab that runs only
        # this keeps a long history as quick to read.
        await store.reporting.summarise_closed_days()
        scheduler = DigestScheduler(settings, store.reporting, publisher, render_chart=render_chart)
        posted = await scheduler.sweep()
    finally:
        await store.close()
    for claim in posted:
        print(f"posted {claim.team} {claim.week} in {claim.channel}")
    if not posted:
        print("nothing due")
    return EXIT_OK
