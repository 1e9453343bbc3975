"""Tamper-evident audit trail: each event is an HMAC of its content and its predecessor's digest.

The chain is keyed (`DELEGATE_AUDIT_KEY` or a key file outside the database), so an event edited
and the rest of the chain recomputed does not verify without the key. Each chain's head (how many
events, the last digest) and the total over all chains are kept, also keyed, in a separate table,
so that dropping the last events or deleting a whole chain is detected too. The total counts
chains (how many heads there must be), so it moves only when a chain starts, not on every event:
appends to different chains never wait for each other.

Only pure functions live here; `workers.store` writes and reads the rows.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64
SYSTEM_CHAIN = "system"
ALL_CHAINS = "*"
"""The head that counts every anchored chain, so that deleting a whole chain (head and all)
shows."""
TOTAL_COUNTS_CHAINS = "chains"
"""The total's `last_hash` when its count is of chains. A note may follow (after ";") when the
total, as it was converted, disagreed with the heads: that disagreement keeps showing."""
LEGACY_TOTAL = ""
"""The total's `last_hash` when its count was of events (trails written before chains counted)."""

SCHEME_SHA256 = "sha256"
"""Events written before the trail was keyed: a plain hash anyone could recompute."""
SCHEME_HMAC = "hmac-sha256"


@dataclass(frozen=True)
class AuditKey:
    """The secret the chain is keyed with. Without one the trail still links and counts its
    events, but someone who can write the database can recompute it (`delegate doctor` warns)."""

    secret: bytes = field(repr=False)
    keyed: bool = True

    @classmethod
    def unkeyed(cls) -> AuditKey:
        return cls(b"delegate-audit-unkeyed", keyed=False)

    def mac(self, message: str) -> str:
        return hmac.new(self.secret, message.encode(), hashlib.sha256).hexdigest()


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
    key: AuditKey | None = None,
    scheme: str = SCHEME_SHA256,
) -> str:
    """The digest that links an event into its chain: an HMAC under `key`, or for events
    written before the trail was keyed, a plain SHA-256."""
    body = canonical_json(
        {
            "chain": chain,
            "seq": seq,
            "at": canonical_time(at),
            "actor": actor,
            "kind": kind,
            "data": data,
            "prev_hash": prev_hash,
        }
    )
    if scheme == SCHEME_SHA256:
        return hashlib.sha256(body.encode()).hexdigest()
    if key is None:
        raise ValueError("a keyed event needs the audit key")
    return key.mac("event:" + body)


MAX_INLINE_CHARS = 2000
"""Larger values are chained by their SHA-256 (and length), not inline."""


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bounded(value: Any) -> Any:
    """`value` itself when small, else its digest: the chain covers it either way."""
    text = canonical_json(value)
    if len(text) <= MAX_INLINE_CHARS:
        return value
    return {"sha256": sha256_text(text), "chars": len(text)}


def model_call_facts(call: Any) -> dict[str, Any]:
    """What the chain records of one model call (an `LlmCall` row)."""
    return {
        "model_call": call.id,
        "role": call.role,
        "provider": call.provider,
        "model": call.model,
        "input_tokens": call.input_tokens,
        "output_tokens": call.output_tokens,
        "cache_write_tokens": call.cache_write_tokens,
        "cache_read_tokens": call.cache_read_tokens,
        "cost_micro_usd": call.cost_micro_usd,
        "outcome": call.outcome,
    }


def deliverable_facts(item: Any, files: Sequence[Any] = ()) -> dict[str, Any]:
    """What the chain records of one deliverable (a `Deliverable` row) and its files
    (`DeliverableFile` rows: name, type, size and sha256, never the bytes)."""
    facts = {
        "deliverable": item.id,
        "summary": item.summary,
        "chars": len(item.content),
        "sha256": sha256_text(item.content),
    }
    if files:
        facts["files"] = [
            {"name": f.name, "mimetype": f.mimetype, "size": f.size, "sha256": f.sha256}
            for f in files
        ]
    return facts


def tool_call_facts(call: Any) -> dict[str, Any]:
    """What the chain records of one tool call (a `ToolCall` row)."""
    return {
        "tool_call": call.id,
        "name": call.name,
        "server": call.server,
        "approver": call.approver,
        "arguments": bounded(call.arguments),
        "arguments_sha256": sha256_text(canonical_json(call.arguments)),
        "allowed": call.allowed,
        "outcome": call.outcome,
        "error": call.error,
        "result_sha256": sha256_text(call.result_excerpt or ""),
    }


def head_mac(key: AuditKey, chain: str, count: int, last_hash: str) -> str:
    return key.mac(f"head:{chain}:{count}:{last_hash}")


@dataclass(frozen=True)
class ChainHead:
    """What the trail knows about a chain from outside its events: how many, and the last."""

    chain: str
    count: int
    last_hash: str
    mac: str


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
    scheme: str = SCHEME_SHA256


@dataclass(frozen=True)
class ChainBreak:
    """The first event at which a chain stops verifying, and why."""

    chain: str
    event_id: int | None
    seq: int
    reason: str

    def __str__(self) -> str:
        if self.chain == ALL_CHAINS:
            return f"the audit trail as a whole: {self.reason}"
        where = f"event #{self.event_id} (seq {self.seq})" if self.event_id else f"seq {self.seq}"
        return f"chain {self.chain}: {where} {self.reason}"


