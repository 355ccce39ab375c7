"""The server keeps an idle connection open longer than clients keep theirs.

A burst of task submissions died with ``httpx.ReadError``: uvicorn closed idle
connections after 5 s, the same expiry as httpx's pool, so a request sent on a
pooled connection at that moment met a connection the server was closing. The
server now keeps idle connections for ``KEEP_ALIVE_SECONDS``.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

from aether.server.main import KEEP_ALIVE_SECONDS
from tests.support.cluster import Cluster

HTTPX_KEEPALIVE_EXPIRY = 5.0  # httpx.Limits' default


def _get(conn: socket.socket, host: str) -> bytes:
    conn.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return conn.recv(65536)


def test_an_idle_connection_outlives_a_client_pool_expiry(cluster: Cluster) -> None:
    assert KEEP_ALIVE_SECONDS > HTTPX_KEEPALIVE_EXPIRY * 2
    cluster.start_server()
    url = urlsplit(cluster.api)
    host = f"{url.hostname}:{url.port}"
    with socket.create_connection((url.hostname, url.port), timeout=10) as conn:
        assert _get(conn, host).startswith(b"HTTP/1.1 200")
        time.sleep(HTTPX_KEEPALIVE_EXPIRY + 1.5)  # past the expiry of a client's pool
        # the same connection still answers (with uvicorn's 5 s default it was closed: b"")
        assert _get(conn, host).startswith(b"HTTP/1.1 200")
