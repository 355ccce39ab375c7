"""The cart slice: a basket's total, priced by the catalog (each price a call that the
catalog answers in batches)."""

from __future__ import annotations

import asyncio

from aether import slices


@slices.slice(name="cart")
async def total(items: dict[str, int]) -> int:
    """The basket's total in cents: ``{"tea": 2, "cup": 1}`` → 2100."""
    if any(quantity < 0 for quantity in items.values()):
        raise ValueError("a quantity cannot be negative")
    catalog = slices.get("catalog")
    prices = await asyncio.gather(*(catalog.price(skus=sku) for sku in items))
    unknown = [sku for sku, price in zip(items, prices, strict=True) if price < 0]
    if unknown:
        raise ValueError(f"not sold here: {', '.join(sorted(unknown))}")
    return sum(price * items[sku] for sku, price in zip(items, prices, strict=True))
