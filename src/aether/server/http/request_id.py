"""The request id: the caller's ``X-Request-Id`` when it is well-formed, else a new one."""

from __future__ import annotations

import re
import uuid

__all__ = ["request_id"]

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(value: bytes | str | None) -> str:
    """The caller's request id if it is well-formed, else a fresh one."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex
