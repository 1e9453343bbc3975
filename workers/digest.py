"""The leads' weekly digest: what to say, when to say it, and saying it exactly once.

- *What*: `build_digest` gathers a team's week and the week before (`Reporting.compare`) plus
  the last eight weeks for the chart; `headlines` turns them into the few sentences a lead reads
  in ten seconds; `render_markdown`, `digest_json` and `series_csv` are the CLI's formats.
- *When*: each `digests:` entry is a 5-field cron in an IANA time zone. The first time the cron
  fires in a week (local time, so 09:00 stays 09:00 across daylight-saving changes), the last
  complete week is due. A sweep that runs later in the week (the bot was down at 09:00) still
  finds it due, and posts it then: a missed digest is caught up once. Weeks that ended before
  Delegate was installed are never due, and an empty week is passed over (recorded as
  'skipped') unless its entry says `post_empty`.
- *Once*: each digest is claimed in the `digest_posts` ledger before it is posted
  (workers.store.reporting.digest_posts); `delegate digest --post` claims through the same
  ledger, so a week posted by hand is not posted again. On PostgreSQL the sweep also runs on
  one process at a time, so concurrent `delegate run` processes do not even race for it.

Nothing here knows Slack: posting goes through a `DigestPublisher` (bot.digest_post).

One module on purpose: the schedule and the wording of one digest change together.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from workers.config import DigestSchedule, Settings, schedule_teams
from workers.models import utcnow
from workers.store.reporting import Claim, Reporting
from workers.store.reporting.metrics import (
    ALL,
    Comparison,
    Period,
    RouteSpend,
    TeamMetrics,
    WeekPoint,
    usd,
)

log = logging.getLogger(__name__)

CHART_WEEKS = 8


# ----------------------------------------------------------------------------- what to say


@dataclass
class Digest:
    team: str
    comparison: Comparison
    series: list[WeekPoint] = field(default_factory=list)

    @property
    def week(self) -> Period:
        return self.comparison.current.period

    @property
    def current(self) -> TeamMetrics:
        return self.comparison.current

    @property
    def previous(self) -> TeamMetrics:
        return self.comparison.previous

    @property
    def title(self) -> str:
        who = "the whole workspace" if self.team == ALL else f"team {self.team}"
        return f"Weekly digest for {who}, {self.week.label}"


async def build_digest(
    reporting: Reporting,
    settings: Settings,
    team: str,
    week: Period,
    *,
    weeks: int = CHART_WEEKS,
) -> Digest:
    comparison = await reporting.compare(settings, team, week)
    series = await reporting.weekly_series(team, week.weeks_back(weeks))
    return Digest(team, comparison, series)


def money(micro: int | None) -> str:
    """Dollars for people: cents (rounded half up), or four decimals under a cent."""
    if micro is None:
        return "n/a"
    dollars = Decimal(micro) / 1_000_000
    if abs(dollars) >= Decimal("0.01") or dollars == 0:
        return f"${dollars.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"
    return f"${dollars.quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP)}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.0f} %"


def _signed(value: int) -> str:
    return f"+{value}" if value > 0 else str(value)


def _count_change(now: int, before: int) -> str:
    if now == before:
        return "same as last week"
    return f"{_signed(now - before)} on last week"


def _money_change(now: int | None, before: int | None) -> str:
    if now is None or before is None:
        return "no comparison" if before is None else f"last week {money(before)}"
    if now == before:
        return "same as last week"
    delta = now - before
    sign = "+" if delta > 0 else "-"
    return f"{sign}{money(abs(delta))} on last week"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def headlines(digest: Digest) -> list[str]:
    """The digest in a few plain sentences, most important first."""
    now, before = digest.current, digest.previous
    if now.is_empty:
        line = "A quiet week: no requests, nothing finished and nothing spent."
        if not before.is_empty:
            line += (
                f" The week before had {plural(before.finished_outcomes, 'finished outcome')}"
                f" for {money(before.spend_micro_usd)}."
            )
        return [line, "Mention @Delegate with a request, or DM it, to get work done."]
    lines = [
        f"*{plural(now.finished_outcomes, 'finished outcome')}* "
        f"({_count_change(now.finished_outcomes, before.finished_outcomes)}), "
        + (f"{now.self_approved} of them self-approved, " if now.self_approved else "")
        + (
            f"at *{money(now.cost_per_finished_outcome_micro_usd)} each* "
            f"({_money_change(now.cost_per_finished_outcome_micro_usd, before.cost_per_finished_outcome_micro_usd)})."
            if now.finished_outcomes
            else "so no cost per outcome yet."
        ),
        f"Spent *{money(now.spend_micro_usd)}* "
        f"({_money_change(now.spend_micro_usd, before.spend_micro_usd)})"
        + (
            f"; {money(now.unapproved_spend_micro_usd)} went to work that was not approved."
            if now.unapproved_spend_micro_usd
            else "."
        ),
    ]
    parts = [plural(now.delegations, "delegation"), plural(now.chat_answers, "chat answer")]
    if now.requests_in_progress:
        # Not yet either: said, so that the parts add up to the requests.
        parts.append(f"{now.requests_in_progress} still in dialogue")
    ratio = now.delegation_ratio
    if ratio is None:
        share = ""
    elif now.requests_in_progress:
        share = f" ({percent(ratio)} of those settled delegated)"
    else:
        share = f" ({percent(ratio)} delegated)"
    lines.append(
        f"{plural(now.requests_received, 'request')}: "
        f"{', '.join(parts[:-1])} and {parts[-1]}{share}."
    )
    if now.review_decisions or now.finished_outcomes:
        lines.append(
            f"First-pass approval {percent(now.first_pass_approval_rate)}, "
            f"rework {percent(now.rework_rate)}; confirmed to approved in "
            f"{duration(now.cycle_time_p50_s)} (median, p90 {duration(now.cycle_time_p90_s)}); "
            f"reviews answered in {duration(now.review_latency_p50_s)} (median)."
        )
    trouble = []
    if now.exceptions:
        by_kind = ranked(now.exceptions)
        kinds = ", ".join(f"{_clip(k, 40)} {v}" for k, v in by_kind[:5])
        if len(by_kind) > 5:
            kinds += f" and {plural(len(by_kind) - 5, 'other kind')}"
        trouble.append(f"{plural(now.exception_count, 'exception')} ({kinds})")
    if now.rejections:
        trouble.append(plural(now.rejections, "rejection"))
    if now.cancellations:
        trouble.append(plural(now.cancellations, "cancellation"))
    if trouble:
        lines.append("Needs a look: " + ", ".join(trouble) + ".")
    return lines


def digest_json(digest: Digest) -> dict[str, Any]:
    current = digest.current.as_dict()
    return {
        **current,
        "headlines": headlines(digest),
        "previous": digest.previous.as_dict(),
        "changes": {
            name: (round(value, 6) if isinstance(value, float) else value)
            for name, value in digest.comparison.changes().items()
        },
        "series": [
            {
                "week": p.week,
                "finished_outcomes": p.finished_outcomes,
                "total_spend_usd": usd(p.spend_micro_usd),
                "cost_per_finished_outcome_usd": usd(p.cost_per_finished_outcome_micro_usd),
            }
            for p in digest.series
        ],
    }


def render_markdown(digest: Digest) -> str:
    now = digest.current
    out = [f"# {digest.title}", ""]
    out += [f"- {line.replace('*', '**')}" for line in headlines(digest)]
    out += ["", "| figure | this week | last week |", "|---|---|---|"]
    for label, this, last in _table_rows(digest):
        out.append(f"| {label} | {this} | {last} |")
    if now.spend_by_class:
        out += ["", "## Spend by workload class", ""]
        out += [f"- {name}: {money(v)}" for name, v in ranked(now.spend_by_class)]
    if now.spend_by_role:
        out += ["", "## Spend by role", ""]
        out += [f"- {name}: {money(v)}" for name, v in ranked(now.spend_by_role)]
    if now.spend_by_route:
        out += ["", "## Spend by route (role x class -> model)", ""]
        for r in now.spend_by_route:
            out.append(f"- {route_label(r)}: {money(r.micro_usd)} ({plural(r.calls, 'call')})")
    if now.exceptions:
        out += ["", "## Exceptions by kind", ""]
        out += [f"- {kind}: {n}" for kind, n in ranked(now.exceptions)]
    if now.top_requesters:
        out += ["", "## Top requesters", ""]
        out += [
            f"- {p.user}: {p.finished} finished, {p.count} confirmed" for p in now.top_requesters
        ]
    if now.top_reviewers:
        out += ["", "## Top reviewers", ""]
        out += [
            f"- {p.user}: {plural(p.count, 'decision')}, {p.finished} approved"
            for p in now.top_reviewers
        ]
    return "\n".join(out) + "\n"


def ranked(tally: dict[str, int]) -> list[tuple[str, int]]:
    """A tally's entries, largest first (then by name)."""
    return sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))


