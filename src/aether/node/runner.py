"""Runs one instance on this node through the lifecycle of ARCHITECTURE.md.

The node keeps its own view (``local``) of each instance and asks
``core.lifecycle.node_step`` what to do next given the leader's command; every
step reports its progress to the server. A crashed process is restarted with
backoff; too many crashes in a row report FAILED so the leader can replace it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from aether.artifacts import safe_extract
from aether.artifacts.digest import digest_file
from aether.client import ApiClient
from aether.core.lifecycle import NodeStep, State, node_step
from aether.errors import AetherError, ConflictError, NotFoundError, UnsafeArchiveError
from aether.model.cluster import InstanceRecord
from aether.node.drivers.base import Driver, Handle, LaunchSpec

__all__ = ["InstanceRunner", "RunnerConfig"]

log = logging.getLogger("aether.node.runner")


class RunnerConfig:
    def __init__(
        self,
        data_dir: Path,
        advertise_host: str,
        *,
        health_timeout: float = 30.0,
        drain_grace: float = 0.5,
        stop_grace: float = 10.0,
        max_restarts: int = 5,
    ) -> None:
        self.data_dir = data_dir
        self.advertise_host = advertise_host
        self.health_timeout = health_timeout
        self.drain_grace = drain_grace
        self.stop_grace = stop_grace
        self.max_restarts = max_restarts


class StepFailed(Exception):
    """A lifecycle step failed; the message is reported to the leader."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class InstanceRunner:
    def __init__(
        self,
        record: InstanceRecord,
        client: ApiClient,
        driver: Driver,
        config: RunnerConfig,
        on_change: Callable[[], None],
    ) -> None:
        self.record = record
        self.client = client
        self.driver = driver
        self.config = config
        self.on_change = on_change
        self.local: State | None = None
        self.handle: Handle | None = None
        self.port: int | None = None
        self.url: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.monitor: asyncio.Task[None] | None = None
        self.gone = False
        self.needs_report = False
        self.restarts: list[float] = []

    @property
    def key(self) -> str:
        return self.record.key

    @property
    def root(self) -> Path:
        r = self.record
        return self.config.data_dir / "instances" / f"{r.app}@{r.version}-{r.n}"

    @property
    def app_dir(self) -> Path:
        return self.root / "app"

    @property
    def log_path(self) -> Path:
        return self.root / "output.log"

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def step(self) -> None:
        """Start the next lifecycle step, unless one is running."""
        if self.busy or self.gone:
            return
        if self.needs_report and self.local is not None:
            self.needs_report = False
            self._spawn(self._report(self.local, url=self.url))
            return
        action = node_step(self.record.command, self.local)
        work: dict[NodeStep, Callable[[], Awaitable[None]]] = {
            NodeStep.LOAD: self._load,
            NodeStep.ACTIVATE: self._activate,
            NodeStep.DEACTIVATE: self._deactivate,
            NodeStep.UNLOAD: self._unload,
        }
        if action in work:
            self._spawn(work[action]())

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except NotFoundError:
                log.info("%s no longer exists on the server; removing it", self.key)
                await self.remove()
            except ConflictError as exc:
                log.warning("%s: %s", self.key, exc)
            except AetherError as exc:
                log.warning("%s: server unavailable (%s); will retry", self.key, exc)
                self.needs_report = True  # the state we hold may not have reached the server
                await asyncio.sleep(1)
            finally:
                self.on_change()

        self.task = asyncio.create_task(run(), name=f"step {self.key}")

    async def _report(self, state: State, *, message: str = "", url: str | None = None) -> None:
        """Move to ``state`` and tell the server; a refused report undoes the move.

        A report that cannot be sent (server away) keeps the new state, and
        ``needs_report`` sends it again later.
        """
        previous, self.local = self.local, state
        try:
            await self.client.report(self.key, state.value, message=message, url=url)
        except ConflictError:
            self.local = previous
            raise

    # -- steps ----------------------------------------------------------------

    async def _load(self) -> None:
        await self._report(State.LOADING)
        try:
            await self._fetch_and_extract()
        except (StepFailed, AetherError, OSError) as exc:
            if isinstance(exc, NotFoundError) and "instance" in str(exc):
                raise
            code = f" ({exc.code})" if isinstance(exc, AetherError) else ""  # e.g. link_escape
            await self._report(State.FAILED, message=f"load failed{code}: {exc}")
            return
        await self._report(State.LOADED)

    async def _fetch_and_extract(self) -> None:
        digest = self.record.digest
        cache = self.config.data_dir / "artifacts"
        cache.mkdir(parents=True, exist_ok=True)
        archive = cache / f"{digest.split(':', 1)[1]}.tar.gz"
        if not archive.exists():
            partial = archive.with_suffix(f".part{id(self)}")
            try:
                await self.client.download_artifact(digest, partial)
                actual = (await asyncio.to_thread(digest_file, partial))[0]
                if actual != digest:
                    raise StepFailed(f"artifact digest mismatch: expected {digest}, got {actual}")
                partial.replace(archive)
            finally:
                partial.unlink(missing_ok=True)
        elif (await asyncio.to_thread(digest_file, archive))[0] != digest:
            archive.unlink()
            raise StepFailed("cached artifact was corrupt; it was removed, retrying fetches it")
        if self.root.exists():
            await asyncio.to_thread(shutil.rmtree, self.root)
        self.root.mkdir(parents=True)
        try:
            await asyncio.to_thread(safe_extract, archive, self.app_dir)
        except UnsafeArchiveError:
            archive.unlink(missing_ok=True)  # keep nothing of a hostile artifact
            raise

    async def _activate(self) -> None:
        await self._report(State.ACTIVATING)
        try:
            await self._start_and_check()
        except StepFailed as exc:
            await self._stop_process()
            await self._report(State.FAILED, message=str(exc))
            return
        await self._report(State.ACTIVE, url=self.url)
        self.monitor = asyncio.create_task(self._watch_process(), name=f"monitor {self.key}")

    async def _start_and_check(self) -> None:
        spec = self.record.spec
        self.port = free_port()
        env = dict(spec.env)
        env.update(
            {
                spec.port_env: str(self.port),
                "AETHER_APP": spec.name,
                "AETHER_VERSION": str(self.record.version),
                "AETHER_INSTANCE": f"{self.record.node}/{self.record.n}",
                "AETHER_INSTANCE_ID": f"{spec.name}@{self.record.version}/{self.record.n}",
            }
        )
        launch = LaunchSpec(command=spec.start, cwd=self.app_dir, env=env, log_path=self.log_path)
        try:
            self.handle = await self.driver.start(launch)
        except OSError as exc:
            raise StepFailed(f"could not start {spec.start!r}: {exc}") from exc
        self.url = f"http://{self.config.advertise_host}:{self.port}"
        await self._health_check()

    async def _health_check(self) -> None:
        health = self.record.spec.health
        deadline = time.monotonic() + self.config.health_timeout
        url = f"http://127.0.0.1:{self.port}{health or '/'}"
        async with httpx.AsyncClient(timeout=2.0) as http:
            while time.monotonic() < deadline:
                assert self.handle is not None
                if self.handle.returncode is not None:
                    raise StepFailed(
                        f"process exited with code {self.handle.returncode} before it was healthy; "
                        f"last output: {self._last_output()}"
                    )
                try:
                    if health is None:
                        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                            return
                    response = await http.get(url)
                    if response.status_code < 400:
                        return
                except (httpx.TransportError, OSError):
                    pass
                await asyncio.sleep(0.05)
        raise StepFailed(
            f"health check {url} did not pass within {self.config.health_timeout:.0f}s; "
            f"last output: {self._last_output()}"
        )

    def _last_output(self, limit: int = 400) -> str:
        try:
            data = self.log_path.read_bytes()[-limit:]
        except OSError:
            return "(none)"
        return data.decode("utf-8", "replace").strip() or "(none)"

    async def _watch_process(self) -> None:
        """Restart a process that exits while it should serve, with backoff."""
        while self.handle is not None:
            code = await self.handle.wait()
            if self.local is not State.ACTIVE or self.gone:
                return
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < 60] + [now]
            if len(self.restarts) > self.config.max_restarts:
                await self._safe_report(
                    State.FAILED,
                    f"crash loop: exited {len(self.restarts)} times in 60s (last code {code}); "
                    f"last output: {self._last_output()}",
                )
                return
            await self._safe_report(State.ACTIVATING, f"exited with code {code}; restarting")
            await asyncio.sleep(min(0.2 * 2 ** (len(self.restarts) - 1), 10))
            try:
                await self._start_and_check()
            except StepFailed as exc:
                await self._stop_process()
                await self._safe_report(State.FAILED, str(exc))
                return
            await self._safe_report(State.ACTIVE, "restarted", url=self.url)

    async def _safe_report(self, state: State, message: str, url: str | None = None) -> None:
        try:
            await self._report(state, message=message, url=url)
        except AetherError as exc:
            log.warning("%s: report %s failed: %s", self.key, state, exc)
            self.needs_report = True
        finally:
            self.on_change()

    async def _deactivate(self) -> None:
        await self._report(State.DEACTIVATING)
        await asyncio.sleep(self.config.drain_grace)  # let routers drop the endpoint
        await self._stop_process()
        await self._report(State.LOADED)

    async def _unload(self) -> None:
        with contextlib.suppress(ConflictError):
            await self._report(State.UNLOADING)
        await self.remove()
        await self.client.unloaded(self.key)

    async def _stop_process(self) -> None:
        if self.monitor is not None and self.monitor is not asyncio.current_task():
            self.monitor.cancel()
        self.monitor = None
        if self.handle is not None:
            await self.driver.stop(self.handle, grace=self.config.stop_grace)
            self.handle = None

    async def remove(self) -> None:
        """Stop everything and delete the instance's files (no report)."""
        self.gone = True
        await self._stop_process()
        if self.root.exists():
            await asyncio.to_thread(shutil.rmtree, self.root, True)

    async def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
