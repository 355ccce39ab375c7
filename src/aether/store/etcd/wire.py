"""What etcd's JSON gateway speaks: base64 keys, compare targets, gRPC codes, auth errors."""

from __future__ import annotations

import base64

from aether.store.base import (
    StoreError,
)

__all__ = ["EtcdAuthError"]

_TARGETS = {
    "value": ("VALUE", "value"),
    "version": ("VERSION", "version"),
    "create_revision": ("CREATE", "create_revision"),
    "mod_revision": ("MOD", "mod_revision"),
    "lease": ("LEASE", "lease"),
}
_RESULTS = {"==": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}

# gRPC status codes etcd's gateway reports in error bodies
_INVALID_ARGUMENT = 3
_DEADLINE_EXCEEDED = 4
_NOT_FOUND = 5
_PERMISSION_DENIED = 7
_OUT_OF_RANGE = 11
_UNAVAILABLE = 14
_UNAUTHENTICATED = 16

# what etcd answers (code 16, or 3 for a request without a token) when a request's
# token is missing, expired or unknown to the member: authenticate again and retry
_TOKEN_REFUSED = ("invalid auth token", "user name is empty", "token is expired")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _describe(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for every key starting with ``prefix`` (``\\0`` = no end)."""
    data = bytearray(prefix)
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return bytes(data)
        data.pop()
    return b"\0"


class EtcdAuthError(StoreError):
    """etcd refused the credentials, or requires some and none are configured."""


class _TokenRefused(Exception):
    """etcd did not take the request's token (expired, unknown to the member, or none)."""

    def __init__(self, token: str | None, message: str) -> None:
        super().__init__(message)
        self.token = token
        self.message = message


def _credentials_needed(refused: _TokenRefused) -> EtcdAuthError:
    """etcd asked for a token and the store has no credentials to get one."""
    return EtcdAuthError(
        f"etcd requires authentication ({refused.message}): set "
        "AETHER_ETCD_USERNAME and AETHER_ETCD_PASSWORD"
    )


class _End:
    """Marks the end of a watch's event queue."""