def route_label(route: RouteSpend) -> str:
    return f"{route.role} x {route.workload_class} -> {route.model}"


def _table_rows(digest: Digest) -> list[tuple[str, str, str]]:
    now, before = digest.current, digest.previous

    def both(fmt: Callable[[TeamMetrics], str]) -> tuple[str, str]:
        return fmt(now), fmt(before)

    rows: list[tuple[str, Callable[[TeamMetrics], str]]] = [
        ("Finished outcomes", lambda m: str(m.finished_outcomes)),
        ("Self-approved (of those finished)", lambda m: str(m.self_approved)),
        ("Cost per finished outcome", lambda m: money(m.cost_per_finished_outcome_micro_usd)),
        ("Total spend", lambda m: money(m.spend_micro_usd)),
        ("Spend not approved", lambda m: money(m.unapproved_spend_micro_usd)),
        ("Requests", lambda m: str(m.requests_received)),
        (
            "Delegations / chat answers / in dialogue",
            lambda m: f"{m.delegations} / {m.chat_answers} / {m.requests_in_progress}",
        ),
        ("Orders confirmed", lambda m: str(m.orders_confirmed)),
        ("First-pass approval", lambda m: percent(m.first_pass_approval_rate)),
        ("Rework rate", lambda m: percent(m.rework_rate)),
        ("Rejections", lambda m: str(m.rejections)),
        ("Cancellations", lambda m: str(m.cancellations)),
        ("Exceptions", lambda m: str(m.exception_count)),
        (
            "Cycle time (median / p90)",
            lambda m: f"{duration(m.cycle_time_p50_s)} / {duration(m.cycle_time_p90_s)}",
        ),
        ("Review latency (median)", lambda m: duration(m.review_latency_p50_s)),
        (
            "Time waiting in the queue (total / median)",
            lambda m: f"{duration(m.queue_wait_total_s)} / {duration(m.queue_wait_p50_s)}",
        ),
        ("Time waiting for quota (total)", lambda m: duration(m.quota_wait_total_s)),
    ]
    return [(label, *both(fmt)) for label, fmt in rows]


