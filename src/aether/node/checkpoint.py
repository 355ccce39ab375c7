"""Checkpoint a stateful instance's state as it stops, and restore it elsewhere.

A snapshot is the canonical ``tar.gz`` (``artifacts.pack``: the same tree
gives the same digest) of the instance's state directory, ``$AETHER_STATE_DIR``.
A CRIU snapshot carries the process images too, in ``.aether-criu/`` at the
archive's root, beside the state files (which CRIU needs at restore as well).

Two ways to take one:

- **cooperative** (every node): the node sends the app ``SIGUSR1``; the app
  writes its state to ``$AETHER_STATE_DIR`` and touches the file named by
  ``$AETHER_CHECKPOINT_ACK``; the node waits for that file (at most the app's
  ``[checkpoint] timeout``), then stops the app as always (SIGTERM, SIGKILL
  after the grace period) — an app that flushes on SIGTERM too loses nothing
  even when it missed the timeout — and packs the state directory. The signal
  goes to the app's process only (not its group): a wrapper that does not
  handle SIGUSR1 would die of it.
- **CRIU** (where the server switched ``criu`` on for the node and the app
  allows it): ``criu dump -t PID -D DIR --shell-job --tcp-established
  --file-locks`` saves the process tree and ends it; restore is ``criu restore
  -D DIR --shell-job -d --pidfile FILE``. A dump that fails leaves the process
  running, and the node falls back to the cooperative protocol. CRIU restores
  files at the paths they had, so a restore on another node works only where
  the instance's directory has the same path; a restore that fails starts the
  app afresh on the restored state directory instead.

Restoring unpacks the snapshot with ``artifacts.safe_extract`` (no absolute
paths, no ``..``, no links leaving it, size limits) into the state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aether.artifacts import pack, safe_extract
from aether.node.drivers.base import Handle

__all__ = [
    "CRIU_DIR",
    "Checkpoint",
    "CheckpointError",
    "RestoredProcess",
    "StopFn",
    "checkpoint",
    "cooperative_stop",
    "criu_dump",
    "criu_meta",
    "criu_restore",
    "restore_snapshot",
    "wait_for_ack",
]

CRIU_DIR = ".aether-criu"
_META = "meta.json"
_CRIU_TIMEOUT = 120.0

SnapshotKind = Literal["cooperative", "criu"]
#: Stops the instance's process (the runner's own SIGTERM → SIGKILL path).
StopFn = Callable[[], Awaitable[object]]


class CheckpointError(Exception):
    """A checkpoint or restore step failed; the message says why."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    archive: Path
    digest: str
    size_bytes: int
    kind: SnapshotKind
    detail: str  # how it went, for the instance's message


async def wait_for_ack(ack: Path, handle: Handle, timeout: float) -> bool:
    """Whether the app touched ``ack`` within ``timeout`` (False early when it exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ack.exists():
            return True
        if handle.returncode is not None:
            return ack.exists()
        await asyncio.sleep(0.02)
    return ack.exists()


async def cooperative_stop(
    handle: Handle | None, stop: StopFn, ack: Path, *, timeout: float
) -> str:
    """SIGUSR1, wait for the app's acknowledgement, stop it. Says how it went."""
    ack.unlink(missing_ok=True)
    if handle is None or handle.returncode is not None:
        await stop()
        return "the app was not running: its state directory as it left it"
    try:
        os.kill(handle.pid, signal.SIGUSR1)
    except ProcessLookupError:
        await stop()
        return "the app had exited: its state directory as it left it"
    acked = await wait_for_ack(ack, handle, timeout)
    await stop()
    ack.unlink(missing_ok=True)
    if acked:
        return "the app flushed its state (SIGUSR1 acknowledged)"
    return (
        f"no acknowledgement of SIGUSR1 within {timeout:g}s: "
        "the state directory as the app left it when it stopped"
    )


async def _run(argv: list[str], *, timeout: float) -> tuple[int, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        raise CheckpointError(f"{argv[0]} could not run: {exc}") from exc
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise CheckpointError(f"{' '.join(argv[:2])} did not finish within {timeout:g}s") from None
    return proc.returncode or 0, out.decode("utf-8", "replace")


def _criu_errors(log: Path, output: str) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        text = ""
    lines = [ln.strip() for ln in (text + "\n" + output).splitlines() if "Error" in ln]
    return "; ".join(lines[-3:]) or output.strip()[-300:] or "no output"


async def criu_dump(
    pid: int, images: Path, *, binary: str = "criu", timeout: float = _CRIU_TIMEOUT
) -> None:
    """Dump the process tree of ``pid`` into ``images``; the tree ends with it."""
    images.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        "dump",
        "-t",
        str(pid),
        "-D",
        str(images),
        "--shell-job",
        "--tcp-established",
        "--file-locks",
        "-o",
        "dump.log",
    ]
    code, output = await _run(argv, timeout=timeout)
    if code != 0:
        raise CheckpointError(
            f"criu dump exited {code}: {_criu_errors(images / 'dump.log', output)}"
        )


