"""The CLI's quick read path: one GET, answered as the server's JSON.

``aether list``, ``status``, ``nodes`` and ``task get`` print what one GET returns.
Importing httpx and the pydantic API models and building an httpx client (with its
TLS context) cost several times the request itself, so for plain-http servers the
GET goes over a socket instead: one HTTP/1.1 request with ``Connection: close``, so
the answer is all the server sends (``http.client`` alone imports ``email`` and ``ssl``:
23 ms of a 100 ms command). An ``https://`` server (or a proxy in the environment)
still goes through ``aether.client.ApiClient``, the API of record,
whose TLS and proxy set-up stay the ones used.

Both paths follow ``aether.client_rules``: the same fail-over between servers (a GET
is sent to the next server after any transport failure, and the one that answered
is not remembered: each command is one process), the same 429 waits (a GET is
idempotent: a ``Retry-After`` of at most ``MAX_RETRY_AFTER`` seconds is waited out,
up to ``RATE_RETRIES`` times), and the same exception for an error answer
(``answer_error`` → ``aether.errors.error_for``).

What is printed is the server's JSON as received. The typed client validates it
with the API models and dumps it again; for a server of the same version that is
the same JSON (tests/cli/test_quick_reads.py checks it on every read path).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from aether.cli.session import Session
from aether.client_rules import (
    MAX_RETRY_AFTER,
    RATE_RETRIES,
    NetworkError,
    answer_error,
    rate_limited,
    retry_after,
    split_urls,
    why_not_retried,
)

log = logging.getLogger("aether.cli")

__all__ = ["CONNECT_TIMEOUT", "PROXY_VARIABLES", "TIMEOUT", "get_json", "quick"]

#: The same timeouts as ``ApiClient``'s defaults: 5 s to connect, 30 s to answer.
CONNECT_TIMEOUT = 5.0
TIMEOUT = 30.0


#: httpx sends plain-http requests through these (``trust_env``); the socket would not.
PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def quick(server: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the quick path applies: every server plain http (no TLS), and no proxy
    in the environment that ``ApiClient`` would go through."""
    if any(environ.get(name) for name in PROXY_VARIABLES):
        return False
    return all(url.lower().startswith("http://") for url in split_urls(server))


def get_json(session: Session, path: str) -> Any:
    """``GET path`` from the session's servers; the answer's JSON, or the error it means."""
    if not quick(session.server):
        return _through_api_client(session, path)
    headers: dict[str, str] = {}
    if session.token:
        headers["Authorization"] = f"Bearer {session.token}"
    if session.namespace:
        headers["X-Aether-Namespace"] = session.namespace
    urls = split_urls(session.server)
    for attempt in range(RATE_RETRIES + 1):
        status, reason, body, header = _first_answer(urls, path, headers)
        if status != 429:
            break
        wait = retry_after(status, header)
        if wait is None or wait > MAX_RETRY_AFTER or attempt == RATE_RETRIES:
            why = why_not_retried("GET", headers, True, wait)
            raise rate_limited(reason, "GET", _path_only(path), body, wait, why)
        time.sleep(wait)
    if not 200 <= status < 300:
        raise answer_error(status, reason, "GET", _path_only(path), body)
    return json.loads(body)


def _path_only(path: str) -> str:
    return path.split("?", 1)[0]


def _first_answer(
    urls: list[str], path: str, headers: dict[str, str]
) -> tuple[int, str, bytes, str | None]:
    """The first server that answers: (status, reason, body, Retry-After)."""
    for index, url in enumerate(urls):
        try:
            return _get(url, path, headers)
        except OSError as exc:
            if index == len(urls) - 1:
                servers = ", ".join(urls)
                raise NetworkError(
                    f"cannot reach the Aether server at {servers}: {_why(exc)}"
                ) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _why(exc: BaseException) -> str:
    """The failure as ``ApiClient`` words it (httpx's words), so both paths say the same."""
    if isinstance(exc, _ConnectFailed):
        return "All connection attempts failed" if exc.refused else "timed out"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return str(exc) or type(exc).__name__


class _ConnectFailed(OSError):
    def __init__(self, refused: bool) -> None:
        super().__init__("connect failed")
        self.refused = refused


def _get(url: str, path: str, headers: dict[str, str]) -> tuple[int, str, bytes, str | None]:
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or 80
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except TimeoutError as exc:
        raise _ConnectFailed(refused=False) from exc
    except socket.gaierror:
        raise  # a name that does not resolve: said as httpx says it, its own words
    except OSError as exc:
        raise _ConnectFailed(refused=True) from exc
    with sock:
        sock.settimeout(TIMEOUT)
        sock.sendall(_request(parts.path.rstrip("/") + path, host, port, headers))
        status, reason, fields, body = _answer(_read_all(sock))
    # the line httpx logs for each request, so --log-level debug shows the same
    log.debug('HTTP Request: GET %s "HTTP/1.1 %d %s"', url + path, status, reason)
    return status, reason, body, fields.get("retry-after")


def _request(target: str, host: str, port: int, headers: Mapping[str, str]) -> bytes:
    """One HTTP/1.1 GET that asks the server to close the connection after answering,
    so the answer is everything read until the end of the stream."""
    authority = f"[{host}]" if ":" in host else host
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {authority}" + ("" if port == 80 else f":{port}"),
        "Accept: application/json",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


class _BadAnswer(OSError):
    """The server's answer is not complete HTTP/1.1 (a transport failure, as for httpx)."""


def _answer(data: bytes) -> tuple[int, str, dict[str, str], bytes]:
    """(status, reason, header fields by lower-case name, body) of a whole HTTP/1.x answer."""
    head, blank, body = data.partition(b"\r\n\r\n")
    if not blank:
        raise _BadAnswer("Server disconnected without sending a response.")
    status_line, *field_lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not (code.isdigit() and len(code) == 3):
        raise _BadAnswer(f"malformed status line: {status_line[:80]!r}")
    fields = {}
    for line in field_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    if fields.get("transfer-encoding", "").lower() == "chunked":
        body = _unchunked(body)
    elif "content-length" in fields:
        length = int(fields["content-length"]) if fields["content-length"].isdigit() else -1
        if not 0 <= length <= len(body):
            raise _BadAnswer("Server disconnected before the whole answer was sent.")
        body = body[:length]
    return int(code), reason, fields, body


def _unchunked(body: bytes) -> bytes:
    """A chunked transfer-coded body, decoded (RFC 9112, 7.1)."""
    out = bytearray()
    while True:
        size_line, crlf, body = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0], 16)
        except ValueError:
            size = -1
        if not crlf or size < 0 or len(body) < size:
            raise _BadAnswer("Server disconnected before the whole answer was sent.")
        if size == 0:
            return bytes(out)
        out += body[:size]
        body = body[size + 2 :]


def _through_api_client(session: Session, path: str) -> Any:
    """The same GET through ``ApiClient`` (https: its TLS context is the one of record)."""
    import asyncio

    from aether.cli.session import ca_context
    from aether.client import ApiClient

    async def fetch() -> Any:
        async with ApiClient(
            session.server,
            session.token,
            namespace=session.namespace,
            verify=ca_context(session.server),
        ) as c:
            return await c.json("GET", path)

    return asyncio.run(fetch())