def figure_rows(digest: Digest) -> list[tuple[str, str, str]]:
    """(label, this week, last week) for every headline figure: the Block Kit fields use them."""
    return _table_rows(digest)


CSV_COLUMNS = (
    "week",
    "start",
    "end",
    "requests_received",
    "delegations",
    "chat_answers",
    "requests_in_progress",
    "orders_confirmed",
    "finished_outcomes",
    "self_approved",
    "first_pass_approval_rate",
    "rework_rate",
    "rejections",
    "cancellations",
    "exceptions",
    "cycle_time_p50_s",
    "cycle_time_p90_s",
    "review_latency_p50_s",
    "queue_wait_total_s",
    "queue_wait_p50_s",
    "quota_wait_total_s",
    "total_spend_usd",
    "cost_per_finished_outcome_usd",
    "unapproved_spend_usd",
)


def _breakdown(m: TeamMetrics) -> dict[str, float | int]:
    """A week's spend by class, role and route and its exceptions by kind, one column each."""
    columns: dict[str, float | int] = {}
    for prefix, tally in (("class", m.spend_by_class), ("role", m.spend_by_role)):
        for name, micro in tally.items():
            columns[f"spend_usd:{prefix}={name}"] = usd(micro) or 0.0
    for r in m.spend_by_route:
        columns[f"spend_usd:route={r.role}/{r.workload_class}/{r.model}"] = usd(r.micro_usd) or 0.0
    for kind, count in m.exceptions.items():
        columns[f"exceptions:kind={kind}"] = count
    return columns


def series_csv(series: Sequence[TeamMetrics]) -> str:
    """One row per week, oldest first, for a spreadsheet: the figures, then one column per
    workload class, role, route and exception kind seen in any of the weeks (0 where a week
    has none)."""
    breakdowns = [_breakdown(m) for m in series]
    extra = sorted({name for b in breakdowns for name in b})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["team", *CSV_COLUMNS, *extra])
    for m, breakdown in zip(series, breakdowns, strict=True):
        row = m.as_dict()
        row["exceptions"] = m.exception_count
        writer.writerow(
            [
                m.team,
                *("" if row[c] is None else row[c] for c in CSV_COLUMNS),
                *(breakdown.get(name, 0) for name in extra),
            ]
        )
    return buffer.getvalue()


# ----------------------------------------------------------------------------- when


def trigger(schedule: DigestSchedule) -> CronTrigger:
    return CronTrigger.from_crontab(schedule.cron, timezone=ZoneInfo(schedule.timezone))


def fire_in_week(schedule: DigestSchedule, now: datetime) -> datetime | None:
    """The schedule's first fire time in the (local) week containing `now`, if it has come."""
    week = Period.week_of(now, schedule.timezone)
    start = week.start.astimezone(ZoneInfo(schedule.timezone))
    fire = trigger(schedule).get_next_fire_time(None, start)
    if fire is None or fire > now:
        return None
    return fire


def due_week(schedule: DigestSchedule, now: datetime) -> Period | None:
    """The week whose digest is due at `now`: the last complete one, once the cron has fired
    this week; None before that."""
    if fire_in_week(schedule, now) is None:
        return None
    return Period.last_complete_week(now, schedule.timezone)


