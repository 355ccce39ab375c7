"""Durations on the command line: ``90s``, ``30m``, ``12h``, ``7d``."""

from __future__ import annotations

import re

__all__ = ["duration_seconds"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: str) -> float | None:
    """Seconds of a duration such as ``30m``; None when ``value`` is not one."""
    found = _DURATION.fullmatch(value.strip())
    return float(found.group(1)) * _UNITS[found.group(2)] if found else None
