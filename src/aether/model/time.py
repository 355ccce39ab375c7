"""Timestamps in API answers carry their timezone.

The records store UTC without a zone (SQLite has none); a timestamp read back is
naive. ``Timestamp`` takes such a value as UTC and always serializes with its
offset (``2024-05-01T12:00:00+00:00``), so clients never have to guess.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator

__all__ = ["Timestamp"]


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


Timestamp = Annotated[datetime, AfterValidator(_aware)]
