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
request no member could serve. A watch whose connection breaks reconnects to
the next member from the revision after the last event it delivered, so it
neither misses nor repeats events; compacted history raises ``CompactedError``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from aether.store.base import (
    CompactedError,
    Compare,
    Delete,
    Event,
    EventType,
    Get,
    Kv,
    LeaseNotFoundError,
    Op,
    Put,
    StoreError,
    StoreUnavailableError,
    TxnResult,
)
from aether.store.sqlite import _check_compare, _check_ops

__all__ = ["EtcdStateStore", "parse_etcd_url"]

log = logging.getLogger(__name__)

_TARGETS = {
    "value": ("VALUE", "value"),
    "version": ("VERSION", "version"),
    "create_revision": ("CREATE", "create_revision"),
    "mod_revision": ("MOD", "mod_revision"),
    "lease": ("LEASE", "lease"),
}
_RESULTS = {"==": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}

# gRPC status codes etcd's gateway reports in error bodies
_INVALID_ARGUMENT = 3
_DEADLINE_EXCEEDED = 4
_NOT_FOUND = 5
_OUT_OF_RANGE = 11
_UNAVAILABLE = 14


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _describe(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for every key starting with ``prefix`` (``\\0`` = no end)."""
    data = bytearray(prefix)
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return bytes(data)
        data.pop()
    return b"\0"


def parse_etcd_url(url: str) -> tuple[list[str], str]:
    """``etcd://host:port[,host:port...][/prefix]`` → (endpoint URLs, key prefix).

    A non-empty prefix always ends with ``/`` so ``/a`` and ``/ab`` stay apart.
    """
    if not url.startswith("etcd://"):
        raise ValueError(f"invalid etcd URL {url!r}: expected etcd://host:port[,host:port...]")
    rest = url[len("etcd://") :]
    hosts, _, path = rest.partition("/")
    if "?" in rest or "#" in rest:
        raise ValueError(f"invalid etcd URL {url!r}: no query or fragment allowed")
    endpoints: list[str] = []
    for host in hosts.split(","):
        host = host.strip()
        name, sep, port = host.rpartition(":")
        if not host or not sep or not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"invalid etcd URL {url!r}: {host!r} is not host:port")
        endpoints.append(f"http://{host}")
    prefix = path.strip("/")
    return endpoints, f"{prefix}/" if prefix else ""


class _End:
    """Marks the end of a watch's event queue."""


class EtcdStateStore:
    """``StateStore`` on an etcd v3 cluster; see the module docstring."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        prefix: str = "",
        timeout: float = 5.0,
        retry_interval: float = 0.2,
    ) -> None:
        """Use :meth:`open`, which also checks that the cluster answers."""
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.prefix = prefix
        self._prefix = prefix.encode()
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._current = 0  # index of the endpoint that answered last
        self._client = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
        )
        self._closed = False
        self._watches: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls, endpoints: Sequence[str], *, prefix: str = "", timeout: float = 5.0
    ) -> EtcdStateStore:
        store = cls(endpoints, prefix=prefix, timeout=timeout)
        try:
            await store.revision()
        except BaseException:
            await store.close()
            raise
        return store

    @classmethod
    async def from_url(cls, url: str) -> EtcdStateStore:
        endpoints, prefix = parse_etcd_url(url)
        return await cls.open(endpoints, prefix=prefix)

    # -- transport -------------------------------------------------------------

    async def _call(self, path: str, body: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
        """POST to the first member that answers; map etcd errors to store errors."""
        self._check_open()
        failures: list[str] = []
        count = len(self.endpoints)
        for attempt in range(count):
            index = (self._current + attempt) % count
            endpoint = self.endpoints[index]
            try:
                response = await self._client.post(endpoint + path, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
                failures.append(f"{endpoint}: {_describe(e)}")
                continue
            except httpx.TransportError as e:
                failures.append(f"{endpoint}: {_describe(e)}")
                if idempotent:
                    continue
                raise StoreUnavailableError(
                    f"etcd {endpoint} failed during a write, which may or may not have been"
                    f" applied: {_describe(e)}"
                ) from e
            if response.status_code == 200:
                self._current = index
                return self._decode(endpoint, response.text)
            code, message = self._error(response)
            if code in (_UNAVAILABLE, _DEADLINE_EXCEEDED) or response.status_code >= 500:
                failures.append(f"{endpoint}: {message}")
                if idempotent and code != _DEADLINE_EXCEEDED:
                    continue
                raise StoreUnavailableError(f"etcd {endpoint}: {message}")
            raise self._mapped(code, message)
        raise StoreUnavailableError("no etcd member reachable: " + "; ".join(failures))

    @staticmethod
    def _decode(endpoint: str, text: str) -> dict[str, Any]:
        # Streaming RPCs (lease keepalive) answer {"result": ...} lines; take the first.
        line = next((line for line in text.splitlines() if line.strip()), "{}")
        try:
            data = json.loads(line)
        except ValueError as e:
            raise StoreError(f"etcd {endpoint}: unreadable response {text[:200]!r}") from e
        if not isinstance(data, dict):
            raise StoreError(f"etcd {endpoint}: unexpected response {text[:200]!r}")
        if isinstance(data.get("error"), dict):  # an error inside a stream
            error = data["error"]
            raise EtcdStateStore._mapped(
                int(error.get("grpc_code", error.get("code", 2))), str(error.get("message", ""))
            )
        result = data.get("result", data)
        return result if isinstance(result, dict) else {}

    @staticmethod
    def _error(response: httpx.Response) -> tuple[int, str]:
        try:
            data = response.json()
        except ValueError:
            return 2, f"HTTP {response.status_code}: {response.text[:200]}"
        if not isinstance(data, dict):
            return 2, f"HTTP {response.status_code}: {response.text[:200]}"
        message = str(data.get("message") or data.get("error") or response.text[:200])
        return int(data.get("code", 2)), message

    @staticmethod
    def _mapped(code: int, message: str) -> StoreError | ValueError:
        if "lease not found" in message:
            return LeaseNotFoundError(message)
        if code in (_UNAVAILABLE, _DEADLINE_EXCEEDED):
            return StoreUnavailableError(f"etcd: {message}")
        if code == _INVALID_ARGUMENT:
            return ValueError(f"etcd: {message}")
        return StoreError(f"etcd: {message}")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("etcd state store is closed")

    # -- keys ------------------------------------------------------------------

    def _key(self, key: str) -> bytes:
        return self._prefix + key.encode()

    def _range_body(self, key: str, prefix: bool) -> dict[str, Any]:
        full = self._key(key)
        body: dict[str, Any] = {"key": _b64(full or b"\0")}
        if prefix:
            body["range_end"] = _b64(_prefix_end(full)) if full else _b64(b"\0")
        return body

    def _kv(self, data: dict[str, Any]) -> Kv:
        raw = _unb64(data.get("key"))
        if not raw.startswith(self._prefix):  # pragma: no cover - etcd filters by range
            raise StoreError(f"etcd returned key {raw!r} outside prefix {self.prefix!r}")
        return Kv(
            raw[len(self._prefix) :].decode(),
            _unb64(data.get("value")),
            int(data.get("create_revision", 0)),
            int(data.get("mod_revision", 0)),
            int(data.get("version", 0)),
            int(data.get("lease", 0)),
        )

    @staticmethod
    def _revision(data: dict[str, Any]) -> int:
        header = data.get("header") or {}
        return int(header.get("revision", 0))

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
            _check_compare(c)
        _check_ops(success)
        _check_ops(failure)
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
        return int(data["ID"])

    async def lease_keepalive(self, lease: int) -> float:
        data = await self._call("/v3/lease/keepalive", {"ID": str(lease)}, idempotent=True)
        ttl = int(data.get("TTL", 0))
        if ttl <= 0:
            raise LeaseNotFoundError(f"lease {lease} not found or expired")
        return float(ttl)

    async def lease_revoke(self, lease: int) -> None:
        with contextlib.suppress(LeaseNotFoundError):
            await self._call("/v3/lease/revoke", {"ID": str(lease)}, idempotent=True)

    # -- watch -----------------------------------------------------------------

    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[Event]:
        """Events from an etcd watch stream, fed through a queue by a reader task.

        The task lets :meth:`close` end a watch whose consumer is waiting.
        """
        self._check_open()
        queue: asyncio.Queue[list[Event] | BaseException | _End] = asyncio.Queue()
        task = asyncio.create_task(
            self._watch_loop(prefix, max(from_revision, 1), queue), name=f"etcd watch {prefix!r}"
        )
        self._watches.add(task)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    return
                if isinstance(item, BaseException):
                    raise item
                for event in item:
                    yield event
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._watches.discard(task)

    async def _watch_loop(
        self,
        prefix: str,
        next_revision: int,
        queue: asyncio.Queue[list[Event] | BaseException | _End],
    ) -> None:
        body = self._range_body(prefix, True)
        failures: list[str] = []
        try:
            while True:
                index = self._current
                endpoint = self.endpoints[index]
                request = {
                    "create_request": {
                        "key": body["key"],
                        "range_end": body["range_end"],
                        "start_revision": str(next_revision),
                        "prev_kv": True,
                    }
                }
                try:
                    async with self._client.stream(
                        "POST",
                        endpoint + "/v3/watch",
                        json=request,
                        timeout=httpx.Timeout(self._timeout, read=None),
                    ) as response:
                        if response.status_code != 200:
                            await response.aread()
                            code, message = self._error(response)
                            raise self._mapped(code, message)
                        async for line in response.aiter_lines():
                            if not line.strip():
                                continue
                            result = self._decode(endpoint, line)
                            compacted = int(result.get("compact_revision", 0))
                            if compacted:
                                raise CompactedError(next_revision, compacted)
                            if result.get("canceled"):
                                reason = result.get("cancel_reason", "")
                                raise StoreError(f"etcd watch canceled: {reason}")
                            if result.get("created"):
                                failures.clear()
                            events = [self._event(e) for e in result.get("events") or []]
                            if events:
                                next_revision = events[-1].kv.mod_revision + 1
                                queue.put_nowait(events)
                    failures.append(f"{endpoint}: watch stream ended")
                except (httpx.TransportError, StoreUnavailableError) as e:
                    failures.append(f"{endpoint}: {_describe(e)}")
                # this member is gone or cut us off: resume on the next one
                if self._current == index:
                    self._current = (index + 1) % len(self.endpoints)
                if len(failures) >= len(self.endpoints):
                    raise StoreUnavailableError("etcd watch: " + "; ".join(failures))
                if len(failures) > 1:
                    await asyncio.sleep(self._retry_interval)
        except (StoreError, ValueError) as e:
            queue.put_nowait(e)
        finally:
            queue.put_nowait(_End())

    def _event(self, data: dict[str, Any]) -> Event:
        kind = EventType.DELETE if data.get("type") == "DELETE" else EventType.PUT
        kv = self._kv(data.get("kv") or {})
        prev = data.get("prev_kv")
        return Event(kind, kv, self._kv(prev) if prev else None)

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