def verify_chain(
    records: Sequence[ChainRecord],
    *,
    key: AuditKey | None = None,
    head: ChainHead | None = None,
) -> ChainBreak | None:
    """Check one chain's records, in seq order, against its anchored head; the first break."""
    expected_prev = GENESIS_HASH
    expected_seq = 1
    keyed_seen = False
    for rec in records:
        if rec.seq != expected_seq:
            return ChainBreak(
                rec.chain, rec.id, rec.seq, f"has seq {rec.seq}, expected {expected_seq}"
            )
        if rec.prev_hash != expected_prev:
            return ChainBreak(rec.chain, rec.id, rec.seq, "does not link to the event before it")
        if rec.scheme == SCHEME_HMAC:
            keyed_seen = True
            if key is None:
                return ChainBreak(
                    rec.chain, rec.id, rec.seq, "is keyed; verifying it needs DELEGATE_AUDIT_KEY"
                )
        elif keyed_seen:
            return ChainBreak(rec.chain, rec.id, rec.seq, "was rewritten without the audit key")
        recomputed = event_hash(
            chain=rec.chain,
            seq=rec.seq,
            at=rec.at,
            actor=rec.actor,
            kind=rec.kind,
            data=rec.data,
            prev_hash=rec.prev_hash,
            key=key,
            scheme=rec.scheme,
        )
        if not hmac.compare_digest(recomputed, rec.hash):
            return ChainBreak(rec.chain, rec.id, rec.seq, "was altered after it was written")
        expected_prev = rec.hash
        expected_seq += 1
    return _check_head(records, key=key, head=head, keyed=keyed_seen)


def _check_head(
    records: Sequence[ChainRecord], *, key: AuditKey | None, head: ChainHead | None, keyed: bool
) -> ChainBreak | None:
    chain = records[0].chain if records else (head.chain if head else "?")
    count = len(records)
    if head is None:
        if keyed:
            return ChainBreak(chain, None, count, "has no anchored head: its anchor was removed")
        return None  # written before heads were anchored
    if key is not None and not hmac.compare_digest(
        head_mac(key, head.chain, head.count, head.last_hash), head.mac
    ):
        return ChainBreak(chain, None, head.count, "has an anchored head that was altered")
    if count == 0:
        return ChainBreak(
            chain, None, 1, f"is missing: all {head.count} of its events were deleted"
        )
    if count < head.count:
        return ChainBreak(
            chain,
            None,
            count + 1,
            f"is missing: events {count + 1} to {head.count} were deleted after event "
            f"#{records[-1].id}",
        )
    if count > head.count:
        extra = records[head.count]
        return ChainBreak(chain, extra.id, extra.seq, "was added without the audit key")
    if not hmac.compare_digest(records[-1].hash, head.last_hash):
        last = records[-1]
        return ChainBreak(chain, last.id, last.seq, "does not match the anchored head")
    return None


RECORDED_ROWS: dict[str, Callable[[Any], dict[str, Any]]] = {
    # A deliverable's files are checked by their own hashes (`DeliverableFile.sha256`), not here.
    "deliverable": deliverable_facts,
    "tool_call": tool_call_facts,
    "model_call": model_call_facts,
}
"""Event kinds that name a row of their own kind (by id, under the kind as key): what the
chain recorded of that row, recomputed from it, must still match."""

_FIELD_NAMES = {"sha256": "content", "chars": "content", "result_sha256": "result"}


def altered_row(rec: ChainRecord, row: Any | None) -> ChainBreak | None:
    """The break if the row this event names no longer matches what the event recorded of it
    (the chain holds only digests of a deliverable's content or a tool's result, so an edited
    row verifies unless they are recomputed). Only the facts the event carries are compared:
    events written before a fact was recorded stay valid."""
    facts = RECORDED_ROWS.get(rec.kind)
    ident = rec.data.get(rec.kind)
    if facts is None or ident is None:
        return None
    what = f"{rec.kind.replace('_', ' ')} {ident}"
    if row is None:
        return ChainBreak(rec.chain, rec.id, rec.seq, f"names {what}, which was deleted")
    now = json.loads(canonical_json(facts(row)))
    altered = sorted(
        {_FIELD_NAMES.get(k, k) for k in rec.data.keys() & now.keys() if rec.data[k] != now[k]}
    )
    if not altered:
        return None
    return ChainBreak(
        rec.chain, rec.id, rec.seq, f"names {what}, whose {', '.join(altered)} was altered"
    )


def verify_total(
    heads: Sequence[ChainHead], total: ChainHead | None, *, key: AuditKey | None
) -> str | None:
    """Whole chains deleted together with their heads show in the anchored total: it counts
    the chains (or, written before that, the events) there must be."""
    if total is None:
        return "the anchored total is missing" if heads else None
    if key is not None and not hmac.compare_digest(
        head_mac(key, ALL_CHAINS, total.count, total.last_hash), total.mac
    ):
        return "the anchored total was altered"
    if total.last_hash == LEGACY_TOTAL:
        anchored = sum(h.count for h in heads)
        if anchored != total.count:
            return (
                f"the anchored total counts {total.count} events but the chains' heads count "
                f"{anchored}: a whole chain was deleted"
            )
        return None
    kind, _, note = total.last_hash.partition(";")
    if kind != TOTAL_COUNTS_CHAINS:
        return "the anchored total was altered"
    if total.count != len(heads):
        return (
            f"the anchored total counts {total.count} chains but {len(heads)} have heads: "
            "a whole chain was deleted"
        )
    if note:
        return f"when the total began counting chains it disagreed with the heads ({note})"
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
