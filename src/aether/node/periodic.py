"""Periodic checkpoints of an ACTIVE stateful instance: its recovery point (RPO).

Every ``[checkpoint] interval`` seconds (``0``: never) the node takes a
cooperative checkpoint without stopping the app: ``SIGUSR1``, wait for the
app's acknowledgement (``$AETHER_CHECKPOINT_ACK``, at most the checkpoint's
``timeout``), pack the state directory (canonical ``tar.gz``: the same state
gives the same digest). When the digest is the one this instance stored last,
no bytes are sent: the server is told the state is unchanged (it moves that
snapshot's ``taken_at`` on). Otherwise the archive is stored like a
migration's checkpoint (``POST /api/v1/snapshots``, kind ``periodic``), and the
leader's newest snapshot of the app — what a replacement restores — is at most
one interval old. An app that does not acknowledge in time is not packed (its
state may be half-written); the next interval tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aether.artifacts import pack
from aether.client import ApiClient
from aether.errors import AetherError, NotFoundError
from aether.node.checkpoint import wait_for_ack
from aether.node.drivers.base import Handle

__all__ = ["PERIODIC_ARCHIVE", "PeriodicCheckpoints", "PeriodicTarget"]

log = logging.getLogger("aether.node.periodic")

PERIODIC_ARCHIVE = "periodic.tar.gz"  # in the instance's directory while it is sent


@dataclass(frozen=True, slots=True)
class PeriodicTarget:
    """What the loop needs of one instance (its runner provides it)."""

    key: str
    interval: float
    timeout: float
    state_dir: Path
    app_dir: Path
    ack: Path
    root: Path  # the node-owned instance directory: the archive is packed there
    handle: Callable[[], Handle | None]
    stored: Callable[[str], None]  # note a digest stored on the server


class PeriodicCheckpoints:
    """The periodic checkpoint loop of one instance (``start`` when ACTIVE, ``stop`` before
    anything else signals or stops it)."""

    def __init__(self, client: ApiClient, target: PeriodicTarget | None) -> None:
        self.client = client
        self.target = target
        self.last: str | None = None  # the digest this instance stored last
        self.taken = 0  # checkpoints sent (bytes or "unchanged")
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        target = self.target
        if target is None or target.interval <= 0 or self.running:
            return
        self._task = asyncio.create_task(self._loop(target), name=f"periodic {target.key}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None or task is asyncio.current_task():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def _loop(self, target: PeriodicTarget) -> None:
        while True:
            await asyncio.sleep(target.interval)
            try:
                await self.take(target)
            except (AetherError, OSError, ValueError) as exc:
                log.warning("%s: periodic checkpoint failed: %s", target.key, exc)

    async def take(self, target: PeriodicTarget) -> str | None:
        """One checkpoint; the digest stored or confirmed (None: the app did not ack)."""
        handle = target.handle()
        if handle is None or handle.returncode is not None:
            return None
        target.ack.unlink(missing_ok=True)
        try:
            os.kill(handle.pid, signal.SIGUSR1)
        except ProcessLookupError:
            return None
        if not await wait_for_ack(target.ack, handle, target.timeout):
            log.warning(
                "%s: no acknowledgement of SIGUSR1 within %gs; no periodic checkpoint this time",
                target.key,
                target.timeout,
            )
            return None
        target.ack.unlink(missing_ok=True)
        if not target.state_dir.resolve().is_relative_to(target.app_dir.resolve()):
            raise ValueError("state_dir leaves the app directory: not packed")
        archive = target.root / PERIODIC_ARCHIVE
        try:
            result = await asyncio.to_thread(pack, target.state_dir, archive)
            digest = result.digest
            if digest != self.last or not await self._confirm(target, digest):
                await self.client.upload_snapshot(
                    archive, digest, instance=target.key, kind="periodic"
                )
        finally:
            archive.unlink(missing_ok=True)
        self.last = digest
        self.taken += 1
        target.stored(digest)
        return digest

    async def _confirm(self, target: PeriodicTarget, digest: str) -> bool:
        """Tell the server the state is still ``digest``; False: it must be sent."""
        try:
            await self.client.confirm_snapshot(digest, instance=target.key)
        except NotFoundError:
            return False
        return True
