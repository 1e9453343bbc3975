"""A small seeded history for the leads' metrics, written exactly as the engine writes it, whose
every figure tests/test_metrics.py works out by hand (the digest and App Home tests reuse it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from workers.config import Settings, load_settings
from workers.db import session_factory
from workers.models import AuditEvent, IntakeSession, LlmCall, Transition, WorkOrderRow
from workers.store.reporting.metrics import Period

W47 = Period.iso_week("2026-W47")  # Mon 2026-11-16 .. Mon 2026-11-23 (UTC)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """A time in November 2026, UTC."""
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


class Seed:
    """Rows written exactly as the engine writes them: an order, each transition as an audit
    event and its `transitions` row, its model calls; intake dialogues and their model calls."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.sessions = session_factory(engine)
        self.rows: list[Any] = []
        self.next_id = 1

    def order(
        self,
        requester: str,
        workload: str,
        path: list[tuple[str, datetime, str]],
        *,
        team: str = "growth",
        rework: int = 0,
        calls: tuple[tuple[str, str, int, datetime], ...] = (),
    ) -> int:
        """`path`: (state entered, when, actor); the order starts awaiting confirmation."""
        number = self.next_id
        self.next_id += 1
        status = path[-1][0] if path else "awaiting_confirmation"
        self.rows.append(
            WorkOrderRow(
                id=number,
                title=f"order {number}",
                requester=requester,
                team=team,
                goal="g",
                deliverable="d",
                acceptance_criteria=["c"],
                budget={},
                workload_class=workload,
                authority_policy="default",
                verification={},
                status=status,
                rework_count=rework,
                created_at=path[0][1] - timedelta(minutes=5) if path else at(1, 0),
            )
        )
        source, entered = "awaiting_confirmation", None
        chain = f"WO-{number}"
        for seq, (target, when, actor) in enumerate(path, start=1):
            self.rows.append(self._event(chain, seq, when, actor, source, target))
            self.rows.append(
                Transition(
                    order_id=number,
                    seq=seq,
                    at=when,
                    actor=actor,
                    from_status=source,
                    to_status=target,
                    entered_at=entered,
                    exception_kind="budget" if target == "exception" else None,
                )
            )
            source, entered = target, when
        for role, model, cost, when in calls:
            self.rows.append(
                LlmCall(
                    order_id=number,
                    role=role,
                    provider="anthropic",
                    model=model,
                    cost_micro_usd=cost,
                    created_at=when,
                    team=team,
                )
            )
        return number

    @staticmethod
    def _event(
        chain: str, seq: int, when: datetime, actor: str, source: str, target: str
    ) -> AuditEvent:
        data: dict[str, Any] = {"from": source, "to": target, "reason": "seeded"}
        if target == "exception":
            data["kind"] = "budget"
        return AuditEvent(
            chain=chain,
            seq=seq,
            at=when,
            actor=actor,
            kind="transition",
            data=data,
            prev_hash="-",
            hash=f"{chain}:{seq}",
        )

    def intake(self, requester: str, kind: str, when: datetime, n: int = 1) -> None:
        for _ in range(n):
            self.rows.append(
                IntakeSession(
                    channel="C1",
                    thread_ts=f"{len(self.rows)}.0",
                    requester=requester,
                    kind=kind,
                    created_at=when,
                )
            )

    def intake_call(
        self, cost: int, when: datetime, *, requester: str | None = None, team: str | None = None
    ) -> None:
        """A model call of an intake dialogue, before any order exists: the router records who
        it served and charges it to that person's team (None: a call from before it did)."""
        self.rows.append(
            LlmCall(
                role="intake",
                provider="anthropic",
                model="haiku",
                cost_micro_usd=cost,
                created_at=when,
                requester=requester,
                team=team,
            )
        )

    async def write(self) -> None:
        async with self.sessions() as s, s.begin():
            orders = [r for r in self.rows if isinstance(r, WorkOrderRow)]
            s.add_all(orders)
            await s.flush()
            s.add_all([r for r in self.rows if not isinstance(r, WorkOrderRow)])


