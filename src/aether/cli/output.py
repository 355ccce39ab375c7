"""Output, errors and exit codes for every command, in one place.

``--format json`` prints exactly one JSON object on stdout; logs and progress
go to stderr. Errors print ``{"error": {"code", "message"}}`` in JSON mode (and
``details`` when the error has them).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Coroutine
from types import ModuleType
from typing import Any

from aether.errors import AetherError

__all__ = [
    "EXIT",
    "CliError",
    "configure_logging",
    "emit",
    "exit_kind",
    "run_command",
    "table",
]

#: The process exit code of each kind of failure (documented in docs/operations.md).
#: ``network``: unreachable, or the server failed (5xx); ``not_found``: the server
#: answered 404; ``refused``: it understood the request and refused it (any other 4xx).
EXIT = {
    "ok": 0,
    "usage": 2,
    "config": 10,
    "internal": 20,
    "io": 30,
    "network": 40,
    "not_found": 41,
    "refused": 42,
    "tampered": 43,  # `aether audit verify`: the audit log's hash chain is broken
}


def exit_kind(error: AetherError) -> str:
    """The ``EXIT`` kind of an API error, by its HTTP status."""
    if error.status == 404:
        return "not_found"
    if 400 <= error.status < 500:
        return "refused"
    return "network"


class CliError(Exception):
    """A user-facing failure with its exit code kind (see ``EXIT``)."""

    def __init__(
        self,
        message: str,
        *,
        kind: str = "internal",
        code: str = "error",
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.details = details  # more of the error, for --format json


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, fmt: str = "auto") -> None:
    """Logs go to stderr: text on a terminal (or --log-format text), else JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json" or (fmt == "auto" and not sys.stderr.isatty()):
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.WARNING))


def table(rows: list[list[str]], headers: list[str]) -> str:
    """Columns padded to their widest cell, headers in upper case."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "format", "text") == "json":
        sys.stdout.write(json.dumps(data, default=str) + "\n")
    else:
        sys.stdout.write(text.rstrip("\n") + "\n")
    sys.stdout.flush()


def run_command(module: ModuleType, args: argparse.Namespace) -> int:
    json_mode = getattr(args, "format", "text") == "json"
    try:
        result = module.run(args)
        if isinstance(result, Coroutine):  # asyncio only for the commands that need it
            import asyncio

            result = asyncio.run(result)
        return int(result or 0)
    except KeyboardInterrupt:
        return 130
    except CliError as exc:
        return _fail(json_mode, exc.code, str(exc), EXIT[exc.kind], exc.details)
    except AetherError as exc:
        return _fail(json_mode, exc.code, exc.message, EXIT[exit_kind(exc)])
    except OSError as exc:
        return _fail(json_mode, "io", str(exc), EXIT["io"])


def _fail(
    json_mode: bool,
    code: str,
    message: str,
    exit_code: int,
    details: dict[str, Any] | None = None,
) -> int:
    if json_mode:
        error: dict[str, Any] = {"code": code, "message": message}
        if details is not None:
            error["details"] = details
        sys.stdout.write(json.dumps({"error": error}) + "\n")
    else:
        sys.stderr.write(f"aether: {message}\n")
    return exit_code
