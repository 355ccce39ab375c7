"""The server keeps an idle connection open longer than clients keep theirs.

A burst of task submissions died with ``httpx.ReadError``: uvicorn closed idle
connections after 5 s, the same expiry as httpx's pool, so a request sent on a
pooled connection at that moment met a connection the server was closing. The
server now keeps idle connections for ``KEEP_ALIVE_SECONDS``.
"""

from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

from aether.server.main import KEEP_ALIVE_SECONDS
from tests.support.cluster import Cluster

HTTPX_KEEPALIVE_EXPIRY = 5.0  # httpx.Limits' default


def _healthz(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    response.read()
    return response.status


def test_an_idle_connection_outlives_a_client_pool_expiry(cluster: Cluster) -> None:
    assert KEEP_ALIVE_SECONDS > HTTPX_KEEPALIVE_EXPIRY * 2
    cluster.start_server()
    url = urlsplit(cluster.api)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        assert _healthz(conn) == 200
        first = conn.sock
        time.sleep(HTTPX_KEEPALIVE_EXPIRY + 1.5)  # past the expiry of a client's pool
        # the same connection still answers (with uvicorn's 5 s default the server had
        # closed it: RemoteDisconnected)
        assert _healthz(conn) == 200
        assert conn.sock is first  # not a new connection
    finally:
        conn.close()
