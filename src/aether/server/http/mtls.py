"""The node port: HTTP over mutual TLS, with every refused handshake logged.

uvicorn is given a plain listening socket and this protocol, which does the TLS
handshake itself (``loop.start_tls``) before HTTP begins, so that a refused
connection — plain HTTP, no client certificate, one from another CA, an expired
one — is a log line naming the peer and the reason rather than a silent close.
The verified client certificate (PEM) reaches the app in the connection's state,
``scope["state"][CLIENT_CERT]`` (``request.state.tls_client_cert``), where
``server.http.auth`` reads the caller's identity from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uvicorn.protocols.http.h11_impl import H11Protocol as _HttpProtocol
else:  # the parser the API port uses too (uvicorn's "auto"): httptools when installed
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HttpProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as _HttpProtocol

__all__ = ["CLIENT_CERT", "HANDSHAKE_SECONDS", "mtls_protocol"]

CLIENT_CERT = "tls_client_cert"

log = logging.getLogger("aether.server")

HANDSHAKE_SECONDS = 10.0
_LOG_EVERY = 60.0  # one line per peer address and reason per minute


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or exc.strerror or str(exc)
        if reason == "HTTP_REQUEST":
            return "plain HTTP on the node port (nodes talk mutual TLS)"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return f"client certificate refused: {exc.verify_message}"
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no client certificate (nodes present the one they got at join)"
        return f"TLS handshake failed: {reason}"
    if isinstance(exc, TimeoutError):
        return "TLS handshake timed out"
    return f"TLS handshake failed: {exc!r}"


class _Refusals:
    def __init__(self) -> None:
        self.last: dict[tuple[str, str], float] = {}

    def log(self, peer: str, reason: str) -> None:
        now = time.monotonic()
        key = (peer.rsplit(":", 1)[0], reason)
        if now - self.last.get(key, -_LOG_EVERY) >= _LOG_EVERY:
            if len(self.last) > 4096:
                self.last.clear()
            self.last[key] = now
            log.warning("node port: refused a connection from %s: %s", peer, reason)


def mtls_protocol(context: Callable[[], ssl.SSLContext]) -> type[asyncio.Protocol]:
    """An HTTP protocol class for uvicorn that first completes a mutual TLS handshake
    with ``context()`` (called per connection: the current CA and certificate)."""
    refusals = _Refusals()

    class MutualTlsProtocol(_HttpProtocol):
        _tls_ready = False
        _early: list[bytes]
        _handshake: asyncio.Task[None] | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.pause_reading()  # type: ignore[attr-defined,unused-ignore]  # the handshake reads first
            sock = transport.get_extra_info("socket")
            if sock is not None:  # asyncio sets it only for sockets made with IPPROTO_TCP
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._early = []
            self._handshake = asyncio.ensure_future(self._start_tls(transport))

        async def _start_tls(self, transport: Any) -> None:
            peername = transport.get_extra_info("peername")
            peer = f"{peername[0]}:{peername[1]}" if peername else "an unknown peer"
            loop = asyncio.get_running_loop()
            try:
                wrapped = await loop.start_tls(
                    transport,
                    self,
                    context(),
                    server_side=True,
                    ssl_handshake_timeout=HANDSHAKE_SECONDS,
                )
            except (OSError, TimeoutError, ConnectionError) as exc:
                refusals.log(peer, _reason(exc))
                transport.close()
                return
            if wrapped is None:  # closed meanwhile
                return
            sslobj = wrapped.get_extra_info("ssl_object")
            der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
            # the state every request on this connection starts from: its client certificate
            self.app_state = {
                **self.app_state,
                CLIENT_CERT: ssl.DER_cert_to_PEM_cert(der) if der else None,
            }
            super().connection_made(wrapped)
            self._tls_ready = True
            early, self._early = self._early, []
            for data in early:
                super().data_received(data)

        def data_received(self, data: bytes) -> None:
            if not self._tls_ready:
                self._early.append(data)  # decrypted before the handshake task resumed
                return
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if not self._tls_ready:
                if self._handshake is not None:
                    self._handshake.cancel()
                return
            super().connection_lost(exc)

        def eof_received(self) -> None:
            if self._tls_ready:
                super().eof_received()

    return MutualTlsProtocol
