"""The catalog slice: what the shop sells and at what price."""

from __future__ import annotations

from pydantic import BaseModel

from aether import slices


class Item(BaseModel):
    sku: str
    name: str
    price_cents: int


ITEMS = [
    Item(sku="tea", name="Green tea, 100 g", price_cents=450),
    Item(sku="cup", name="Stoneware cup", price_cents=1200),
    Item(sku="pot", name="Cast iron teapot", price_cents=3900),
]


@slices.slice(name="catalog")
class Catalog:
    def __init__(self) -> None:  # LOAD
        self.items: dict[str, Item] = {}
        self.batches: list[int] = []

    async def activate(self) -> None:  # ACTIVATE: load the items
        self.items = {item.sku: item for item in ITEMS}

    @slices.entry(idempotent=True)
    async def item(self, sku: str) -> Item | None:
        """One item, or null when the shop does not sell it."""
        return self.items.get(sku)

    @slices.entry(idempotent=True)
    async def items_list(self) -> list[Item]:
        return sorted(self.items.values(), key=lambda item: item.sku)

    @slices.entry(idempotent=True)
    @slices.batch(max_size=16, max_wait_ms=5)
    async def price(self, skus: list[str]) -> list[int]:
        """Called once per sku (``price(skus="tea")``); runs once per batch of calls."""
        self.batches.append(len(skus))
        return [self.items[sku].price_cents if sku in self.items else -1 for sku in skus]

    @slices.entry(idempotent=True)
    async def batch_sizes(self) -> list[int]:
        """How many calls each run of ``price`` answered (this instance's)."""
        return list(self.batches)
