"""Running one command to its end, with capped output and a wall-clock timeout.

Shared by the drivers that run a host process per execution (``bwrap`` and
``process``; ``microvm`` caps its guest's output with ``OutputCap``), so all cap
output, time out and report a kill the same way. The process is prepared as
every driver's is (:mod:`aether.node.drivers.spawn`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aether.node.drivers.base import ExecResult, utcnow
from aether.node.drivers.spawn import before_exec, signal_group

__all__ = ["OutputCap", "RawRun", "kill_group", "killed_reason", "run_capped"]

_CHUNK = 1 << 16
_TAIL = 4096
_DRAIN_GRACE = 2.0  # seconds to finish reading pipes once the command has exited

_MEMORY = re.compile(
    r"MemoryError|cannot allocate memory|out of memory|bad_alloc|memory exhausted"
    r"|xmalloc: cannot allocate|failed to allocate|allocation failed",
    re.IGNORECASE,
)
_PROCESSES = re.compile(
    r"cannot fork|can't fork|fork: retry|fork: resource temporarily unavailable"
    r"|BlockingIOError: \[Errno 11\]",
    re.IGNORECASE,
)
_SIGXCPU = 128 + signal.SIGXCPU


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Says when the process exits, even while something still holds its pipes.

    ``Process.wait()`` also waits for the pipes to close, so a background child
    keeping stdout open would hold the execution until the timeout.
    """

    def __init__(self, exited: asyncio.Future[None], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=_CHUNK, loop=loop)
        self._exited = exited

    def process_exited(self) -> None:
        super().process_exited()
        if not self._exited.done():
            self._exited.set_result(None)


class OutputCap:
    """Keeps the first ``limit`` bytes of a stream and only counts the rest.

    A command printing gigabytes must cost the node no more than ``limit`` bytes
    of memory; a short tail of the dropped part is kept to recognise errors
    (``MemoryError`` is the last line of a long traceback).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.head = bytearray()
        self.dropped = 0
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        room = self.limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.dropped += len(chunk)
            self._tail = chunk[-_TAIL:] if len(chunk) >= _TAIL else (self._tail + chunk)[-_TAIL:]

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def text(self) -> str:
        out = self.head.decode("utf-8", "replace")
        if self.dropped:
            out += f"\n[... truncated {self.dropped} bytes]"
        return out

    def scan_text(self) -> str:
        """The start and the end of the stream, for recognising errors."""
        return (bytes(self.head[:_TAIL]) + b"\n" + bytes(self.head[-_TAIL:]) + self._tail).decode(
            "utf-8", "replace"
        )


@dataclass
class RawRun:
    returncode: int  # shell convention: 128 + N for signal N
    stdout: OutputCap
    stderr: OutputCap
    timed_out: bool
    started_at: datetime
    finished_at: datetime

    def result(self, *, limits: bool) -> ExecResult:
        """``limits``: whether CPU, memory and process rlimits applied to the run."""
        return ExecResult(
            exit_code=self.returncode,
            stdout=self.stdout.text(),
            stderr=self.stderr.text(),
            stdout_truncated=self.stdout.truncated,
            stderr_truncated=self.stderr.truncated,
            started_at=self.started_at,
            finished_at=self.finished_at,
            timed_out=self.timed_out,
            killed_reason=killed_reason(self, limits=limits),
        )


def killed_reason(run: RawRun, *, limits: bool) -> str | None:
    """Why a run was stopped: certain for timeouts, inferred for rlimits.

    Rlimits make the kernel refuse (memory, processes) or signal (CPU time); the
    refusal surfaces as the program's own error, so it is recognised from the
    exit status and the error output.
    """
    if run.timed_out:
        return "timeout"
    if run.returncode == 0 or not limits:
        return None
    if run.returncode == _SIGXCPU:
        return "cpu time limit"
    errors = run.stderr.scan_text()
    if _MEMORY.search(errors):
        return "memory limit"
    if _PROCESSES.search(errors):
        return "process limit"
    return None


def kill_group(pid: int) -> None:
    signal_group(pid, signal.SIGKILL)


async def run_capped(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path | str,
    stdin: bytes | None,
    timeout: float,
    output_limit: int,
    pass_fds: Sequence[int] = (),
    on_start: Callable[[int], None] | None = None,
    on_exit: Callable[[int], None] | None = None,
    dies_with_parent: bool = False,
    **popen: Any,
) -> RawRun:
    """Run ``argv`` in its own process group; kill the group at the timeout.

    ``popen`` goes to ``create_subprocess_exec`` (``user``, ``group``, ...); a
    ``preexec_fn`` in it runs after the child is made to die with the node.
    ``dies_with_parent``: ``argv`` sets the parent-death signal itself (it starts
    with an ``exec_as`` prefix), so no ``preexec_fn`` is added.
    Raises ``OSError`` when the program cannot be started.
    """
    preexec = popen.pop("preexec_fn", None)
    if not dies_with_parent:
        preexec = before_exec(preexec)
    stdout, stderr = OutputCap(output_limit), OutputCap(output_limit)
    started = utcnow()
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    transport, protocol = await loop.subprocess_exec(
        lambda: _Protocol(exited, loop),
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
        pass_fds=tuple(pass_fds),
        preexec_fn=preexec,
        **popen,
    )
    proc = asyncio.subprocess.Process(transport, protocol, loop)
    if on_start:
        on_start(proc.pid)

    async def pump(stream: asyncio.StreamReader | None, cap: OutputCap) -> None:
        if stream is None:
            return
        while chunk := await stream.read(_CHUNK):
            cap.feed(chunk)

    async def feed() -> None:
        if proc.stdin is None or stdin is None:
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(stdin)
            await proc.stdin.drain()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.close()

    io = [
        asyncio.ensure_future(pump(proc.stdout, stdout)),
        asyncio.ensure_future(pump(proc.stderr, stderr)),
        asyncio.ensure_future(feed()),
    ]
    timed_out = False
    try:
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(exited)
        except TimeoutError:
            timed_out = True
            kill_group(proc.pid)
            await exited
        # whatever the command left behind in its group goes with it
        kill_group(proc.pid)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_DRAIN_GRACE):
                await asyncio.gather(*io, return_exceptions=True)
    finally:
        if proc.returncode is None:  # cancelled: leave nothing running
            kill_group(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for task in io:
            task.cancel()
        transport.close()  # pipes still held by a straggler that left the group
        if on_exit:
            on_exit(proc.pid)
    code = proc.returncode if proc.returncode is not None else -signal.SIGKILL
    return RawRun(
        returncode=128 - code if code < 0 else code,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        started_at=started,
        finished_at=utcnow(),
    )
