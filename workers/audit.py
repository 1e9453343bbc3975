"""Tamper-evident audit trail: each event hashes its content together with its predecessor's hash.

Only pure functions live here; `workers.store` writes and reads the rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64
SYSTEM_CHAIN = "system"


def canonical_time(at: datetime) -> str:
    """UTC, microsecond precision, no offset suffix: identical on SQLite and PostgreSQL."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def event_hash(
    *,
    chain: str,
    seq: int,
    at: datetime,
    actor: str,
    kind: str,
    data: dict[str, Any],
    prev_hash: str,
) -> str:
    body = {
        "chain": chain,
        "seq": seq,
        "at": canonical_time(at),
        "actor": actor,
        "kind": kind,
        "data": data,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


@dataclass(frozen=True)
class ChainRecord:
    """The fields of a stored audit event that the hash covers."""

    id: int
    chain: str
    seq: int
    at: datetime
    actor: str
    kind: str
    data: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class ChainBreak:
    """The first event at which a chain stops verifying, and why."""

    chain: str
    event_id: int
    seq: int
    reason: str

    def __str__(self) -> str:
        return f"chain {self.chain}: event #{self.event_id} (seq {self.seq}) {self.reason}"


def verify_chain(records: Iterable[ChainRecord]) -> ChainBreak | None:
    """Check one chain's records, in seq order; return the first break or None."""
    expected_prev = GENESIS_HASH
    expected_seq = 1
    for rec in records:
        if rec.seq != expected_seq:
            return ChainBreak(
                rec.chain, rec.id, rec.seq, f"has seq {rec.seq}, expected {expected_seq}"
            )
        if rec.prev_hash != expected_prev:
            return ChainBreak(rec.chain, rec.id, rec.seq, "does not link to the event before it")
        recomputed = event_hash(
            chain=rec.chain,
            seq=rec.seq,
            at=rec.at,
            actor=rec.actor,
            kind=rec.kind,
            data=rec.data,
            prev_hash=rec.prev_hash,
        )
        if recomputed != rec.hash:
            return ChainBreak(rec.chain, rec.id, rec.seq, "was altered after it was written")
        expected_prev = rec.hash
        expected_seq += 1
    return None


def render_markdown(chain: str, records: list[ChainRecord]) -> str:
    lines = [f"# Audit trail for {chain}", ""]
    if not records:
        lines.append("_No events recorded._")
        return "\n".join(lines) + "\n"
    lines += ["| # | time (UTC) | actor | event | details |", "|---|---|---|---|---|"]
    for rec in records:
        details = ", ".join(f"{k}: {_md_cell(v)}" for k, v in sorted(rec.data.items()))
        lines.append(
            f"| {rec.seq} | {canonical_time(rec.at)[:19].replace('T', ' ')} | {_md_cell(rec.actor)} "
            f"| {rec.kind} | {details} |"
        )
    lines += ["", f"Last hash: `{records[-1].hash}`"]
    return "\n".join(lines) + "\n"


def _md_cell(value: Any) -> str:
    text = value if isinstance(value, str) else canonical_json(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 200 else text[:199] + "…"


def render_json(chain: str, records: list[ChainRecord]) -> str:
    return json.dumps(
        {
            "chain": chain,
            "events": [
                {
                    "seq": r.seq,
                    "at": canonical_time(r.at) + "Z",
                    "actor": r.actor,
                    "kind": r.kind,
                    "data": r.data,
                    "prev_hash": r.prev_hash,
                    "hash": r.hash,
                }
                for r in records
            ],
        },
        indent=2,
        ensure_ascii=False,
    )
