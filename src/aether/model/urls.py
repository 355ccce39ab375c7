"""HTTP URLs the cluster will call (model providers, MCP servers): checked when given,
so a URL no HTTP client can send a request to is a 400 then, not a 500 later."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field

__all__ = ["HttpUrlText", "http_url"]


def http_url(value: str) -> str:
    """``value`` if it is an http:// or https:// URL with a host that a client can send
    a request to; a ValueError saying what is wrong otherwise."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise ValueError("must be an http:// or https:// URL")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        host, _ = parts.hostname, parts.port  # a bad port or IPv6 host raises here
    except ValueError as exc:
        raise ValueError(f"is not a URL a request can be sent to: {exc}") from None
    if not host:
        raise ValueError("names no host")
    if not host.isascii():
        try:
            host.encode("idna")
        except UnicodeError:
            raise ValueError(f"host {host!r} is not a valid domain name") from None
    return value


#: an http(s) URL, checked by ``http_url``
HttpUrlText = Annotated[str, Field(min_length=8, max_length=2048), AfterValidator(http_url)]
