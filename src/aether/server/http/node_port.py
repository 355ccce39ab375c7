"""The node port: the same app, served over mutual TLS to nodes (and other servers).

It listens on ``AETHER_NODE_PORT`` (0: a free port) on the API's interface from the
moment the server's context is ready, with ``server.http.mtls``'s protocol and the
context ``ServerTrust`` keeps current. Its URL (``https://{API host}:{port}``) is
announced with the server's presence and given to nodes at join.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI

from aether.server.context import ServerContext
from aether.server.http.mtls import mtls_protocol

__all__ = ["NodePort"]

log = logging.getLogger("aether.server")

KEEP_ALIVE_SECONDS = 75  # as the API's (server.main): outlast the clients' pools


class _Server(uvicorn.Server):
    """Leaves signals to the API's server, whose shutdown closes this one."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class NodePort:
    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None], url: str) -> None:
        self.server = server
        self.task = task
        self.url = url

    @classmethod
    async def open(cls, app: FastAPI, ctx: ServerContext) -> NodePort:
        settings = ctx.settings
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((settings.host, settings.node_port))
        except OSError as exc:
            sock.close()
            raise OSError(
                f"cannot listen for nodes on {settings.host}:{settings.node_port} ({exc}); "
                "pick another --node-port (0: any free port)"
            ) from None
        sock.listen(1024)
        sock.setblocking(False)
        port = sock.getsockname()[1]
        host = urlsplit(settings.api_url()).hostname or settings.host
        shown = f"[{host}]" if ":" in host else host
        url = settings.node_public_url or f"https://{shown}:{port}"
        config = uvicorn.Config(
            app,
            http=mtls_protocol(ctx.trust.node_port_context),
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=2,
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="node-port")
        ctx.trust.node_urls = [url]
        log.info("nodes call %s (mutual TLS)", url)
        print(f"aether server: nodes call {url} (mutual TLS)", flush=True)
        return cls(server, task, url)

    async def close(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self.task, 5)
