"""The audit trail: an append-only, hash-chained log of events.

Each row stores ``prev_hash`` (the previous row's hash, or the chain's anchor for
the oldest kept row) and ``hash = SHA-256(prev_hash + canonical JSON of the row)``.
The ``audit_chain`` row keeps the head (newest id and hash) and the anchor
(genesis, or the last row retention trimmed). An append first updates that row,
which serializes appends across servers: the row lock on PostgreSQL, the
database's write lock on SQLite (the write comes first, so no read-then-upgrade
deadlock). ``verify_audit`` walks the chain and names the first row that breaks it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import delete, func, select, update

from aether.model.audit import AuditVerdict
from aether.store.records.base import RecordsBase
from aether.store.records.schema import AuditChain, AuditEventRow

__all__ = ["GENESIS", "AuditEntry", "AuditRecords", "row_hash"]

GENESIS = "0" * 64
_CHAIN = 1  # the id of audit_chain's one row
_PAGE = 500  # rows per read while verifying


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What an event says (the row adds its id and the chain's hashes)."""

    ts: float
    actor_kind: str
    actor: str
    action: str
    target: str
    outcome: str
    tenant_id: str | None = None
    tenant: str | None = None
    role: str | None = None
    status: int | None = None
    source: str | None = None
    trace_id: str | None = None
    decision_id: int | None = None
    detail: str = ""

    def bounded(self) -> AuditEntry:
        """Cut to the columns' widths (what is stored is what is hashed)."""
        return AuditEntry(
            **{
                **asdict(self),
                "actor": self.actor[:128],
                "action": self.action[:160],
                "target": self.target[:255],
                "source": self.source[:64] if self.source else self.source,
                "trace_id": self.trace_id[:128] if self.trace_id else self.trace_id,
                "detail": self.detail[:2000],
            }
        )


_FIELDS = tuple(AuditEntry.__dataclass_fields__)


def canonical(row: AuditEventRow) -> str:
    """The row's id and fields as canonical JSON (sorted keys, no spaces)."""
    fields: dict[str, Any] = {name: getattr(row, name) for name in _FIELDS}
    fields["id"] = row.id
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def row_hash(prev_hash: str, row: AuditEventRow) -> str:
    return hashlib.sha256((prev_hash + canonical(row)).encode()).hexdigest()