def history_settings() -> Settings:
    return load_settings(
        teams={
            "default": {"weekly_usd": 100.0},
            "growth": {"weekly_usd": 100.0, "members": ["U1", "U2"]},
        }
    )


async def seed_history(engine: AsyncEngine) -> None:
    seed = Seed(engine)
    q, r, rev = "queued", "running", "awaiting_review"
    # A: confirmed Mon 10:00, 30 min in the queue, approved first time at 12:00 (review 1 h).
    seed.order(
        "U1",
        "standard",
        [(q, at(16, 10), "U1"), (r, at(16, 10, 30), "w"), (rev, at(16, 11), "w"),
         ("approved", at(16, 12), "UREV1")],
        calls=(("execute", "sonnet", 400_000, at(16, 10, 40)),
               ("verify", "mini", 50_000, at(16, 10, 55))),
    )  # fmt: skip
    # B: confirmed the week before; changes requested (review 2 h), requeued and waiting 1 h,
    # approved a day after its second submission. Cycle: Nov 10 09:00 -> Nov 18 12:00.
    seed.order(
        "U2",
        "deep",
        [(q, at(10, 9), "U2"), (r, at(10, 9, 10), "w"), (rev, at(17, 8), "w"),
         ("changes_requested", at(17, 10), "UREV1"), (q, at(17, 10), "UREV1"),
         (r, at(17, 11), "w"), (rev, at(17, 12), "w"), ("approved", at(18, 12), "UREV2")],
        rework=1,
        calls=(("execute", "opus", 1_000_000, at(10, 9, 30)),
               ("execute", "opus", 2_000_000, at(17, 11, 30))),
    )  # fmt: skip
    # C: rejected after a 1 h review.
    seed.order(
        "U1",
        "quick",
        [(q, at(18, 9), "U1"), (r, at(18, 9), "w"), (rev, at(18, 9, 30), "w"),
         ("rejected", at(18, 10, 30), "UREV1")],
        calls=(("execute", "haiku", 100_000, at(18, 9, 10)),),
    )  # fmt: skip
    # D: 20 min in the queue, then out of budget.
    seed.order(
        "U2",
        "standard",
        [(q, at(19, 9), "U2"), (r, at(19, 9, 20), "w"), ("exception", at(19, 10), "w")],
        calls=(("execute", "sonnet", 300_000, at(19, 9, 30)),),
    )  # fmt: skip
    # E: a proposed card cancelled (a declined draft, not cancelled work).
    seed.order("U1", "standard", [("cancelled", at(20, 8), "U1")])
    # F: confirmed, then cancelled while queued.
    seed.order("U1", "standard", [(q, at(20, 9), "U1"), ("cancelled", at(20, 9, 5), "U1")])
    # G: another team's order, approved on Monday.
    seed.order(
        "U9",
        "standard",
        [(q, at(16, 12), "U9"), (r, at(16, 12), "w"), (rev, at(16, 13), "w"),
         ("approved", at(16, 14), "UREV1")],
        team="default",
        calls=(("execute", "sonnet", 200_000, at(16, 12, 30)),),
    )  # fmt: skip
    # H: the previous week's one finished outcome for growth.
    seed.order(
        "U1",
        "standard",
        [(q, at(11, 9), "U1"), (r, at(11, 9), "w"), (rev, at(11, 10), "w"),
         ("approved", at(11, 11), "UREV1")],
        calls=(("execute", "sonnet", 500_000, at(11, 9, 30)),),
    )  # fmt: skip
    seed.intake("U1", "delegation", at(16, 9), n=3)
    seed.intake("U2", "chat", at(17, 9), n=2)
    seed.intake("U1", "pending", at(21, 9))
    seed.intake("U9", "chat", at(17, 9))
    seed.intake("U1", "delegation", at(12, 9))  # previous week
    seed.intake_call(1_000, at(16, 9))  # before any order: no team
    await seed.write()
