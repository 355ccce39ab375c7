"""How the etcd state store is named and reached: ``etcd[s]://`` URLs, options, TLS."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote

from aether.store.etcd.wire import _describe

__all__ = ["EtcdOptions", "EtcdUrl", "etcd_tls_context", "parse_etcd_url", "tls_failure"]


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


def tls_failure(e: BaseException) -> ssl.SSLError | None:
    """The TLS error behind an httpx error, if that is what it is."""
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
