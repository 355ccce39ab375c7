"""Timestamps in API answers carry their timezone.

The records store UTC without a zone (SQLite has none); a timestamp read back is
naive. ``Timestamp`` keeps the value as it is in Python (code compares it with
other naive UTC times) and writes it to JSON with its offset
(``2024-05-01T12:00:00+00:00``), so clients never have to guess.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import PlainSerializer, WithJsonSchema

__all__ = ["Timestamp"]


def _iso(value: datetime) -> str:
    return (value.replace(tzinfo=UTC) if value.tzinfo is None else value).isoformat()


Timestamp = Annotated[
    datetime,
    PlainSerializer(_iso, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
