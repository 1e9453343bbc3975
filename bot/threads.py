"""Where a message goes: a thread, and the order it is about."""

from __future__ import annotations

from dataclasses import dataclass

from workers.workorder import WorkOrder


@dataclass(frozen=True)
class Thread:
    """A channel's thread, and the order a message in it is about (none yet for a dialogue's
    reply before a draft)."""

    channel: str
    ts: str | None
    order: str | None = None

    @classmethod
    def of(cls, where: WorkOrder | Thread) -> Thread:
        if isinstance(where, Thread):
            return where
        assert where.id and where.channel
        return cls(where.channel, where.thread_ts, where.id)
