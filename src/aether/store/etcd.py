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
import base64
import contextlib
import json
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote

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

__all__ = [
    "EtcdAuthError",
    "EtcdOptions",
    "EtcdStateStore",
    "EtcdUrl",
    "etcd_tls_context",
    "parse_etcd_url",
]

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
_PERMISSION_DENIED = 7
_OUT_OF_RANGE = 11
_UNAVAILABLE = 14
_UNAUTHENTICATED = 16

# what etcd answers (code 16, or 3 for a request without a token) when a request's
# token is missing, expired or unknown to the member: authenticate again and retry
_TOKEN_REFUSED = ("invalid auth token", "user name is empty", "token is expired")


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


class EtcdUrl(NamedTuple):
    """A parsed state store URL (see :func:`parse_etcd_url`)."""

    endpoints: list[str]
    prefix: str
    username: str = ""
    password: str = ""


def parse_etcd_url(url: str) -> EtcdUrl:
    """``etcd[s]://[user:password@]host:port[,host:port...][/prefix]`` → endpoints, prefix, …

    ``etcds://`` means HTTPS to every member. A user name
    and password in the URL are percent-decoded. A non-empty prefix always ends
    with ``/`` so ``/a`` and ``/ab`` stay apart.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("etcd", "etcds"):
        raise ValueError(
            f"invalid etcd URL {url!r}: expected etcd://host:port[,host:port...] (etcds:// for TLS)"
        )
    http = "http" if scheme == "etcd" else "https"
    if "?" in rest or "#" in rest:
        raise ValueError(f"invalid etcd URL {url!r}: no query or fragment allowed")
    authority, _, path = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    username = password = ""
    if at:
        name, colon, secret = userinfo.partition(":")
        username, password = unquote(name), unquote(secret)
        if not username or not colon:
            raise ValueError(
                f"invalid etcd URL: credentials must be user:password@ (percent-encoded), "
                f"in {url.replace(userinfo, '***')!r}"
            )
    endpoints: list[str] = []
    for host in hosts.split(","):
        host = host.strip()
        name, sep, port = host.rpartition(":")
        if not host or not sep or not name or not port.isdigit() or not 0 < int(port) < 65536:
            shown = url.replace(userinfo, "***") if at else url
            raise ValueError(f"invalid etcd URL {shown!r}: {host!r} is not host:port")
        endpoints.append(f"{http}://{host}")
    prefix = path.strip("/")
    return EtcdUrl(endpoints, f"{prefix}/" if prefix else "", username, password)


@dataclass(frozen=True)
class EtcdOptions:
    """How to reach etcd beyond what the URL says (the server's ``AETHER_ETCD_*`` settings).

    ``ca_file``: PEM CA bundle that signed the members' certificates (empty: the
    system's trust store). ``cert_file`` and ``key_file``: a client certificate
    for mutual TLS (both or neither). ``username`` and ``password``: etcd
    authentication. ``timeout``: seconds any one request to a member may take.
    ``watch_idle_timeout``: seconds a watch may stay silent before its member is
    probed.
    """

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: str = ""
    timeout: float = 5.0
    watch_idle_timeout: float = 3.0

    @property
    def has_tls_files(self) -> bool:
        return bool(self.ca_file or self.cert_file or self.key_file)


def etcd_tls_context(ca_file: str = "", cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """The client TLS context for ``etcds://``; ``ValueError`` naming the bad file otherwise."""
    if bool(cert_file) != bool(key_file):
        raise ValueError(
            "an etcd client certificate needs both files: the certificate (AETHER_ETCD_CERT_FILE) "
            "and its private key (AETHER_ETCD_KEY_FILE)"
        )
    for what, path in (("CA", ca_file), ("client certificate", cert_file), ("key", key_file)):
        if path and not Path(path).is_file():
            raise ValueError(f"etcd {what} file {path}: no such file")
    try:
        context = ssl.create_default_context(cafile=ca_file or None)
    except (ssl.SSLError, OSError) as e:
        raise ValueError(
            f"etcd CA file {ca_file} holds no usable PEM certificate: {_describe(e)}"
        ) from None
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, OSError) as e:
            raise ValueError(
                f"etcd client certificate {cert_file} with key {key_file} cannot be used "
                f"(PEM files of one certificate and its unencrypted key?): {_describe(e)}"
            ) from None
    return context


