"""A tenant's slices as the API serves them: read from the state store's endpoints
and blueprints, and called over the slice wire protocol (``aether.slices.wire``).

The server holds no slice's control key: it makes plain calls only. A call goes to
one ACTIVE instance of the entry point, round robin; one that cannot be reached
(nothing was sent) is tried on the next, and so is one the instance refused as
``unavailable`` (draining) when the entry point is idempotent.
"""

from __future__ import annotations

import itertools
import time
from typing import Any
from urllib.parse import urlsplit

from aether.errors import (
    AetherError,
    BadRequestError,
    DeadlineExceededError,
    InternalError,
    NoEndpointError,
    NotFoundError,
    UpstreamFailedError,
)
from aether.model.cluster import Blueprint
from aether.model.names import cluster_name
from aether.model.slices import (
    SliceEndpoint,
    SliceOut,
    SliceSummaryOut,
    call_arguments,
    slice_detail,
)
from aether.model.slices import slice_summaries as summaries
from aether.slices.wire import CallFailed, Connection
from aether.store.base import StateStore

__all__ = [
    "call_slice",
    "read_slice",
    "slice_summaries",
]

SLICE_RUNTIME = "slice"


async def _read(store: StateStore) -> tuple[list[SliceEndpoint], set[str]]:
    """Every endpoint, and the cluster names of the apps deployed as slices."""
    ep_kvs, _ = await store.range("endpoints/")
    bp_kvs, _ = await store.range("blueprints/")
    endpoints = [ep for kv in ep_kvs if (ep := SliceEndpoint.parse(kv.value)) is not None]
    declared: set[str] = set()
    for kv in bp_kvs:
        bp = Blueprint.model_validate_json(kv.value)
        runtime: str | None = bp.spec.runtime
        if runtime == SLICE_RUNTIME:
            declared.add(bp.app)
    return endpoints, declared


async def slice_summaries(store: StateStore, tenant: str) -> list[SliceSummaryOut]:
    """Tenant ``tenant``'s (its NAME) slices."""
    return summaries(*await _read(store), tenant)


def _missing(name: str) -> NotFoundError:
    # one message for a slice nobody has and another tenant's
    return NotFoundError(f"slice {name!r} not found; `aether slice ls` lists yours")


async def read_slice(store: StateStore, tenant: str, name: str) -> SliceOut:
    found = slice_detail(*await _read(store), tenant, name)
    if found is None:
        raise _missing(name)
    return found


_turns = itertools.count()  # round robin over the instances, across calls


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"not an instance url: {url!r}")
    return parts.hostname, parts.port


def _failed(name: str, entry: str, exc: CallFailed) -> AetherError:
    where = f"{name}.{entry}"
    if exc.code == "bad_request":
        error = BadRequestError(f"{where}: invalid arguments: {_problems(exc.details)}")
        error.details = {"details": exc.details}
        return error
    if exc.code == "not_found":
        return NotFoundError(f"slice {name!r} has no entry point {entry!r}")
    if exc.code == "deadline_exceeded":
        return DeadlineExceededError(f"{where}: no answer by the deadline")
    if exc.code == "internal":  # the entry point raised: as a router answers it
        return InternalError(f"{where}: {exc.message}")
    return UpstreamFailedError(f"{where} failed: {exc.message}")


def _problems(details: Any) -> str:
    """Pydantic's errors, shortly: ``loc: msg; …``."""
    if not isinstance(details, list) or not details:
        return "see details"
    said = []
    for err in details[:5]:
        if isinstance(err, dict):
            loc = ".".join(str(p) for p in err.get("loc") or [])
            said.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg")))
    return "; ".join(said) or "see details"


async def call_slice(
    store: StateStore,
    tenant: str,
    name: str,
    entry: str,
    body: Any,
    *,
    trace: str | None = None,
) -> Any:
    """The result of calling ``name.entry`` with the arguments of a ``:call`` body
    (``model.slices.call_arguments``) on one ACTIVE instance.

    The slice and entry point are looked for first: a call to one the tenant lacks is
    a 404 whatever its body."""
    endpoints, declared = await _read(store)
    found = slice_detail(endpoints, declared, tenant, name)
    if found is None:
        raise _missing(name)
    if not found.instances:
        raise NoEndpointError(f"slice {name!r} has no ACTIVE instance")
    described = {e.name: e.schema_ for e in found.entries}
    if entry not in described:
        raise NotFoundError(f"slice {name!r} has no entry point {entry!r}")
    try:
        args, kwargs, timeout = call_arguments(body)
    except ValueError as exc:
        raise BadRequestError(f"invalid call: {exc}") from None
    idempotent = bool((described[entry] or {}).get("idempotent"))
    cluster = cluster_name(name, tenant)
    urls = sorted({ep.url for ep in endpoints if ep.app == cluster and ep.entry == entry})
    start = next(_turns) % len(urls)
    deadline = time.time() + timeout
    last: AetherError = NoEndpointError(f"no instance of slice {name!r} could be reached")
    for url in urls[start:] + urls[:start]:
        left = deadline - time.time()
        if left <= 0:
            raise DeadlineExceededError(f"{name}.{entry}: no answer by the deadline")
        try:
            host, port = _address(url)
            conn = await Connection.open(host, port, timeout=min(5.0, left))
        except (OSError, TimeoutError, ValueError) as exc:
            last = NoEndpointError(f"no instance of slice {name!r} could be reached: {exc}")
            continue  # nothing was sent: the next instance
        try:
            return await conn.call(entry, args, kwargs, deadline=deadline, trace=trace)
        except CallFailed as exc:
            if exc.code == "unavailable" and (not exc.sent or idempotent):
                last = UpstreamFailedError(f"{name}.{entry} failed: {exc.message}")
                continue
            raise _failed(name, entry, exc) from None
        finally:
            await conn.close()
    raise last