def next_fire(schedule: DigestSchedule, after: datetime) -> datetime | None:
    fire = trigger(schedule).get_next_fire_time(None, after.astimezone(ZoneInfo(schedule.timezone)))
    return fire.astimezone(UTC) if fire else None


class DigestPublisher(Protocol):
    async def publish(self, channel: str, digest: Digest, chart_png: bytes | None) -> str | None:
        """Post the digest (and its chart) in `channel`; returns the message ts."""
        ...


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Due:
    """A digest the schedule calls for: a team's week, in a channel."""

    team: str
    channel: str
    week: Period
    post_empty: bool = False


class DigestScheduler:
    """Posts every due digest once. `sweep()` is run by APScheduler every minute and at start;
    tests call it directly with their own clock. `post()` posts one digest on request
    (`delegate digest --post`), through the same ledger, so the schedule does not post it again."""

    def __init__(
        self,
        settings: Settings,
        reporting: Reporting,
        publisher: DigestPublisher,
        *,
        clock: Callable[[], datetime] = utcnow,
        owner: str | None = None,
        render_chart: Callable[[Sequence[WeekPoint], str], bytes] | None = None,
    ) -> None:
        self.settings = settings
        self.reporting = reporting
        self.publisher = publisher
        self.clock = clock
        self.owner = owner or default_owner()
        self.render_chart = render_chart

    def due(self, now: datetime) -> list[Due]:
        """Every digest due at `now`, claimed or not."""
        due = []
        for schedule in self.settings.digests:
            week = due_week(schedule, now)
            if week is None:
                continue
            for team in schedule_teams(schedule, self.settings):
                due.append(Due(team, schedule.channel, week, schedule.post_empty))
        return due

    async def sweep(self) -> list[Claim]:
        """Claim and post what is due; returns the digests this process posted."""
        now = self.clock()
        due = self.due(now)
        if not due:
            return []
        async with self.reporting.single_runner("digests") as mine:
            if not mine:  # another process is sweeping; it posts what is due
                return []
            # Not the weeks before Delegate was installed: a fresh install has nothing to say
            # about them (and would otherwise post last week's empty digest on its first day).
            installed = await self.reporting.installed_at() or now
            return await self._post_all([d for d in due if d.week.end > installed], now)

    async def post(self, team: str, channel: str, week: Period) -> Claim | None:
        """Post `team`'s digest for `week` in `channel` now, empty or not, unless it has been
        posted there (or is being posted) already: then None. A failed post raises, and is
        left unclaimed for the schedule or a later attempt."""
        claimed = await self.reporting.claim_digest(
            team=team, channel=channel, week=week.label, owner=self.owner, now=self.clock()
        )
        if claimed is None:
            return None
        try:
            digest = await build_digest(self.reporting, self.settings, team, week)
            ts = await self._post(channel, digest)
        except BaseException:
            await self.reporting.release_digest(claimed)
            raise
        await self.reporting.digest_posted(claimed, ts=ts, now=self.clock())
        return claimed

    async def _post_all(self, due: list[Due], now: datetime) -> list[Claim]:
        claims = await self._claim_all(due, now)
        posted = []
        for claimed, wanted in claims:
            try:
                digest = await build_digest(self.reporting, self.settings, claimed.team, wanted.week)
                if digest.current.is_empty and not wanted.post_empty:
                    await self.reporting.digest_skipped(claimed, now=self.clock())
                    log.info("digest for %s %s skipped: an empty week", claimed.team, claimed.week)
                    continue
                ts = await self._post(claimed.channel, digest)
            except Exception:
                log.exception(
                    "digest for %s in %s (%s) failed; will retry",
                    claimed.team,
                    claimed.channel,
                    claimed.week,
                )
                await self.reporting.release_digest(claimed)
                continue
            await self.reporting.digest_posted(claimed, ts=ts, now=self.clock())
            log.info(
                "posted the digest for %s in %s (%s)", claimed.team, claimed.channel, claimed.week
            )
            posted.append(claimed)
        return posted

    async def _claim_all(self, due: list[Due], now: datetime) -> list[tuple[Claim, Due]]:
        wanted = [(d.team, d.channel, d.week.label) for d in due]
        claims = await self.reporting.claim_digests(wanted, owner=self.owner, now=now)
        return [(claimed, d) for claimed, d in zip(claims, due, strict=True) if claimed]

    async def _post(self, channel: str, digest: Digest) -> str | None:
        chart = None
        if self.render_chart is not None:
            try:
                chart = await asyncio.to_thread(self.render_chart, digest.series, digest.title)
            except Exception:
                log.exception(
                    "digest chart for %s could not be drawn; posting without", digest.team
                )
        return await self.publisher.publish(channel, digest, chart)
