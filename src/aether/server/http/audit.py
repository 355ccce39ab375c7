"""Refusals of a caller acting beyond its rights: a 403, and one audit line each.

The line goes to the ``aether.audit`` logger as ``refused: {json}`` with who
(token id, role, tenant, node), what (method and path), which object and why,
and the request's trace id; the same fields ride on the record as ``audit``.
Never a secret: tokens appear by id only. (An audit table comes later.)
"""

from __future__ import annotations

import json
import logging

from fastapi import Request

from aether.errors import ForbiddenError
from aether.server.http.errors import trace_id_of
from aether.store.records import Principal

__all__ = ["refuse"]

log = logging.getLogger("aether.audit")


def refuse(
    request: Request, caller: Principal, target: str, reason: str, *, message: str | None = None
) -> ForbiddenError:
    """Log the refusal of ``caller`` on ``target`` and return the 403 to raise.

    ``message`` is what the caller reads (default: ``reason``); say no more in it
    than the caller may know.
    """
    fields = {
        "token_id": caller.token_id,
        "role": caller.role,
        "tenant": caller.tenant,
        "node": caller.node,
        "method": request.method,
        "path": request.url.path,
        "target": target,
        "reason": reason,
        "trace_id": trace_id_of(request),
    }
    log.warning("refused: %s", json.dumps(fields, sort_keys=True), extra={"audit": fields})
    return ForbiddenError(message or reason)
