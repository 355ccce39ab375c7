"""``aether server``: run the API (and, when elected, the leader loops)."""

from __future__ import annotations

import asyncio
import gc
import logging

import uvicorn

from aether.ops import diag_log
from aether.server.asgi import create_asgi
from aether.server.settings import ServerSettings, loopback

__all__ = ["KEEP_ALIVE_SECONDS", "serve", "tune_gc"]


def tune_gc() -> None:
    """Fewer and cheaper garbage collections for a busy server.

    With the default thresholds, thousands of requests a second promote their
    short-lived objects to the oldest generation, and full collections (which
    also walk every module, route and schema) stop the process for 100-300 ms
    every few seconds: that is the tail latency of every request. A larger
    young generation lets request objects die young, and the start-up objects
    are frozen out of all collections (they live as long as the process).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


#: How long an idle client connection is kept open. It must outlast the idle expiry
#: of the clients' connection pools (httpx: 5 s), or the server closes a connection
#: at the moment a client sends its next request on it, and that request dies with
#: ``httpx.ReadError`` (uvicorn's default is 5 s, the same as httpx's: under a burst
#: with many pooled connections this race was lost now and then).
KEEP_ALIVE_SECONDS = 75


def serve(settings: ServerSettings) -> None:
    diag_log.install()  # the recent log lines, for `aether diag bundle`
    app = create_asgi(settings)
    tune_gc()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        ssl_certfile=settings.tls_cert or None,
        ssl_keyfile=settings.tls_key or None,
    )
    server = uvicorn.Server(config)
    logging.getLogger("aether.server").info("listening on %s", settings.api_url())
    if settings.node_auth == "credential":
        logging.getLogger("aether.server").warning(
            "AETHER_NODE_AUTH=credential: nodes may call the API port with a credential alone, "
            "without their certificate; use it only while upgrading nodes from before 0.2"
        )
    print(
        f"aether server: API on {settings.api_url()}/api/v1 (data in {settings.data_dir})",
        flush=True,
    )
    if not settings.tls_cert and loopback(settings.host):
        print(
            "aether server: the API is plain HTTP on loopback (the embedded demo); "
            "--tls-cert/--tls-key serve HTTPS",
            flush=True,
        )
    elif not settings.tls_cert and not settings.allow_plain_http:
        logging.getLogger("aether.server").warning(
            "the API is plain HTTP on %s, beyond loopback: tokens cross the network in the "
            "clear. Pass --tls-cert/--tls-key, or AETHER_ALLOW_PLAIN_HTTP=true when a proxy "
            "in front terminates TLS",
            settings.host,
        )
    asyncio.run(server.serve())
