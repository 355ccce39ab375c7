"""``aether server``: run the API (and, when elected, the leader loops)."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from aether.server.app import create_app
from aether.server.settings import ServerSettings

__all__ = ["serve"]


def serve(settings: ServerSettings) -> None:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    logging.getLogger("aether.server").info("listening on %s", settings.api_url())
    print(
        f"aether server: API on {settings.api_url()}/api/v1 (data in {settings.data_dir})",
        flush=True,
    )
    asyncio.run(server.serve())
