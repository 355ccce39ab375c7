"""The distributed state store: etcd v3 through its JSON gateway (``/v3/...``).

Everything maps one to one onto etcd: revisions are etcd's own (one cluster-wide
counter), ``txn`` is an etcd transaction, leases are etcd leases and ``watch`` is
an etcd watch stream with ``prev_kv``. Keys live under an optional ``prefix``
that is added on the way in and stripped on the way out, so several Aether
installations (or tests) can share one cluster; revisions and compaction stay
cluster-wide.

Several endpoints may be given (the cluster's members). A request that cannot
connect moves on to the next member. Reads are also retried on a member when
the one asked failed after the request was sent; writes are not (the write may
have been applied) and raise ``StoreUnavailableError`` instead, as does a
request no member could serve. Every request has a deadline (``timeout``), so a
member that is stopped (SIGSTOP, a hung VM) costs one timeout and the next
request goes to another member. A watch whose connection breaks reconnects to
the next member from the revision after the last event it delivered, so it
neither misses nor repeats events; compacted history raises ``CompactedError``.
A watch stream that stays silent for ``watch_idle_timeout`` seconds has its
member probed with a short request; a member that does not answer is taken for
frozen and the watch moves to another member (etcd's own progress notifications,
which the watch asks for, come only every ten minutes by default).

``etcds://`` speaks HTTPS (a CA file, and a client certificate for mutual TLS,
in :class:`EtcdOptions`). With a user name and password the store asks
``/v3/auth/authenticate`` for a token and sends it as the ``Authorization``
header; a token etcd no longer accepts (simple tokens expire after
``--auth-token-ttl`` of disuse, JWTs after their ``ttl``) is renewed once and the
request retried — etcd refuses such a request before applying it, so this is
safe for writes too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
from collections.abc import Sequence
from typing import Any

import httpx

from aether.store.base import (
    Compare,
    Delete,
    Get,
    Kv,
    LeaseNotFoundError,
    Op,
    Put,
    StoreError,
    TxnResult,
    check_compare,
    check_ops,
)
from aether.store.etcd.settings import EtcdOptions, etcd_tls_context, parse_etcd_url
from aether.store.etcd.watch import EtcdWatch
from aether.store.etcd.wire import (
    _RESULTS,
    _TARGETS,
    _b64,
)

__all__ = ["EtcdStateStore"]

log = logging.getLogger("aether.store.etcd")


class EtcdStateStore(EtcdWatch):
    """``StateStore`` on an etcd v3 cluster; see the module docstring."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        prefix: str = "",
        timeout: float = 5.0,
        retry_interval: float = 0.2,
        tls: ssl.SSLContext | None = None,
        username: str = "",
        password: str = "",
        watch_idle_timeout: float = 3.0,
        max_txn_ops: int = 128,
    ) -> None:
        """Use :meth:`open`, which also checks that the cluster answers.

        ``tls``: the context for ``https://`` endpoints (default: the system's CAs).
        ``max_txn_ops``: the members' ``--max-txn-ops`` (etcd's default, 128).
        """
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if not timeout > 0 or not watch_idle_timeout > 0:
            raise ValueError("etcd timeouts must be positive")
        if password and not username:
            raise ValueError("an etcd password needs a user name")
        if max_txn_ops < 2:
            raise ValueError("max_txn_ops must be at least 2")
        self.max_txn_ops = max_txn_ops
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.prefix = prefix
        self._prefix = prefix.encode()
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._watch_idle = watch_idle_timeout
        self._username = username
        self._password = password
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()
        self._current = 0  # index of the endpoint that answered last
        self._lease_ttls: dict[int, int] = {}  # lease → its granted TTL (keepalive deadlines)
        self._answered: dict[int, float] = {}  # endpoint index → monotonic time of its last answer
        self._client = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
            verify=tls if tls is not None else True,
        )
        self._closed = False
        self._watches: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls,
        endpoints: Sequence[str],
        *,
        prefix: str = "",
        timeout: float = 5.0,
        tls: ssl.SSLContext | None = None,
        username: str = "",
        password: str = "",
        watch_idle_timeout: float = 3.0,
    ) -> EtcdStateStore:
        store = cls(
            endpoints,
            prefix=prefix,
            timeout=timeout,
            tls=tls,
            username=username,
            password=password,
            watch_idle_timeout=watch_idle_timeout,
        )
        try:
            await store.revision()
        except BaseException:
            await store.close()
            raise
        return store

    @classmethod
    async def from_url(cls, url: str, options: EtcdOptions | None = None) -> EtcdStateStore:
        """Open ``etcd[s]://…`` with ``options`` (TLS files, credentials, timeouts)."""
        options = options or EtcdOptions()
        parsed = parse_etcd_url(url)
        https = parsed.endpoints[0].startswith("https://")
        if options.has_tls_files and not https:
            raise ValueError(
                "etcd TLS files are set (AETHER_ETCD_CA_FILE, _CERT_FILE, _KEY_FILE) but the "
                f"state store URL is plain etcd://; write etcds://{url.partition('://')[2]}"
            )
        if parsed.username and options.username:
            raise ValueError(
                "etcd credentials are given twice (in the URL and in AETHER_ETCD_USERNAME): "
                "keep one"
            )
        if bool(options.username) != bool(options.password):
            raise ValueError("AETHER_ETCD_USERNAME and AETHER_ETCD_PASSWORD go together")
        tls = (
            etcd_tls_context(options.ca_file, options.cert_file, options.key_file)
            if https
            else None
        )
        return await cls.open(
            parsed.endpoints,
            prefix=parsed.prefix,
            timeout=options.timeout,
            tls=tls,
            username=parsed.username or options.username,
            password=parsed.password or options.password,
            watch_idle_timeout=options.watch_idle_timeout,
        )

    # -- reads -----------------------------------------------------------------

    async def get(self, key: str) -> Kv | None:
        data = await self._call("/v3/kv/range", self._range_body(key, False), idempotent=True)
        kvs = data.get("kvs") or []
        return self._kv(kvs[0]) if kvs else None

    async def range(self, prefix: str) -> tuple[list[Kv], int]:
        data = await self._call("/v3/kv/range", self._range_body(prefix, True), idempotent=True)
        return [self._kv(kv) for kv in data.get("kvs") or []], self._revision(data)

    async def revision(self) -> int:
        body = {"key": _b64(self._prefix or b"\0"), "count_only": True}
        return self._revision(await self._call("/v3/kv/range", body, idempotent=True))

    # -- writes ----------------------------------------------------------------

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        if not key:
            raise ValueError("key must not be empty")
        body: dict[str, Any] = {"key": _b64(self._key(key)), "value": _b64(bytes(value))}
        if lease:
            body["lease"] = str(lease)
        return self._revision(await self._call("/v3/kv/put", body, idempotent=False))

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        data = await self._call(
            "/v3/kv/deleterange", self._range_body(key, prefix), idempotent=False
        )
        return int(data.get("deleted", 0))

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        for c in compare:
            check_compare(c)
        check_ops(success)
        check_ops(failure)
        body = {
            "compare": [self._compare(c) for c in compare],
            "success": [self._op(op) for op in success],
            "failure": [self._op(op) for op in failure],
        }
        writes = any(not isinstance(op, Get) for op in (*success, *failure))
        data = await self._call("/v3/kv/txn", body, idempotent=not writes)
        responses: list[list[Kv] | int | None] = []
        for response in data.get("responses") or []:
            if "response_range" in response:
                kvs = (response["response_range"] or {}).get("kvs") or []
                responses.append([self._kv(kv) for kv in kvs])
            elif "response_delete_range" in response:
                responses.append(int((response["response_delete_range"] or {}).get("deleted", 0)))
            else:
                responses.append(None)
        return TxnResult(bool(data.get("succeeded", False)), self._revision(data), responses)

    def _compare(self, c: Compare) -> dict[str, Any]:
        target, field = _TARGETS[c.target]
        value = c.value
        encoded = _b64(value) if isinstance(value, bytes) else str(value)
        return {
            "key": _b64(self._key(c.key)),
            "target": target,
            "result": _RESULTS[c.op],
            field: encoded,
        }

    def _op(self, op: Op) -> dict[str, Any]:
        if isinstance(op, Put):
            if not op.key:
                raise ValueError("key must not be empty")
            put: dict[str, Any] = {"key": _b64(self._key(op.key)), "value": _b64(bytes(op.value))}
            if op.lease:
                put["lease"] = str(op.lease)
            return {"request_put": put}
        if isinstance(op, Delete):
            return {"request_delete_range": self._range_body(op.key, op.prefix)}
        return {"request_range": self._range_body(op.key, op.prefix)}

    async def compact(self, revision: int) -> None:
        try:
            await self._call("/v3/kv/compaction", {"revision": str(revision)}, idempotent=True)
        except StoreError as e:
            text = str(e)
            if "future revision" in text:
                raise ValueError(f"cannot compact to {revision}: {text}") from e
            if "has been compacted" in text:
                return  # already compacted at least that far
            raise

    # -- leases ----------------------------------------------------------------

    async def lease_grant(self, ttl: float) -> int:
        if not ttl > 0:
            raise ValueError("lease TTL must be positive")
        seconds = max(1, math.ceil(ttl))  # etcd TTLs are whole seconds
        data = await self._call("/v3/lease/grant", {"TTL": str(seconds)}, idempotent=False)
        if data.get("error"):
            raise StoreError(f"etcd: cannot grant lease: {data['error']}")
        lease = int(data["ID"])
        self._lease_ttls[lease] = seconds
        return lease

    async def lease_keepalive(self, lease: int) -> float:
        """Refresh ``lease``, giving each member at most a third of its TTL to answer.

        A frozen member must not hold a keepalive past the lease's expiry: with the
        short deadline the request moves to another member in time (a leader's
        lease of 3 s is refreshed every second; the store's timeout is 5 s).
        """
        ttl = self._lease_ttls.get(lease)
        timeout = None if ttl is None else min(self._timeout, max(0.5, ttl / 3))
        data = await self._call(
            "/v3/lease/keepalive", {"ID": str(lease)}, idempotent=True, timeout=timeout
        )
        ttl = int(data.get("TTL", 0))
        if ttl <= 0:
            raise LeaseNotFoundError(f"lease {lease} not found or expired")
        return float(ttl)

    async def lease_revoke(self, lease: int) -> None:
        self._lease_ttls.pop(lease, None)
        with contextlib.suppress(LeaseNotFoundError):
            await self._call("/v3/lease/revoke", {"ID": str(lease)}, idempotent=True)

    # -- lifecycle -------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        watches = list(self._watches)
        for task in watches:
            task.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
        await self._client.aclose()
