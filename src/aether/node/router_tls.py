"""The router's HTTPS certificates: one per host name, from files, reloaded when they change.

A directory holds ``HOST.crt`` and ``HOST.key`` (PEM; the ``.crt`` may carry the
chain after the leaf) per host name, e.g. ``shop.example.com.crt``; a file named
``*.example.com.crt`` covers the names one label below ``example.com``; and
``default.crt``/``default.key``, when present, serve a client that sends no
server name (SNI) or one no file names. The TLS context handed to the listening
socket has an SNI callback that picks the host's context at each handshake.

A host with no certificate and no default: the handshake fails with the
``unrecognized_name`` alert, and the router logs it (once per host per minute).

``reload()`` reads again the pairs whose files changed (size, time or inode: a
renewal tool that swaps a symlink counts) and drops those whose files went away.
A pair that does not load (a key that does not match its certificate, say, when
the ``.crt`` was written and the ``.key`` not yet) keeps its previous context and
is tried again when one of its files changes next. Connections already open keep
the certificate they were made with: a reload drops none of them. The router
calls ``reload()`` every few seconds, and ``aether node`` on SIGHUP.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_NAME", "CertificateStore", "TlsOptions", "pairs_in", "pick"]

log = logging.getLogger("aether.node.router")

DEFAULT_NAME = "default"
_QUIET_SECONDS = 60.0  # one "no certificate" line per host name per this long
_QUIET_MAX = 1024  # names remembered for that (a flood of random names cannot grow it)

#: the (size, mtime_ns, inode) of a pair's two files
Fingerprint = tuple[tuple[int, int, int], tuple[int, int, int]]


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """HTTPS on ``port`` (0: any free one) with the certificates in ``directory``.

    ``host``: the address to listen on (None: the router's plain HTTP one);
    ``redirect``: a plain HTTP request for a host name with a certificate of its own
    answers 308 to the same URL over HTTPS; ``reload_seconds``: how often the files
    are checked for changes."""

    directory: Path
    port: int
    host: str | None = None
    redirect: bool = False
    reload_seconds: float = 5.0


# -- functional core -----------------------------------------------------------


def pairs_in(names: list[str]) -> set[str]:
    """The host names (and ``default``) with both a ``.crt`` and a ``.key`` among ``names``."""
    present = set(names)
    return {
        name.removesuffix(".crt").lower()
        for name in present
        if name.endswith(".crt") and name.removesuffix(".crt") + ".key" in present
    }


def pick(server_name: str | None, names: Mapping[str, object]) -> str | None:
    """Which pair of ``names`` serves ``server_name``: its own, a ``*.`` one a label
    up, else ``default``; None when none does."""
    if server_name:
        host = server_name.rstrip(".").lower()
        if host in names and host != DEFAULT_NAME:
            return host
        _, dot, parent = host.partition(".")
        if dot and f"*.{parent}" in names:
            return f"*.{parent}"
    return DEFAULT_NAME if DEFAULT_NAME in names else None


# -- the shell: files, contexts, logs -------------------------------------------


def _stat(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _server_context() -> ssl.SSLContext:
    """A server context with the ssl module's secure defaults, TLS 1.2 at least."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


def _context(crt: Path, key: Path) -> ssl.SSLContext:
    context = _server_context()
    context.load_cert_chain(crt, key)
    return context


class CertificateStore:
    """The certificates of one directory, and the server context that serves them."""

    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self._clock = clock
        self._contexts: dict[str, ssl.SSLContext] = {}  # host name (or default) → its context
        self._seen: dict[str, Fingerprint] = {}  # the files each context was tried from
        self._quiet: dict[str, float] = {}  # host name → when its last warning was logged
        self._unreadable = False  # the directory could not be listed at the last check
        self.server_context = _server_context()
        self.server_context.sni_callback = self._choose

    @property
    def names(self) -> list[str]:
        """The host names (and ``default``) served now."""
        return sorted(self._contexts)

    def has_own(self, host: str) -> bool:
        """Whether ``host`` has a certificate of its own or a ``*.`` one (not the default)."""
        chosen = pick(host, self._contexts)
        return chosen is not None and chosen != DEFAULT_NAME

    def reload(self) -> bool:
        """Read the pairs whose files changed; whether what is served changed."""
        try:
            listing = os.listdir(self.directory)
        except OSError as exc:
            log.error(
                "router TLS: cannot read %s: %s; serving what was loaded", self.directory, exc
            )
            return False
        changed = False
        wanted = pairs_in(listing)
        for name in set(self._contexts) - wanted:
            log.warning("router TLS: %s.crt/.key removed: no longer served", name)
            del self._contexts[name]
            changed = True
        for name in set(self._seen) - wanted:
            del self._seen[name]
        for name in sorted(wanted):
            crt, key = self._files(name, listing)
            try:
                fingerprint = (_stat(crt), _stat(key))
            except OSError:
                continue  # removed while we looked: the next check sees it
            if self._seen.get(name) == fingerprint:
                continue
            self._seen[name] = fingerprint
            try:
                context = _context(crt, key)
            except (OSError, ssl.SSLError, ValueError) as exc:
                kept = "the previous one is kept" if name in self._contexts else "not served"
                log.error("router TLS: cannot load %s (%s): %s", crt.name, exc, kept)
                continue
            log.info(
                "router TLS: %s %s", "reloaded" if name in self._contexts else "loaded", crt.name
            )
            self._contexts[name] = context
            changed = True
        return changed

    def _files(self, name: str, listing: list[str]) -> tuple[Path, Path]:
        """The files of pair ``name`` as spelt in the directory (any case)."""
        crt = next((n for n in listing if n.lower() == name + ".crt"), name + ".crt")
        key = crt.removesuffix(".crt") + ".key"
        return self.directory / crt, self.directory / key

    def _choose(
        self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> int | None:
        """The SNI callback: the host's context, or the handshake fails."""
        chosen = pick(server_name, self._contexts)
        if chosen is not None:
            conn.context = self._contexts[chosen]
            return None
        self._warn(server_name)
        return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME

    def _warn(self, server_name: str | None) -> None:
        now = self._clock()
        label = server_name or ""
        last = self._quiet.get(label)
        if last is not None and now - last < _QUIET_SECONDS:
            return
        if len(self._quiet) >= _QUIET_MAX:
            self._quiet = {k: t for k, t in self._quiet.items() if now - t < _QUIET_SECONDS}
            if len(self._quiet) >= _QUIET_MAX:
                return  # a flood of names: the ones logged this minute say enough
        self._quiet[label] = now
        if server_name:
            log.warning(
                "router TLS: handshake refused for %r: no %s.crt/.key and no default.crt/.key "
                "in %s",
                server_name,
                server_name,
                self.directory,
            )
        else:
            log.warning(
                "router TLS: handshake refused for a client that sent no server name (SNI): "
                "no default.crt/.key in %s",
                self.directory,
            )
