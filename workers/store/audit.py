"""Reading and verifying the audit trail (appending is in the base: every change does it)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlmodel import col, select

from workers.audit import (
    ALL_CHAINS,
    RECORDED_ROWS,
    SYSTEM_CHAIN,
    ChainBreak,
    ChainHead,
    ChainRecord,
    altered_row,
    verify_chain,
    verify_total,
)
from workers.audit_checkpoint import Checkpoint, below_checkpoint, make_checkpoint
from workers.models import AuditEvent, AuditHead, Deliverable, LlmCall, ToolCall, WorkOrderRow
from workers.store.base import StoreBase, _record
from workers.workorder import format_order_id, parse_order_id


class AuditStore(StoreBase):
    async def audit(
        self, chain: str, *, actor: str, kind: str, data: dict[str, Any] | None = None
    ) -> ChainRecord:
        async with self.transaction() as s:
            return await self._append_audit(s, chain, actor=actor, kind=kind, data=data or {})

    async def audit_trail(self, chain: str) -> list[ChainRecord]:
        query = select(AuditEvent).where(AuditEvent.chain == chain).order_by(col(AuditEvent.seq))
        async with self._sessions() as s:
            return [_record(e) for e in (await s.exec(query)).all()]

    async def audit_chains(self) -> list[str]:
        async with self._sessions() as s:
            chains = (await s.exec(select(AuditEvent.chain).distinct())).all()
        return sorted(chains, key=_chain_sort_key)

    async def audit_heads(self) -> dict[str, ChainHead]:
        """Each chain's anchor (and the total, under "*"), kept outside the events table."""
        async with self._sessions() as s:
            rows = (await s.exec(select(AuditHead))).all()
        return {r.chain: ChainHead(r.chain, r.count, r.last_hash, r.mac) for r in rows}

    async def verify_audit(self) -> tuple[int, list[ChainBreak]]:
        """Verify every chain against its anchored head, and the heads against their total;
        return how many events were checked and each chain's first break."""
        heads = await self.audit_heads()
        total = heads.pop(ALL_CHAINS, None)
        async with self._sessions() as s:
            order_ids = (await s.exec(select(WorkOrderRow.id))).all()
        chains = set(await self.audit_chains()) | set(heads)
        checked = 0
        breaks: list[ChainBreak] = []
        for chain in sorted(chains, key=_chain_sort_key):
            records = await self.audit_trail(chain)
            checked += len(records)
            broken = verify_chain(records, key=self.audit_key, head=heads.get(chain))
            if broken is None:
                broken = await self._altered_rows(records)
            if broken:
                breaks.append(broken)
        # Every order starts its chain when it is created: an order without one lost it.
        for number in sorted(i for i in order_ids if i is not None):
            chain = format_order_id(number)
            if chain not in chains:
                breaks.append(
                    ChainBreak(chain, None, 1, "is missing: the order exists, its trail does not")
                )
        problem = verify_total(list(heads.values()), total, key=self.audit_key)
        if problem:
            breaks.append(ChainBreak(ALL_CHAINS, None, 0, problem))
        return checked, breaks

    async def audit_checkpoint(self) -> Checkpoint:
        """A signed checkpoint of every chain's last event as the events table has it now."""
        last = (
            select(AuditEvent.chain, func.max(AuditEvent.seq).label("seq"))
            .group_by(col(AuditEvent.chain))
            .subquery()
        )
        query = select(AuditEvent.chain, AuditEvent.seq, AuditEvent.hash).join(
            last, (col(AuditEvent.chain) == last.c.chain) & (col(AuditEvent.seq) == last.c.seq)
        )
        async with self._sessions() as s:
            heads = {chain: (seq, digest) for chain, seq, digest in (await s.exec(query)).all()}
            events = (await s.exec(select(func.count()).select_from(AuditEvent))).one()
        return make_checkpoint(heads, events, key=self.audit_key)

    async def below_checkpoint(self, checkpoint: Checkpoint) -> list[ChainBreak]:
        """Each chain the checkpoint anchored that has since lost events or been rewritten,
        and the whole trail if it holds fewer events than the checkpoint counted."""
        trails: dict[str, dict[int, str]] = {}
        async with self._sessions() as s:
            for chain, (seq, _) in checkpoint.heads.items():
                query = select(AuditEvent.seq, AuditEvent.hash).where(
                    AuditEvent.chain == chain, col(AuditEvent.seq) <= seq
                )
                trails[chain] = dict((await s.exec(query)).all())
            events = (await s.exec(select(func.count()).select_from(AuditEvent))).one()
        return below_checkpoint(checkpoint, trails, events)

    async def _altered_rows(self, records: list[ChainRecord]) -> ChainBreak | None:
        """The first event naming a deliverable, tool call or model call whose row no longer
        matches what the event recorded of it."""
        named = [r for r in records if r.kind in RECORDED_ROWS and r.data.get(r.kind) is not None]
        rows: dict[tuple[str, Any], Any] = {}
        async with self._sessions() as s:
            for kind, table in _ROW_TABLES.items():
                ids = {r.data[kind] for r in named if r.kind == kind}
                if ids:
                    found = await s.exec(select(table).where(col(table.id).in_(ids)))
                    rows.update(((kind, row.id), row) for row in found.all())
        for rec in named:
            broken = altered_row(rec, rows.get((rec.kind, rec.data[rec.kind])))
            if broken:
                return broken
        return None


_ROW_TABLES: dict[str, type[Any]] = {
    "deliverable": Deliverable,
    "tool_call": ToolCall,
    "model_call": LlmCall,
}


def _chain_sort_key(chain: str) -> tuple[int, int, str]:
    if chain == SYSTEM_CHAIN:
        return (0, 0, chain)
    try:
        return (1, parse_order_id(chain), chain)
    except ValueError:
        return (2, 0, chain)