class RestoredProcess:
    """A process CRIU restored (detached: not our child), as a driver ``Handle``."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._code: int | None = None

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        if self._code is None and not _alive(self._pid):
            self._code = 0
        return self._code

    async def wait(self) -> int:
        while self.returncode is None:
            await asyncio.sleep(0.1)
        return self._code or 0

    async def stop(self, grace: float) -> int:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, sig)
            try:
                async with asyncio.timeout(grace):
                    return await self.wait()
            except TimeoutError:
                continue
        return await self.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def criu_restore(
    images: Path, *, binary: str = "criu", timeout: float = _CRIU_TIMEOUT
) -> RestoredProcess:
    """Restore the dumped tree in ``images`` (detached); its root process."""
    pidfile = images / "restored.pid"
    pidfile.unlink(missing_ok=True)
    argv = [
        binary,
        "restore",
        "-D",
        str(images),
        "--shell-job",
        "-d",
        "--pidfile",
        str(pidfile),
        "--tcp-established",
        "--file-locks",
        "-o",
        "restore.log",
    ]
    code, output = await _run(argv, timeout=timeout)
    if code != 0:
        raise CheckpointError(
            f"criu restore exited {code}: {_criu_errors(images / 'restore.log', output)}"
        )
    try:
        return RestoredProcess(int(pidfile.read_text().strip()))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"criu restore wrote no usable pidfile: {exc}") from exc


def criu_meta(images: Path) -> dict[str, Any]:
    """What the node noted beside a CRIU dump (the port the process listens on)."""
    try:
        data: dict[str, Any] = json.loads((images / _META).read_text())
    except (OSError, ValueError):
        return {}
    return data


async def checkpoint(
    *,
    handle: Handle | None,
    stop: StopFn,
    state_dir: Path,
    ack: Path,
    out: Path,
    timeout: float,
    use_criu: bool,
    criu_binary: str = "criu",
    meta: dict[str, Any] | None = None,
) -> Checkpoint:
    """Stop the instance with its state captured, and pack the snapshot into ``out``.

    With ``use_criu`` a CRIU dump is tried first; when it fails the
    cooperative protocol runs instead (the failure is in ``detail``).
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    images = state_dir / CRIU_DIR
    shutil.rmtree(images, ignore_errors=True)
    kind: SnapshotKind = "cooperative"
    notes: list[str] = []
    if use_criu and handle is not None and handle.returncode is None:
        try:
            await criu_dump(handle.pid, images, binary=criu_binary)
            (images / _META).write_text(json.dumps(meta or {}))
            kind = "criu"
            notes.append("process dumped with CRIU")
            await stop()  # reap what CRIU ended
        except CheckpointError as exc:
            shutil.rmtree(images, ignore_errors=True)
            notes.append(f"CRIU dump failed ({exc}); fell back to the cooperative protocol")
    if kind == "cooperative":
        notes.append(await cooperative_stop(handle, stop, ack, timeout=timeout))
    try:
        result = await asyncio.to_thread(pack, state_dir, out)
    except Exception as exc:  # a socket or a link leaving it: cannot be packed faithfully
        raise CheckpointError(f"the state directory cannot be packed: {exc}") from exc
    finally:
        shutil.rmtree(images, ignore_errors=True)
    return Checkpoint(out, result.digest, result.size_bytes, kind, "; ".join(notes))


def restore_snapshot(archive: Path, state_dir: Path, images: Path) -> bool:
    """Unpack a snapshot into ``state_dir`` (replacing it); CRIU images go to ``images``.

    Returns whether the snapshot carries CRIU images. Blocking (run it in a thread).
    """
    if os.path.lexists(state_dir):
        if state_dir.is_dir() and not state_dir.is_symlink():
            shutil.rmtree(state_dir)
        else:
            state_dir.unlink()
    safe_extract(archive, state_dir)
    dumped = state_dir / CRIU_DIR
    if not dumped.is_dir():
        return False
    shutil.rmtree(images, ignore_errors=True)
    images.parent.mkdir(parents=True, exist_ok=True)
    dumped.rename(images)
    return True