class AuditRecords(RecordsBase):
    async def append_audit(self, entry: AuditEntry) -> AuditEventRow:
        """Append ``entry`` at the chain's head, atomically (one append at a time)."""
        async with self.sessions() as session:
            # the write first: it takes the lock every other append waits on
            await session.execute(
                update(AuditChain)
                .where(AuditChain.id == _CHAIN)
                .values(head_id=AuditChain.head_id)
                .execution_options(synchronize_session=False)
            )
            chain = await session.scalar(select(AuditChain).where(AuditChain.id == _CHAIN))
            if chain is None:
                raise RuntimeError("the audit chain row is missing (records schema not upgraded?)")
            row = AuditEventRow(**asdict(entry.bounded()), prev_hash=chain.head_hash, hash="")
            session.add(row)
            await session.flush()  # assigns the id, part of what is hashed
            row.hash = row_hash(chain.head_hash, row)
            chain.head_id, chain.head_hash = row.id, row.hash
            await session.commit()
            return row

    async def list_audit(
        self,
        tenant_id: str | None,
        *,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        until: float | None = None,
        after: int | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> Sequence[AuditEventRow]:
        """Newest first; oldest first with ``after`` (events with a larger id).

        ``tenant_id`` None: every tenant's events and the cluster's. ``target``
        matches the target and anything under it (``apps/web`` matches
        ``apps/web/scale``).
        """
        query = select(AuditEventRow).limit(limit)
        if after is not None:
            query = query.where(AuditEventRow.id > after).order_by(AuditEventRow.id.asc())
        else:
            query = query.order_by(AuditEventRow.id.desc())
        if before is not None:
            query = query.where(AuditEventRow.id < before)
        if tenant_id is not None:
            query = query.where(AuditEventRow.tenant_id == tenant_id)
        if actor is not None:
            query = query.where(AuditEventRow.actor == actor)
        if action is not None:
            query = query.where(AuditEventRow.action == action)
        if target is not None:
            query = query.where(
                (AuditEventRow.target == target)
                | AuditEventRow.target.startswith(target.rstrip("/") + "/", autoescape=True)
            )
        if outcome is not None:
            query = query.where(AuditEventRow.outcome == outcome)
        if since is not None:
            query = query.where(AuditEventRow.ts >= since)
        if until is not None:
            query = query.where(AuditEventRow.ts < until)
        async with self.sessions() as session:
            return (await session.scalars(query)).all()

    async def _audit_pages(self, after: int, last: int) -> AsyncIterator[Sequence[AuditEventRow]]:
        while True:
            async with self.sessions() as session:
                page = (
                    await session.scalars(
                        select(AuditEventRow)
                        .where(AuditEventRow.id > after, AuditEventRow.id <= last)
                        .order_by(AuditEventRow.id.asc())
                        .limit(_PAGE)
                    )
                ).all()
            if not page:
                return
            yield page
            after = page[-1].id

    async def verify_audit(self) -> AuditVerdict:
        """Walk the chain from its anchor to its head; the first row that breaks it."""
        async with self.sessions() as session:
            chain = await session.scalar(select(AuditChain).where(AuditChain.id == _CHAIN))
        if chain is None:
            return AuditVerdict(ok=False, checked=0, anchor_id=0, head_id=0, reason="no chain row")
        prev, last_id, checked = chain.anchor_hash, chain.anchor_id, 0

        def broken(row_id: int, reason: str) -> AuditVerdict:
            return AuditVerdict(
                ok=False,
                checked=checked,
                anchor_id=chain.anchor_id,
                head_id=chain.head_id,
                first_bad=row_id,
                reason=reason,
            )

        async for page in self._audit_pages(chain.anchor_id, chain.head_id):
            for row in page:
                if row.prev_hash != prev:
                    return broken(
                        row.id,
                        f"row {row.id} does not follow row {last_id}: "
                        "a row between them was removed, or rows were reordered",
                    )
                if row_hash(prev, row) != row.hash:
                    return broken(row.id, f"row {row.id} was altered: its hash does not match")
                prev, last_id = row.hash, row.id
                checked += 1
        if last_id != chain.head_id or prev != chain.head_hash:
            return broken(
                last_id + 1 if last_id != chain.head_id else chain.head_id,
                f"the chain's head is row {chain.head_id} but the rows end at {last_id} "
                "(the newest rows were removed or the head was changed)",
            )
        return AuditVerdict(
            ok=True, checked=checked, anchor_id=chain.anchor_id, head_id=chain.head_id
        )

    async def trim_audit_before(self, ts: float) -> int:
        """Delete the events older than ``ts``; the last one's hash becomes the anchor,
        so the chain stays verifiable."""
        async with self.sessions() as session:
            await session.execute(
                update(AuditChain)
                .where(AuditChain.id == _CHAIN)
                .values(anchor_id=AuditChain.anchor_id)
                .execution_options(synchronize_session=False)
            )
            last = await session.scalar(
                select(func.max(AuditEventRow.id)).where(AuditEventRow.ts < ts)
            )
            if last is None:
                await session.rollback()
                return 0
            anchor = await session.scalar(
                select(AuditEventRow.hash).where(AuditEventRow.id == last)
            )
            result = await session.execute(delete(AuditEventRow).where(AuditEventRow.id <= last))
            await session.execute(
                update(AuditChain)
                .where(AuditChain.id == _CHAIN)
                .values(anchor_id=last, anchor_hash=anchor)
            )
            await session.commit()
        return int(getattr(result, "rowcount", 0) or 0)
