"""Diagnostics requests to nodes: which node is asked for its part, and where it sends it.

A bundle request (``POST /api/v1/diag/bundle``) names nodes. The server that took it
(the *builder*) keeps the request, the parts received and the "all in" event in its
memory (:class:`DiagRequest`), and publishes what the other servers need to know in the
shared state store: ``diag/{id}`` = ``{"since", "nodes" (still owed), "to" (the
builder's node port URL), "schema"}`` (``model.diag.DiagRequestRecord``), on a
lease that outlives the bundle's wait (so a builder that dies leaves nothing behind).
Every server keeps the ``diag/`` keys in its memory by watching the prefix
(:func:`follow`): a heartbeat reads only memory.

Whichever server a node heartbeats, its answer asks the node for the oldest request
that still names it (``{"diag": {"id", "since", "to"}}``). The node builds its part
(redacted), and posts it to ``{to}/api/v1/nodes/{node}/diag/{id}``: straight to the
builder's node port over the node's mutual-TLS client, so the part stays authenticated
as the node (its certificate and credential), the server's certificate is checked
against the cluster CA before the credential is sent, and a node may only send its own
part (``own_node``). The builder keeps the part, and rewrites the key without that node
so that no server asks it again. When every node has answered, or the wait is over,
the builder packs the bundle and revokes the lease (the key goes, and with it every
server's copy); the nodes that did not answer are listed as missing in the manifest.

If the request cannot be published (the store unreachable), only the nodes heartbeating
the builder are asked; the manifest says why the others are missing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aether.model.diag import DiagRequestRecord
from aether.store.base import CompactedError, Event, EventType, Kv, StateStore, StoreError

__all__ = [
    "PREFIX",
    "Asked",
    "DiagRequest",
    "DiagRequests",
    "decode",
    "encode",
    "follow",
    "publish",
    "published_without",
    "withdraw",
]

PREFIX = "diag/"
RETRY_SECONDS = 1.0

log = logging.getLogger("aether.server")


@dataclass(frozen=True)
class Asked:
    """An open request as every server sees it: whom it still waits for, and where the
    parts go."""

    id: str
    since: float
    nodes: frozenset[str]
    to: str | None = None  # the builder's node port URL


def encode(asked: Asked) -> bytes:
    record = DiagRequestRecord(since=asked.since, nodes=sorted(asked.nodes), to=asked.to)
    return record.model_dump_json().encode()


def decode(key: str, value: bytes) -> Asked | None:
    """The request stored under ``key``; None for a value this version cannot read."""
    try:
        record = DiagRequestRecord.model_validate_json(value)
    except ValueError:  # not JSON, not a request, or a newer version's
        return None
    return Asked(key.removeprefix(PREFIX), record.since, frozenset(record.nodes), record.to)


@dataclass
class DiagRequest:
    """A request on the server building its bundle."""

    id: str
    since: float
    nodes: set[str]
    to: str | None = None
    parts: dict[str, dict[str, str]] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    lease: int = 0  # the lease of its ``diag/{id}`` key, once published
    unshared: str | None = None  # why the other servers do not know it, if they do not

    def owed(self) -> Asked:
        return Asked(self.id, self.since, frozenset(self.nodes - set(self.parts)), self.to)


class DiagRequests:
    """This server's requests (``open``: the bundles it builds) and every server's
    (``asked``: kept from the store by :func:`follow`, this server's own added at once)."""

    def __init__(self) -> None:
        self.open: dict[str, DiagRequest] = {}
        self.asked: dict[str, Asked] = {}

    def ask(self, nodes: set[str], since: float, to: str | None = None) -> DiagRequest:
        request = DiagRequest(secrets.token_hex(8), since, set(nodes), to)
        if not nodes:
            request.done.set()
        self.open[request.id] = request
        self.asked[request.id] = request.owed()
        return request

    def close(self, request: DiagRequest) -> None:
        self.open.pop(request.id, None)
        self.asked.pop(request.id, None)

    def wanted(self, node: str) -> dict[str, Any] | None:
        """What to add to ``node``'s heartbeat answer: the oldest open request it owes."""
        for asked in self.asked.values():
            if node in asked.nodes:
                wanted: dict[str, Any] = {"id": asked.id, "since": asked.since}
                if asked.to:
                    wanted["to"] = asked.to
                return wanted
        return None

    def answer(self, request_id: str, node: str, files: dict[str, str]) -> bool:
        """Keep ``node``'s part; False if no request this server builds asked it for one."""
        request = self.open.get(request_id)
        if request is None or node not in request.nodes:
            return False
        request.parts[node] = files
        self.asked[request_id] = request.owed()
        if set(request.parts) >= request.nodes:
            request.done.set()
        return True

    # -- every server's copy of the store's ``diag/`` keys ------------------------------

    def relist(self, kvs: Iterable[Kv]) -> None:
        """The store's requests, read whole (start, or after a compacted watch)."""
        stored = {}
        for kv in kvs:
            asked = decode(kv.key, kv.value)
            if asked is not None:
                stored[asked.id] = asked
        for request in self.open.values():  # this server's own: its memory is the truth
            stored[request.id] = request.owed()
        self.asked = stored

    def seen(self, event: Event) -> None:
        request_id = event.kv.key.removeprefix(PREFIX)
        if request_id in self.open:
            return  # this server's own request: its memory is the truth
        asked = decode(event.kv.key, event.kv.value) if event.type is EventType.PUT else None
        if asked is None:
            self.asked.pop(request_id, None)
        else:
            self.asked[request_id] = asked


async def publish(store: StateStore, request: DiagRequest, ttl: float) -> None:
    """Tell the other servers (``diag/{id}``, on a lease of ``ttl`` seconds)."""
    try:
        request.lease = await store.lease_grant(ttl)
        await store.put(PREFIX + request.id, encode(request.owed()), lease=request.lease)
    except StoreError as exc:
        request.unshared = f"the request could not be shared with the other servers ({exc})"
        log.warning("diagnostics request %s not shared (%s)", request.id, exc)


async def published_without(store: StateStore, request: DiagRequest, node: str) -> None:
    """``node`` answered: the other servers stop asking it."""
    if not request.lease or request.done.is_set():
        return  # unshared, or about to be withdrawn
    try:
        await store.put(PREFIX + request.id, encode(request.owed()), lease=request.lease)
    except StoreError as exc:  # the node ignores a request it already answered
        log.debug("diagnostics request %s not updated (%s)", request.id, exc)


async def withdraw(store: StateStore, request: DiagRequest) -> None:
    """The bundle is built: its key goes (revoking the lease deletes it)."""
    if request.lease:
        try:
            await store.lease_revoke(request.lease)
        except StoreError as exc:  # the lease ends by itself
            log.debug("diagnostics request %s not withdrawn (%s)", request.id, exc)


async def follow(store: StateStore, requests: DiagRequests) -> None:
    """Keep ``requests.asked`` in step with the store's ``diag/`` keys (every server,
    until cancelled): read them whole, then watch the prefix."""
    while True:
        try:
            kvs, revision = await store.range(PREFIX)
            requests.relist(kvs)
            async for event in store.watch(PREFIX, revision + 1):
                requests.seen(event)
        except CompactedError:
            continue  # read them whole again
        except Exception as exc:  # the store unreachable, or a backend's own error: again
            log.warning("following diagnostics requests failed (%s); retrying", exc)
        await asyncio.sleep(RETRY_SECONDS)
