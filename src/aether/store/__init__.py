"""The cluster state store: an etcd-shaped contract, its backends and leader election."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from aether.store.base import (
    CompactedError,
    Compare,
    Delete,
    Event,
    EventType,
    Get,
    Kv,
    LeaseNotFoundError,
    Put,
    StateStore,
    StoreError,
    StoreUnavailableError,
    TxnResult,
)
from aether.store.election import LeaderElection, Leadership, current_leader
from aether.store.etcd import EtcdOptions, EtcdStateStore
from aether.store.sqlite import SqliteStateStore

__all__ = [
    "CompactedError",
    "Compare",
    "Delete",
    "EtcdOptions",
    "EtcdStateStore",
    "Event",
    "EventType",
    "Get",
    "Kv",
    "LeaderElection",
    "Leadership",
    "LeaseNotFoundError",
    "Put",
    "SqliteStateStore",
    "StateStore",
    "StoreError",
    "StoreUnavailableError",
    "TxnResult",
    "current_leader",
    "open_state_store",
]


async def open_state_store(url: str, *, etcd: EtcdOptions | None = None) -> StateStore:
    """Open the backend named by ``url``.

    ``sqlite:///absolute/path.db`` (embedded) or
    ``etcd://host:port[,host:port...][/prefix]`` (an etcd v3 cluster; ``etcds://``
    for TLS). ``etcd``: TLS files, credentials and timeouts for an etcd URL.
    """
    if url.startswith(("etcd://", "etcds://")):
        return await EtcdStateStore.from_url(url, etcd)
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = unquote(parts.path)
        if parts.netloc or not path.startswith("/") or parts.query or parts.fragment:
            raise ValueError(
                f"invalid sqlite state store URL {url!r}: expected sqlite:///absolute/path.db"
            )
        return await SqliteStateStore.open(path)
    raise ValueError(
        f"unsupported state store URL {url!r}: expected sqlite:///absolute/path.db"
        " or etcd[s]://host:port[,host:port...][/prefix]"
    )
