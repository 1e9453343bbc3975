"""Reading and verifying the audit trail (appending is in the base: every change does it)."""

from __future__ import annotations

from typing import Any

from sqlmodel import col, select

from workers.audit import SYSTEM_CHAIN, ChainBreak, ChainRecord, verify_chain
from workers.models import AuditEvent
from workers.store.base import StoreBase, _record
from workers.workorder import parse_order_id


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

    async def verify_audit(self) -> tuple[int, list[ChainBreak]]:
        """Verify every chain; return how many events were checked and each chain's first break."""
        checked = 0
        breaks: list[ChainBreak] = []
        for chain in await self.audit_chains():
            records = await self.audit_trail(chain)
            checked += len(records)
            broken = verify_chain(records)
            if broken:
                breaks.append(broken)
        return checked, breaks


def _chain_sort_key(chain: str) -> tuple[int, int, str]:
    if chain == SYSTEM_CHAIN:
        return (0, 0, chain)
    try:
        return (1, parse_order_id(chain), chain)
    except ValueError:
        return (2, 0, chain)
