"""Requests to the etcd members: failover between them, deadlines, tokens."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from typing import Any

import httpx

from aether.store.base import (
    Kv,
    LeaseNotFoundError,
    StoreError,
    StoreUnavailableError,
)
from aether.store.etcd.settings import tls_failure
from aether.store.etcd.wire import (
    _DEADLINE_EXCEEDED,
    _INVALID_ARGUMENT,
    _PERMISSION_DENIED,
    _TOKEN_REFUSED,
    _UNAUTHENTICATED,
    _UNAVAILABLE,
    EtcdAuthError,
    _b64,
    _credentials_needed,
    _describe,
    _prefix_end,
    _TokenRefused,
    _unb64,
)

__all__ = ["EtcdTransport"]

log = logging.getLogger("aether.store.etcd")


class EtcdTransport:
    """Sending requests to the cluster; the state store is built on it."""

    endpoints: list[str]
    _client: httpx.AsyncClient
    _timeout: float
    _retry_interval: float
    _username: str
    _password: str
    _token: str | None
    _auth_lock: asyncio.Lock
    _current: int
    _answered: dict[int, float]
    _closed: bool
    prefix: str
    _prefix: bytes

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
                tls_failures += tls_failure(e) is not None
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
                if tls_failure(e) is not None:
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
            if EtcdTransport._refuses_token(code, message):
                raise _TokenRefused(None, message)
            raise EtcdTransport._mapped(code, message)
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
