"""The checkout slice: places an order, priced by the cart. Placing the same order id
again answers the same receipt (the entry point is idempotent)."""

from __future__ import annotations

import os

from pydantic import BaseModel

from aether import slices


class Receipt(BaseModel):
    order_id: str
    total_cents: int
    placed_by: str  # the instance that placed it


@slices.slice(name="checkout")
class Checkout:
    def __init__(self) -> None:
        self.receipts: dict[str, Receipt] = {}

    @slices.entry(idempotent=True)
    async def place(self, order_id: str, items: dict[str, int]) -> Receipt:
        if order_id not in self.receipts:
            total = await slices.get("cart").total(items=items)
            self.receipts[order_id] = Receipt(
                order_id=order_id,
                total_cents=total,
                placed_by=os.environ.get("AETHER_INSTANCE_ID", "?"),
            )
        return self.receipts[order_id]
