"""HTTP URLs the cluster will call (model providers, MCP servers): checked when given,
so a URL no HTTP client can send a request to is a 400 then, not a 500 later."""

from __future__ import annotations

from typing import Annotated

import httpx
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
        host = httpx.URL(value).host
    except httpx.InvalidURL as exc:
        raise ValueError(f"is not a URL a request can be sent to: {exc}") from None
    if not host:
        raise ValueError("names no host")
    return value


#: an http(s) URL, checked by ``http_url``
HttpUrlText = Annotated[str, Field(min_length=8, max_length=2048), AfterValidator(http_url)]
