"""Slices: typed Python entry points as the unit of deployment (docs/slices.md).

    from aether import slices

    @slices.slice
    class Catalog:
        @slices.entry(idempotent=True)
        async def price(self, sku: str) -> int: ...

This package runs inside slice sandboxes as well as in the node and the router:
it imports only the standard library and pydantic. ``wire`` is the protocol,
``host`` the process that serves a slice (``python -m aether.slices.host``).

The public names are loaded on first use, so that importing ``aether.slices.wire``
(routers, nodes) costs no more than the wire itself.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aether.slices.authoring import batch, entry, slice
    from aether.slices.errors import CallError
    from aether.slices.handles import Handle, get

__all__ = ["CallError", "Handle", "batch", "entry", "get", "slice"]

_WHERE = {
    "batch": "aether.slices.authoring",
    "entry": "aether.slices.authoring",
    "slice": "aether.slices.authoring",
    "CallError": "aether.slices.errors",
    "Handle": "aether.slices.handles",
    "get": "aether.slices.handles",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'aether.slices' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
