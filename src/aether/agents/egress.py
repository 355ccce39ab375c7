"""The egress guard: where a call that a tenant chose (a model's base URL, an http tool's
URL, an MCP server) may go.

A URL passes when its host is one of ``allowed_hosts`` (exact, or a glob such as
``*.example.com``; an empty list allows no host, ``["*"]`` any) and **every** address
the host resolves to is a public one. Loopback, link-local (169.254/16 with the cloud
metadata address, fe80::/10), private (10/8, 172.16/12, 192.168/16, fc00::/7, and the
other non-global ranges such as 100.64/10), unspecified and multicast addresses are
refused unless they lie in one of ``allow_private`` (the cluster's
``AETHER_EGRESS_ALLOW`` CIDRs).

:class:`EgressTransport` checks each request (so each redirect too) and connects to the
address it checked: the URL is rewritten to that IP, the ``Host`` header and the TLS
server name stay the host's, so a DNS answer that changes between the check and the
connection (DNS rebinding) cannot lead elsewhere.

A refusal raises :class:`aether.errors.EgressDeniedError` (403 ``egress_denied``).
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx

from aether.errors import EgressDeniedError

__all__ = [
    "EgressTransport",
    "address_refusal",
    "check_url",
    "checked_addresses",
    "host_allowed",
    "parse_networks",
    "resolve",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Sequence[str]) -> list[IPNetwork]:
    """``cidrs`` as networks; a bad one raises ``ValueError`` naming it."""
    networks: list[IPNetwork] = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{cidr!r} is not a CIDR such as 10.1.0.0/16") from None
    return networks


def host_allowed(host: str, allowed_hosts: Sequence[str]) -> bool:
    """Whether ``host`` is one of ``allowed_hosts`` (case-insensitive; globs allowed)."""
    name = host.lower().rstrip(".")
    return any(fnmatch.fnmatchcase(name, pattern.lower().rstrip(".")) for pattern in allowed_hosts)


def _kind(address: IPAddress) -> str | None:
    """What makes ``address`` one a tenant's call may not reach, or None (public)."""
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "non-public"
    return None


def address_refusal(address: str, allow_private: Sequence[str]) -> str | None:
    """Why ``address`` may not be reached (e.g. ``"loopback"``), or None when it may: a
    public address, or one inside an ``allow_private`` CIDR."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    kind = _kind(ip)
    if kind is None:
        return None
    if any(ip in network for network in parse_networks(allow_private)):
        return None
    return kind


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (an IP literal: itself), without duplicates."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise EgressDeniedError(
            f"egress to {host!r} refused: it does not resolve ({exc})"
        ) from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


async def checked_addresses(
    url: str, *, allowed_hosts: Sequence[str], allow_private: Sequence[str]
) -> list[str]:
    """The addresses ``url``'s host resolves to, all checked; raise
    ``EgressDeniedError`` when the host or any address is refused."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise EgressDeniedError(f"egress refused: {url[:200]!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise EgressDeniedError(f"egress refused: {url[:200]!r} is not an http(s) URL")
    if not host_allowed(host, allowed_hosts):
        raise EgressDeniedError(
            f"egress to {host!r} refused: not among the policy's egress hosts"
            f" ({', '.join(allowed_hosts) or 'none'})"
        )
    addresses = await resolve(host, port or _default_port(parts.scheme))
    for address in addresses:
        kind = address_refusal(address, allow_private)
        if kind is not None:
            raise EgressDeniedError(
                f"egress to {host!r} refused: it resolves to {address}, a {kind} address "
                "(the cluster allows private ranges with AETHER_EGRESS_ALLOW)"
            )
    return addresses


async def check_url(url: str, *, allowed_hosts: list[str], allow_private: list[str]) -> None:
    """Raise ``EgressDeniedError`` unless ``url`` may be called (see the module)."""
    await checked_addresses(url, allowed_hosts=allowed_hosts, allow_private=allow_private)


def _pinned(request: httpx.Request, address: str) -> httpx.Request:
    """``request`` sent to ``address``: the URL's host stays in the ``Host`` header (as
    built from the original URL) and is the TLS server name (certificates are checked
    against it)."""
    return httpx.Request(
        request.method,
        request.url.copy_with(host=address),
        headers=request.headers,
        stream=request.stream,
        extensions={**request.extensions, "sni_hostname": request.url.host},
    )


class EgressTransport(httpx.AsyncBaseTransport):
    """An httpx transport that checks every request's URL and connects to a checked
    address (the IP pinned, the host kept in ``Host`` and the TLS server name; the
    next address when one refuses the connection)."""

    def __init__(
        self,
        allowed_hosts: Sequence[str],
        allow_private: Sequence[str],
        inner: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.allowed_hosts = list(allowed_hosts)
        self.allow_private = list(allow_private)
        parse_networks(self.allow_private)  # a bad CIDR fails here, not on a request
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        addresses = await checked_addresses(
            str(request.url), allowed_hosts=self.allowed_hosts, allow_private=self.allow_private
        )
        for address in addresses[:-1]:  # the next checked one when a connection fails
            try:
                return await self._inner.handle_async_request(_pinned(request, address))
            except httpx.ConnectError:
                continue
        return await self._inner.handle_async_request(_pinned(request, addresses[-1]))

    async def aclose(self) -> None:
        await self._inner.aclose()
