"""Why an instance failed to start, in one wording from the node to the CLI.

Pure text: the node's runner words a failed start with these functions, the
leader recognises a start failure by that wording (``is_start_failure``), and
the CLI prints it as it came. The causes (see docs/troubleshooting.md):

- ``exited with code 1 before it was healthy``;
- ``killed by signal 9 (SIGKILL) before it was healthy``;
- ``health check GET /healthz: no answer within 5 s`` (or ``answered 503``,
  or ``TCP port 8000: no connection within 5 s`` without a health path);

each followed by ``; last output:`` and the last lines of the instance's output,
cut from the front (``tail_output``).
"""

from __future__ import annotations

import signal

__all__ = [
    "CUT_MARK",
    "TAIL_BYTES",
    "TAIL_LINES",
    "describe_exit",
    "health_failure",
    "is_start_failure",
    "start_failure",
    "tail_output",
]

TAIL_LINES = 20
TAIL_BYTES = 2048
CUT_MARK = "[… earlier output cut]"
_NO_OUTPUT = "(none)"
_BEFORE_HEALTHY = " before it was healthy"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def describe_exit(code: int, *, shell_convention: bool = False) -> str:
    """``exited with code N`` or ``killed by signal N (NAME)``.

    A negative code is a signal (Python's convention for a direct child). With
    ``shell_convention`` (bubblewrap, a shell) a code above 128 is signal
    ``code - 128``, as the sandbox reports the app's death by a signal.
    """
    if code < 0:
        return f"killed by signal {-code} ({_signal_name(-code)})"
    if shell_convention and 128 < code < 128 + 65:
        return f"killed by signal {code - 128} ({_signal_name(code - 128)})"
    return f"exited with code {code}"


def tail_output(data: bytes, *, max_lines: int = TAIL_LINES, max_bytes: int = TAIL_BYTES) -> str:
    """The last ``max_lines`` lines of ``data``, at most ``max_bytes``; cut from the front.

    The end is never lost: when anything before it is dropped, the first line
    is ``CUT_MARK``. A last line longer than ``max_bytes`` keeps its end.
    """
    text = data.decode("utf-8", "replace").replace("\r\n", "\n").rstrip()
    if not text.strip():
        return _NO_OUTPUT
    lines = text.split("\n")
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        cost = len(line.encode()) + 1
        if len(kept) >= max_lines or size + cost > max_bytes:
            break
        kept.append(line)
        size += cost
    if not kept:  # one huge last line: its end
        end = lines[-1].encode()[-max_bytes:].decode("utf-8", "ignore")
        return f"{CUT_MARK}\n{end}"
    kept.reverse()
    cut = len(kept) < len(lines)
    return "\n".join([CUT_MARK, *kept] if cut else kept)


def _with_output(cause: str, output: str) -> str:
    return f"{cause}; last output:\n{output}"


def start_failure(code: int, output: str, *, shell_convention: bool = False) -> str:
    """The process ended before its health check passed."""
    cause = describe_exit(code, shell_convention=shell_convention) + _BEFORE_HEALTHY
    return _with_output(cause, output)


def health_failure(
    health: str | None, port: int, deadline: float, last_status: int | None, output: str
) -> str:
    """The health check did not pass within ``deadline`` seconds of the start."""
    within = f"within {deadline:g} s"
    if health is None:
        cause = f"health check TCP port {port}: no connection {within}"
    elif last_status is None:
        cause = f"health check GET {health}: no answer {within}"
    else:
        cause = f"health check GET {health}: answered {last_status} (healthy is below 400) {within}"
    return _with_output(cause, output)


def is_start_failure(message: str) -> bool:
    """This failure message says the app itself did not come up (see the module docstring)."""
    first = message.split(";", 1)[0]
    return first.startswith("health check ") or first.endswith(_BEFORE_HEALTHY)
