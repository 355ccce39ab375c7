"""A tenant's catalog of model endpoints (``agent_models``): ``model://NAME``.

The API key arrives here already sealed (``services/secretbox.py``); this part never
sees a plain key.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from aether.errors import ConflictError
from aether.store.records.base import RecordsBase, new_id, now
from aether.store.records.schema import AgentModel

__all__ = ["ModelRecords", "NewModel"]


@dataclass(frozen=True)
class NewModel:
    """A model to add (``api_key``: sealed, or None)."""

    name: str
    provider: str
    base_url: str
    model_id: str
    context_window: int
    price_in_per_1k: float
    price_out_per_1k: float
    api_key: str | None = None

    def __repr__(self) -> str:  # the sealed key stays out of logs too
        return f"NewModel(name={self.name!r}, base_url={self.base_url!r})"


class ModelRecords(RecordsBase):
    async def add_model(self, tenant_id: str, model: NewModel) -> AgentModel:
        """Add ``model`` to the tenant's catalog; a name it already has is a 409."""
        row = AgentModel(
            id=new_id(),
            tenant_id=tenant_id,
            name=model.name,
            provider=model.provider,
            base_url=model.base_url,
            model_id=model.model_id,
            context_window=model.context_window,
            price_in_per_1k=model.price_in_per_1k,
            price_out_per_1k=model.price_out_per_1k,
            api_key=model.api_key,
            created_at=now(),
        )
        async with self.sessions() as session:
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:
                raise ConflictError(f"model {model.name!r} already exists") from None
        return row

    async def list_models(self, tenant_id: str) -> list[AgentModel]:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(AgentModel)
                .where(AgentModel.tenant_id == tenant_id)
                .order_by(AgentModel.name)
            )
            return list(rows)

    async def get_model(self, tenant_id: str, name: str) -> AgentModel | None:
        async with self.sessions() as session:
            row: AgentModel | None = await session.scalar(
                select(AgentModel).where(AgentModel.tenant_id == tenant_id, AgentModel.name == name)
            )
            return row

    async def delete_model(self, tenant_id: str, name: str) -> bool:
        """Remove the tenant's model ``name``; False if it had none."""
        return await self.delete_owned(AgentModel, tenant_id, name=name)
