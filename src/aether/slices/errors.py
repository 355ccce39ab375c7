"""The error a handle call raises."""

from __future__ import annotations

from typing import Any

__all__ = ["CallError"]


class CallError(Exception):
    """A call to another slice failed: ``code`` is one of the wire's codes
    (``bad_request``, ``not_found``, ``deadline_exceeded``, ``unavailable``,
    ``internal``) or ``no_endpoint`` (no instance of that entry point is known)."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details
