"""Signed checkpoints of the audit trail, kept outside the database they vouch for.

The chains' heads and their total live in the same database as the events, so whoever can
write it can delete the newest events and put back a head row saved earlier: the trail then
verifies. A checkpoint (time, chains, events, each chain's head and a digest over them, keyed
with the audit key) appended to a file that writer cannot rewrite fixes a floor: the trail may
grow past it but not fall below it without the key.

Pure functions and the file format only; `workers.store` reads the heads and the events.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from workers.audit import ALL_CHAINS, AuditKey, ChainBreak, canonical_json, canonical_time

CHECKPOINT_FILE = "audit-checkpoints.jsonl"
"""The file written inside `audit.checkpoint_path` when that names a directory."""


@dataclass(frozen=True)
class Checkpoint:
    at: str
    chains: int
    events: int
    heads: dict[str, tuple[int, str]]
    """Each chain's last event when the checkpoint was taken: (seq, hash)."""
    digest: str
    keyed: bool
    mac: str


def heads_digest(heads: Mapping[str, tuple[int, str]]) -> str:
    lines = "".join(f"{chain}:{seq}:{digest}\n" for chain, (seq, digest) in sorted(heads.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def _mac(key: AuditKey, at: str, chains: int, events: int, digest: str) -> str:
    return key.mac(f"checkpoint:{at}:{chains}:{events}:{digest}")


def make_checkpoint(
    heads: Mapping[str, tuple[int, str]], events: int, *, key: AuditKey, at: datetime | None = None
) -> Checkpoint:
    when = canonical_time(at or datetime.now(UTC)) + "Z"
    digest = heads_digest(heads)
    return Checkpoint(
        at=when,
        chains=len(heads),
        events=events,
        heads=dict(heads),
        digest=digest,
        keyed=key.keyed,
        mac=_mac(key, when, len(heads), events, digest),
    )


def checkpoint_file(path: Path) -> Path:
    return path / CHECKPOINT_FILE if path.is_dir() else path


def checkpoint_line(checkpoint: Checkpoint) -> str:
    """The checkpoint as the one JSON line `latest_checkpoint` reads back."""
    return canonical_json(
        {
            "at": checkpoint.at,
            "chains": checkpoint.chains,
            "events": checkpoint.events,
            "digest": checkpoint.digest,
            "keyed": checkpoint.keyed,
            "mac": checkpoint.mac,
            "heads": {c: list(h) for c, h in checkpoint.heads.items()},
        }
    )


def append_checkpoint(path: Path, checkpoint: Checkpoint) -> Path:
    """Append one JSON line to `path` (or to CHECKPOINT_FILE inside it); return the file."""
    target = checkpoint_file(path)
    with target.open("a", encoding="utf-8") as out:
        out.write(checkpoint_line(checkpoint) + "\n")
    return target


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose MAC does not hold under this key."""


def latest_checkpoint(path: Path, *, key: AuditKey) -> Checkpoint:
    """The last checkpoint in the file, its MAC and digest checked."""
    target = checkpoint_file(path)
    try:
        lines = [ln for ln in target.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as exc:
        raise CheckpointError(f"cannot read {target}: {exc.strerror or exc}") from exc
    if not lines:
        raise CheckpointError(f"{target} holds no checkpoint")
    where = f"the last checkpoint in {target} (line {len(lines)})"
    try:
        doc = json.loads(lines[-1])
        heads = {str(c): (int(h[0]), str(h[1])) for c, h in doc["heads"].items()}
        checkpoint = Checkpoint(
            at=str(doc["at"]),
            chains=int(doc["chains"]),
            events=int(doc["events"]),
            heads=heads,
            digest=str(doc["digest"]),
            keyed=bool(doc.get("keyed", True)),
            mac=str(doc["mac"]),
        )
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"{where} is not a checkpoint") from exc
    expected = _mac(key, checkpoint.at, checkpoint.chains, checkpoint.events, checkpoint.digest)
    if not hmac.compare_digest(expected, checkpoint.mac):
        raise CheckpointError(
            f"{where} was altered, or was not signed with this audit key: its MAC does not hold"
        )
    if heads_digest(heads) != checkpoint.digest or len(heads) != checkpoint.chains:
        raise CheckpointError(f"{where} was altered: its heads do not match its signed digest")
    return checkpoint


def below_checkpoint(
    checkpoint: Checkpoint,
    trails: Mapping[str, Mapping[int, str]],
    events: int,
) -> list[ChainBreak]:
    """What the database lost since the checkpoint. `trails` maps each checkpointed chain to
    its events' hashes by seq, up to the checkpointed seq; `events` counts every event now."""
    when = f"the checkpoint of {checkpoint.at}"
    breaks: list[ChainBreak] = []
    for chain, (seq, digest) in sorted(checkpoint.heads.items()):
        found = trails.get(chain, {})
        if not found:
            breaks.append(
                ChainBreak(
                    chain,
                    None,
                    1,
                    f"is missing: the whole trail is gone, {when} anchored {seq} events",
                )
            )
            continue
        missing = [n for n in range(1, seq + 1) if n not in found]
        if missing:
            breaks.append(
                ChainBreak(
                    chain,
                    None,
                    missing[0],
                    f"is missing: rolled back below {when}, which anchored {seq} events",
                )
            )
        elif not hmac.compare_digest(found[seq], digest):
            breaks.append(
                ChainBreak(chain, None, seq, f"differs from {when}: the chain was rewritten")
            )
    if events < checkpoint.events:
        breaks.append(
            ChainBreak(
                ALL_CHAINS,
                None,
                0,
                f"it has {events} events, fewer than the {checkpoint.events} {when} anchored",
            )
        )
    return breaks
