"""The process's recent log records, kept for the diagnostics bundle.

Servers and nodes log to stderr only (``cli.output.configure_logging``); a bundle
cannot read a terminal, so each daemon keeps its last records in a bounded ring
(``MAX_RECORDS`` lines of at most ``MAX_LINE`` characters) that
:func:`recent` reads. Only what the process's log level lets through is kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

__all__ = ["LogRing", "install", "recent"]

MAX_RECORDS = 5000
MAX_LINE = 2000


class LogRing(logging.Handler):
    def __init__(self, capacity: int = MAX_RECORDS) -> None:
        super().__init__(logging.DEBUG)
        self.records: deque[tuple[float, str]] = deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)[:MAX_LINE]
        except Exception:  # a record that does not format is not worth a crash
            return
        self.records.append((record.created, line))

    def since(self, start: float) -> list[str]:
        return [line for created, line in list(self.records) if created >= start]


_ring: LogRing | None = None
_lock = threading.Lock()


def install() -> LogRing:
    """The ring, attached to the root logger once per process."""
    global _ring
    with _lock:
        root = logging.getLogger()
        if _ring is None:
            _ring = LogRing()
        if _ring not in root.handlers:
            root.addHandler(_ring)
        return _ring


def recent(since_seconds: float) -> list[str]:
    """The lines logged in the last ``since_seconds`` (none if the ring was never installed)."""
    if _ring is None:
        return []
    return _ring.since(time.time() - since_seconds)