def _tls_failure(e: BaseException) -> ssl.SSLError | None:
    """The TLS error behind an httpx error, if that is what it is."""
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class EtcdAuthError(StoreError):
    """etcd refused the credentials, or requires some and none are configured."""


class _TokenRefused(Exception):
    """etcd did not take the request's token (expired, unknown to the member, or none)."""

    def __init__(self, token: str | None, message: str) -> None:
        super().__init__(message)
        self.token = token
        self.message = message


def _credentials_needed(refused: _TokenRefused) -> EtcdAuthError:
    """etcd asked for a token and the store has no credentials to get one."""
    return EtcdAuthError(
        f"etcd requires authentication ({refused.message}): set "
        "AETHER_ETCD_USERNAME and AETHER_ETCD_PASSWORD"
    )


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
        tls: ssl.SSLContext | None = None,
        username: str = "",
        password: str = "",
        watch_idle_timeout: float = 3.0,
    ) -> None:
        """Use :meth:`open`, which also checks that the cluster answers.

        ``tls``: the context for ``https://`` endpoints (default: the system's CAs).
        """
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if not timeout > 0 or not watch_idle_timeout > 0:
            raise ValueError("etcd timeouts must be positive")
        if password and not username:
            raise ValueError("an etcd password needs a user name")
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

    # -- transport -------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._token} if self._token else {}

    def _failed(self, index: int) -> None:
        """The member at ``index`` failed: the next request starts at the one after it."""
        if self._current == index:
            self._current = (index + 1) % len(self.endpoints)

    async def _call(
        self, path: str, body: dict[str, Any], *, idempotent: bool, timeout: float | None = None
    ) -> dict[str, Any]:
        """POST to the first member that answers; map etcd errors to store errors.

        With credentials, a request whose token etcd refuses is retried once with a
        new token (etcd refuses it before applying anything). ``timeout``: this
        request's deadline per member, if shorter than the store's.
        """
        self._check_open()
        if self._username and self._token is None:
            await self._renew_token(None)
        try:
            return await self._call_once(path, body, idempotent=idempotent, timeout=timeout)
        except _TokenRefused as refused:
            if not self._username:
                raise _credentials_needed(refused) from None
            await self._renew_token(refused.token)
        try:
            return await self._call_once(path, body, idempotent=idempotent, timeout=timeout)
        except _TokenRefused as refused:
            raise EtcdAuthError(
                f"etcd refused a fresh token for user {self._username!r}: {refused.message}"
            ) from None

    async def _call_once(
        self,
        path: str,
        body: dict[str, Any],
        *,
        idempotent: bool,
        auth: bool = True,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        failures: list[str] = []
        tls_failures = dropped = 0
        count = len(self.endpoints)
        token = self._token if auth else None
        headers = {"Authorization": token} if token else {}
        for attempt in range(count):
            index = (self._current + attempt) % count
            endpoint = self.endpoints[index]
            try:
                response = await self._client.post(
                    endpoint + path,
                    json=body,
                    headers=headers,
                    timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
                tls_failures += _tls_failure(e) is not None
                failures.append(f"{endpoint}: {_describe(e)}")
                self._failed(index)
                continue
            except ssl.SSLError as e:
                # TLS 1.3 reports a refused client certificate on the first read, and
                # httpcore lets that error through unwrapped: nothing was applied
                tls_failures += 1
                failures.append(f"{endpoint}: {_describe(e)}")
                self._failed(index)
                continue
            except httpx.TransportError as e:
                failures.append(f"{endpoint}: {_describe(e)}")
                self._failed(index)
                dropped += isinstance(e, httpx.ReadError | httpx.RemoteProtocolError)
                if _tls_failure(e) is not None:
                    # the handshake failed (a refused client certificate): nothing was sent
                    tls_failures += 1
                    continue
                if idempotent:
                    continue
                raise StoreUnavailableError(
                    f"etcd {endpoint} failed during a write, which may or may not have been"
                    f" applied: {_describe(e)}"
                ) from e
            if response.status_code < 500:  # the member works (it may still refuse this)
                self._answered[index] = time.monotonic()
            if response.status_code == 200:
                self._current = index
                try:
                    return self._decode(endpoint, response.text)
                except _TokenRefused as refused:  # inside a stream (lease keepalive)
                    if not auth:
                        raise StoreError(f"etcd: {refused.message}") from None
                    raise _TokenRefused(token, refused.message) from None
            code, message = self._error(response)
            if auth and self._refuses_token(code, message):
                raise _TokenRefused(token, message)
            if code in (_UNAVAILABLE, _DEADLINE_EXCEEDED) or response.status_code >= 500:
                failures.append(f"{endpoint}: {message}")
                self._failed(index)
                if idempotent and code != _DEADLINE_EXCEEDED:
                    continue
                raise StoreUnavailableError(f"etcd {endpoint}: {message}")
            raise self._mapped(code, message)
        if tls_failures == count:
            raise StoreUnavailableError(
                "no etcd member accepted the TLS connection (check AETHER_ETCD_CA_FILE, and "
                "AETHER_ETCD_CERT_FILE/AETHER_ETCD_KEY_FILE if the members require client "
                "certificates): " + "; ".join(failures)
            )
        hint = ""
        if dropped == count and self.endpoints[0].startswith("https://"):
            hint = (
                " (every member closed the connection without an answer: if they require "
                "client certificates, set AETHER_ETCD_CERT_FILE and AETHER_ETCD_KEY_FILE)"
            )
        elif dropped == count:
            hint = " (every member closed the connection without an answer: if they serve TLS, "
            hint += "write the URL as etcds://)"
        raise StoreUnavailableError("no etcd member reachable: " + "; ".join(failures) + hint)

    @staticmethod
    def _refuses_token(code: int, message: str) -> bool:
        return code in (_UNAUTHENTICATED, _INVALID_ARGUMENT) and any(
            text in message for text in _TOKEN_REFUSED
        )

    async def _renew_token(self, stale: str | None) -> None:
        """Authenticate, unless another request already replaced the ``stale`` token."""
        async with self._auth_lock:
            if self._token is not None and self._token != stale:
                return
            body = {"name": self._username, "password": self._password}
            try:
                data = await self._call_once(
                    "/v3/auth/authenticate", body, idempotent=True, auth=False
                )
            except (EtcdAuthError, StoreUnavailableError):
                raise
            except (StoreError, ValueError) as e:
                text = str(e).removeprefix("etcd: ")
                if "authentication is not enabled" in text:
                    log.warning("etcd credentials are set but etcd's authentication is off")
                    self._token = ""
                    return
                raise EtcdAuthError(
                    f"etcd authentication failed for user {self._username!r}: {text}"
                ) from None
            token = data.get("token")
            if not isinstance(token, str) or not token:
                raise EtcdAuthError(f"etcd answered no token for user {self._username!r}")
            self._token = token

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
            code = int(error.get("grpc_code", error.get("code", 2)))
            message = str(error.get("message", ""))
            if EtcdStateStore._refuses_token(code, message):
                raise _TokenRefused(None, message)
            raise EtcdStateStore._mapped(code, message)
        result = data.get("result", data)
        return result if isinstance(result, dict) else {}

    @staticmethod
    def _error(response: httpx.Response) -> tuple[int, str]:
        try:
            data = response.json()
        except ValueError:
            text = response.text.strip()[:200]
            if "CommonName of client" in text:
                return 2, (
                    f"{text} (with authentication on, etcd's JSON gateway refuses a client "
                    "certificate with a Common Name: use one without, or no client certificate)"
                )
            return 2, f"HTTP {response.status_code}: {text}"
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
        if code == _PERMISSION_DENIED:
            return EtcdAuthError(
                f"etcd: {message} (the etcd user needs read and write on the key prefix)"
            )
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
        renewed = False  # a token was renewed for this connection attempt already
        try:
            while True:
                index = self._current
                endpoint = self.endpoints[index]
                if self._username and self._token is None:
                    await self._renew_token(None)
                token = self._token
                request = {
                    "create_request": {
                        "key": body["key"],
                        "range_end": body["range_end"],
                        "start_revision": str(next_revision),
                        "prev_kv": True,
                        "progress_notify": True,
                    }
                }
                try:
                    async for events in self._watch_stream(index, request, token):
                        failures.clear()
                        renewed = False
                        if events:
                            next_revision = events[-1].kv.mod_revision + 1
                            queue.put_nowait(events)
                    failures.append(f"{endpoint}: watch stream ended")
                except _TokenRefused as refused:
                    if not self._username:
                        raise _credentials_needed(refused) from None
                    if renewed:
                        raise EtcdAuthError(
                            f"etcd refused a fresh token for user {self._username!r} on a "
                            f"watch: {refused.message}"
                        ) from None
                    await self._renew_token(token)
                    renewed = True
                    continue  # the same member, with the new token
                except (
                    httpx.TransportError,
                    ssl.SSLError,
                    StoreUnavailableError,
                    TimeoutError,
                ) as e:
                    failures.append(f"{endpoint}: {_describe(e)}")
                # this member is gone, frozen or cut us off: resume on the next one
                self._failed(index)
                if len(failures) >= len(self.endpoints):
                    raise StoreUnavailableError("etcd watch: " + "; ".join(failures))
                if len(failures) > 1:
                    await asyncio.sleep(self._retry_interval)
        except (StoreError, ValueError) as e:
            queue.put_nowait(e)
        finally:
            queue.put_nowait(_End())

    async def _watch_stream(
        self, index: int, request: dict[str, Any], token: str | None
    ) -> AsyncIterator[list[Event]]:
        """One watch stream on one member: each response's events (``[]`` for the rest).

        Ends when the member ends the stream; raises ``StoreUnavailableError`` when
        the member stops answering (silent past the idle timeout and unable to
        answer a probe), ``_TokenRefused`` when it does not take ``token``.
        """
        endpoint = self.endpoints[index]
        headers = {"Authorization": token} if token else {}
        built = self._client.build_request(
            "POST",
            endpoint + "/v3/watch",
            json=request,
            headers=headers,
            timeout=httpx.Timeout(self._timeout, read=None),  # idle streams are normal
        )
        async with asyncio.timeout(self._timeout):  # a frozen member never answers at all
            response = await self._client.send(built, stream=True)
        lines = response.aiter_lines()
        pending: asyncio.Future[str] | None = None
        try:
            if response.status_code != 200:
                await response.aread()
                code, message = self._error(response)
                if self._refuses_token(code, message):
                    raise _TokenRefused(token, message)
                raise self._mapped(code, message)
            while True:
                pending = asyncio.ensure_future(anext(lines))
                while not (await asyncio.wait({pending}, timeout=self._watch_idle))[0]:
                    if not await self._alive(index):
                        raise StoreUnavailableError(
                            f"etcd {endpoint} stopped answering (silent watch, probe timed out)"
                        )
                try:
                    line = pending.result()
                except StopAsyncIteration:
                    return
                finally:
                    pending = None
                if not line.strip():
                    continue
                self._answered[index] = time.monotonic()
                result = self._decode(endpoint, line)
                compacted = int(result.get("compact_revision", 0))
                if compacted:
                    start = int(request["create_request"]["start_revision"])
                    raise CompactedError(start, compacted)
                if result.get("canceled"):
                    reason = str(result.get("cancel_reason", ""))
                    if any(text in reason for text in _TOKEN_REFUSED):
                        raise _TokenRefused(token, reason)
                    if "permission denied" in reason:
                        raise EtcdAuthError(
                            f"etcd watch refused: {reason} (the etcd user needs read on the "
                            "key prefix)"
                        )
                    raise StoreError(f"etcd watch canceled: {reason}")
                yield [self._event(e) for e in result.get("events") or []]
        finally:
            if pending is not None:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            await response.aclose()

    async def _alive(self, index: int) -> bool:
        """Whether the member answers at all (recently, or to a short probe now)."""
        answered = self._answered.get(index)
        if answered is not None and time.monotonic() - answered < self._watch_idle:
            return True
        endpoint = self.endpoints[index]
        body = {"key": _b64(self._prefix or b"\0"), "count_only": True}
        try:
            response = await self._client.post(
                endpoint + "/v3/kv/range",
                json=body,
                headers=self._headers(),
                timeout=min(self._timeout, self._watch_idle),
            )
        except (httpx.TransportError, ssl.SSLError):
            return False
        if response.status_code == 200:
            self._answered[index] = time.monotonic()
            return True
        code, _ = self._error(response)  # any answer but "unavailable" shows a working member
        return code not in (_UNAVAILABLE, _DEADLINE_EXCEEDED) and response.status_code < 500

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
