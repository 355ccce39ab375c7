"""The rules every API client follows, with no HTTP library: which servers to try,
when a ``429`` is waited out, and which exception an error answer raises.

``aether.client.ApiClient`` (httpx, async: the API of record) and the CLI's quick read
path (``aether.cli.reads``: ``http.client``, for ``list``, ``status``, ``nodes`` and
``task get``) both apply these, so they agree on fail-over, retries and errors.
Importing this module costs no more than ``aether.errors``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence

from aether.errors import AetherError, RateLimitedError, ServiceUnavailableError, error_for

__all__ = [
    "IDEMPOTENT",
    "MAX_RETRY_AFTER",
    "RATE_RETRIES",
    "REPLAYABLE",
    "NetworkError",
    "answer_error",
    "bare_message",
    "may_repeat",
    "rate_limited",
    "retry_after",
    "split_urls",
    "why_not_retried",
]

#: Methods sent again, to the next server too, after a broken connection.
REPLAYABLE = frozenset({"GET", "HEAD", "OPTIONS"})
#: Safe to send again after a 429 (which the server refused before doing anything).
IDEMPOTENT = REPLAYABLE | {"PUT", "DELETE"}
#: A 429 is retried only when its Retry-After is at most this many seconds ...
MAX_RETRY_AFTER = 10.0
#: ... and at most this many times per request.
RATE_RETRIES = 3


class NetworkError(ServiceUnavailableError):
    code = "unreachable"


def split_urls(base_url: str | Sequence[str]) -> list[str]:
    """``"a, b"`` or ``["a", "b"]`` → ``["a", "b"]`` (trailing slashes dropped, at least one)."""
    parts = base_url.split(",") if isinstance(base_url, str) else list(base_url)
    urls = [u.strip().rstrip("/") for u in parts if u.strip()]
    if not urls:
        raise ValueError(f"no server URL in {base_url!r}")
    return urls


def retry_after(status: int, header: str | None) -> float | None:
    """A 429's ``Retry-After`` in seconds; None for another answer or a header that is
    not a number of seconds."""
    if status != 429:
        return None
    try:
        seconds = float(header or "")
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def may_repeat(method: str, headers: Mapping[str, str], replayable_body: bool) -> bool:
    """An idempotent method, or a request that carries an Idempotency-Key (and a body
    that can be sent again)."""
    if not replayable_body:
        return False
    return method.upper() in IDEMPOTENT or any(
        name.lower() == "idempotency-key" for name in headers
    )


def why_not_retried(
    method: str, headers: Mapping[str, str], replayable_body: bool, wait: float | None
) -> str:
    if wait is None:
        return "no Retry-After in seconds"
    if wait > MAX_RETRY_AFTER:
        return f"not retried: Retry-After is over {MAX_RETRY_AFTER:.0f} s"
    if not replayable_body:
        return "not retried: its body was a stream"
    if not may_repeat(method, headers, replayable_body):
        return f"not retried: a {method.upper()} without an Idempotency-Key"
    return f"still limited after {RATE_RETRIES} retries"


def _envelope(body: bytes) -> tuple[str, str] | None:
    """The ``(code, message)`` of an error envelope; None when the body is not one."""
    try:
        data = json.loads(body)
        return str(data["code"]), str(data["message"])
    except (ValueError, KeyError, TypeError):
        return None


def bare_message(status: int, reason: str, method: str, path: str, text: str) -> str:
    """What an error answer without an envelope says: its status, request and text."""
    where = f"{method} {path}"
    shown = text[:200].strip() if method != "HEAD" else ""
    return f"HTTP {status} {reason or 'error'} for {where}" + (
        f": {shown}" if shown else " (no details)"
    )


def answer_error(status: int, reason: str, method: str, path: str, body: bytes) -> AetherError:
    """The exception an error answer raises: its envelope's, else its status's."""
    found = _envelope(body)
    if found is None:
        text = body.decode("utf-8", errors="replace")
        return error_for(status, None, bare_message(status, reason, method, path, text))
    return error_for(status, *found)


def rate_limited(
    reason: str, method: str, path: str, body: bytes, wait: float | None, why: str
) -> RateLimitedError:
    """The 429's error, its message saying when to try again."""
    try:
        message = str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", errors="replace")
        message = bare_message(429, reason, method, path, text)
    if wait is not None:
        at = time.strftime("%H:%M:%S", time.localtime(time.time() + wait))
        why = f"{why}; try again in {wait:.0f} s, at {at}"
    return RateLimitedError(f"{message} ({why})")
