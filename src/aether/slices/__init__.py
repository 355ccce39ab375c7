"""Slices: typed Python entry points as the unit of deployment (docs/slices.md).

    from aether import slices

    @slices.slice
    class Catalog:
        @slices.entry(idempotent=True)
        async def price(self, sku: str) -> int: ...

This package runs inside slice sandboxes as well as in the node and the router:
it imports only the standard library and pydantic. ``wire`` is the protocol,
``host`` the process that serves a slice (``python -m aether.slices.host``).
"""

from aether.slices.authoring import batch, entry, slice
from aether.slices.errors import CallError
from aether.slices.handles import Handle, get

__all__ = ["CallError", "Handle", "batch", "entry", "get", "slice"]
