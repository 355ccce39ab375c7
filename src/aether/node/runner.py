"""Runs one instance on this node through the lifecycle of ARCHITECTURE.md.

The node keeps its own view (``local``) of each instance and asks
``core.lifecycle.node_step`` what to do next given the leader's command; every
step reports its progress to the server. A crashed process is restarted with
backoff; too many crashes in a row report FAILED so the leader can replace it.

Stateful instances (``stateful`` in aether.toml) get ``AETHER_STATE_DIR`` (their
``state_dir``, absolute) and ``AETHER_CHECKPOINT_ACK``.

An instance's directory (``instances/{app}@{version}-{n}``, 0700) belongs to the
node: its log, snapshots and CRIU images live there, where the app cannot plant
a symlink for the node to follow. Only ``app/`` (the artifact, cwd and state)
and ``run/`` (the checkpoint acknowledgement) belong to the instance's uid
(``driver.host_uid``), 0700, and only they are writable inside its sandbox. A DEACTIVATE with
``checkpoint`` stops the instance through ``node.checkpoint`` (CRIU where the
server switched it on for this node, else the cooperative protocol), uploads
the snapshot and reports LOADED with its digest; a LOAD with ``restore_from``
downloads that snapshot, checks its digest and unpacks it into the state
directory before the instance starts.

Request ids — the rule. Every command the leader writes carries a fresh
``request_id``; the node's reports and its assignment stream echo it.

1. A runner records the id of each command whose target it reached (LOAD →
   LOADED, ACTIVATE → ACTIVE, DEACTIVATE → LOADED, UNLOAD → gone), in memory
   and in the node's ``RequestLog`` (``requests.log`` in the data directory,
   the newest 4096 ids, with the command's result: the snapshot digest of a
   checkpoint).
2. A runner never starts a step for a record whose request id it has already
   carried out. A command delivered twice (a duplicate snapshot line after a
   reconnect, a replayed stream event) or delivered late (the store's ACTIVATE
   echoed back after the node already stopped the instance for a DEACTIVATE)
   runs once.
3. When the node lets an instance go (unloaded, or the server no longer knows
   it), the ids its runner carried out are marked *dropped* for the life of the
   process: a stale record with one of them starts nothing, so a replayed
   stream cannot bring back an instance the node already unloaded. A new
   placement under the same key has a new id and runs.
4. Level-triggered recovery is untouched: a restarted node holds nothing
   (``local`` None), its runners have carried out nothing and nothing is
   dropped, so it rebuilds every instance it is told to run through
   ``node_step``, whatever the log says. What the persisted log adds after a
   restart is the result of work that cannot be done twice: a checkpoint stored
   before the restart is reported again with its snapshot digest (the process
   it came from is gone and cannot be dumped again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import stat
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

from aether import tracing
from aether.artifacts import safe_extract
from aether.artifacts.digest import digest_file
from aether.client import ApiClient
from aether.core.failures import describe_exit, health_failure, start_failure, tail_output
from aether.core.lifecycle import Command, NodeStep, State, node_step
from aether.errors import AetherError, ConflictError, NotFoundError, UnsafeArchiveError
from aether.model.cluster import InstanceRecord
from aether.model.names import split_cluster_name
from aether.node.checkpoint import (
    CheckpointError,
    RestoredProcess,
    checkpoint,
    criu_meta,
    criu_restore,
    restore_snapshot,
)
from aether.node.cleanup import PENDING_SNAPSHOT, instance_dir_name, write_instance_file
from aether.node.contents import ContentStore
from aether.node.drivers.base import Handle, LaunchSpec, RunsInstances
from aether.node.orphans import store_orphan
from aether.node.periodic import PeriodicCheckpoints, PeriodicTarget
from aether.node.secret_files import SecretFileError, write_secret_files
from aether.node.slice_control import SliceControl, describe
from aether.ports import free_port

__all__ = ["InstanceRunner", "RequestLog", "RunnerConfig"]

# the state a command's step ends in (UNLOAD ends with the instance gone)
# the report a step opens with; the step has done nothing yet when it is sent
_OPENING = frozenset({State.LOADING, State.ACTIVATING, State.DEACTIVATING, State.UNLOADING})

_TARGET = {
    Command.LOAD: State.LOADED,
    Command.ACTIVATE: State.ACTIVE,
    Command.DEACTIVATE: State.LOADED,
}


class RequestLog:
    """The request ids of the commands this node carried out (see the module docstring).

    Bounded (the newest ``limit``), persisted as JSON lines appended to ``path``
    and compacted when the file holds twice that; a torn last line is ignored.
    ``dropped`` ids live in memory only: they matter for the life of a process.
    """

    def __init__(self, path: Path | None, *, limit: int = 4096) -> None:
        self.path = path
        self.limit = limit
        self._done: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._dropped: OrderedDict[str, None] = OrderedDict()
        self._lines = 0
        if path is not None and path.exists():
            text = path.read_text(errors="replace")
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                    self._put(str(entry["id"]), dict(entry.get("result") or {}))
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a crash
                self._lines += 1
            if text and not text.endswith("\n"):
                self._compact()  # never append to a torn line

    def _put(self, request_id: str, result: dict[str, Any]) -> dict[str, Any]:
        merged = {**self._done.pop(request_id, {}), **result}
        self._done[request_id] = merged
        while len(self._done) > self.limit:
            self._done.popitem(last=False)
        return merged

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._done

    def __len__(self) -> int:
        return len(self._done)

    def result(self, request_id: str) -> dict[str, Any]:
        return dict(self._done.get(request_id, {}))

    def remember(self, request_id: str, **result: Any) -> None:
        """Record that the command ``request_id`` was carried out (with its result)."""
        if not request_id:
            return
        if request_id in self._done and not result:
            self._done.move_to_end(request_id)
            return
        merged = self._put(request_id, result)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._lines >= 2 * self.limit:
            self._compact()
        else:
            with open(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a") as fh:
                fh.write(json.dumps({"id": request_id, "result": merged}) + "\n")
            self._lines += 1

    def _compact(self) -> None:
        """Rewrite the file with the ids kept (atomically)."""
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            "".join(json.dumps({"id": k, "result": v}) + "\n" for k, v in self._done.items())
        )
        tmp.chmod(0o600)
        os.replace(tmp, self.path)
        self._lines = len(self._done)

    def snapshots(self) -> set[str]:
        """The digests of the checkpoints this node stored on the server (as remembered)."""
        return {str(r["snapshot"]) for r in self._done.values() if r.get("snapshot")}

    def drop(self, request_ids: Iterable[str]) -> None:
        """The node let these commands' instance go: later deliveries start nothing."""
        for request_id in request_ids:
            if request_id:
                self._dropped[request_id] = None
                self._dropped.move_to_end(request_id)
        while len(self._dropped) > self.limit:
            self._dropped.popitem(last=False)

    def dropped(self, request_id: str) -> bool:
        return bool(request_id) and request_id in self._dropped


log = logging.getLogger("aether.node.runner")

_PROBE_INTERVAL = 0.05  # seconds between two health probes
#: The first second after the start is probed more often: most apps come up within
#: it, and each probe of a port nobody listens on yet is one refused connect.
_PROBE_INTERVAL_EARLY = 0.01
_PROBE_EARLY = 1.0
_PROBE_TIMEOUT = 2.0  # seconds one probe waits for its answer
SHIP_OUTPUT_TIMEOUT = 5.0  # seconds the FAILED report waits for the output to ship
_OUTPUT_READ = 64 * 1024  # bytes read from the end of the log for the failure's output


class RunnerConfig:
    def __init__(
        self,
        data_dir: Path,
        advertise_host: str,
        *,
        drain_grace: float = 0.5,
        stop_grace: float = 10.0,
        max_restarts: int = 5,
        criu: bool = False,
        criu_binary: str = "criu",
    ) -> None:
        self.data_dir = data_dir.resolve()  # instances get absolute paths under it
        self.advertise_host = advertise_host
        self.drain_grace = drain_grace
        self.stop_grace = stop_grace
        self.max_restarts = max_restarts
        # CRIU checkpoints, when the server switched the feature on for this node
        self.criu = criu
        self.criu_binary = criu_binary
        self.requests = RequestLog(data_dir / "requests.log")
        self.contents = ContentStore(self.data_dir / "contents")


class StepFailed(Exception):
    """A lifecycle step failed; the message is reported to the leader."""


class InstanceRunner:
    def __init__(
        self,
        record: InstanceRecord,
        client: ApiClient,
        driver: RunsInstances,
        config: RunnerConfig,
        on_change: Callable[[], None],
        ship_output: Callable[[InstanceRunner], Awaitable[None]] | None = None,
    ) -> None:
        self.record = record
        # sends the instance's output to the server before it is reported FAILED: the
        # leader replaces a failed instance, and then the server takes no more of its lines
        self.ship_output = ship_output
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
        self.crashes = 0  # unexpected exits while ACTIVE, since the node started (telemetry)
        self.executed: set[str] = set()  # request ids whose step this runner carried out
        self.running: tuple[Command, str] | None = None  # the command the current step serves
        self.snapshot: str | None = None  # the checkpoint it stored (reported with LOADED)
        self.pending: tuple[Path, str, int, str, str] | None = None  # checkpoint to upload
        self.periodic = PeriodicCheckpoints(client, None)  # while ACTIVE (node.periodic)
        # the node's lease may have expired: the router withholds this stateful instance
        # until the server accepts a report of it again (see NodeDaemon.withheld)
        self.fenced = False
        self.writes_until: float | None = None  # fenced: it took no writes after this
        self._release: asyncio.Future[None] | None = None  # let_go, once
        # a slice instance: its control key (fresh per start, never logged) and the
        # entry points its host described (reported with ACTIVE: one endpoint each)
        self._control_key: str | None = None
        self.entries: dict[str, dict[str, Any]] | None = None

    @property
    def is_slice(self) -> bool:
        return self.record.spec.runtime == "slice"

    @property
    def slice_control(self) -> SliceControl | None:
        """How node code makes control calls to this slice instance, while it is ACTIVE."""
        if (
            self.local is not State.ACTIVE
            or self.entries is None
            or self._control_key is None
            or self.port is None
        ):
            return None
        return SliceControl(
            host=self.config.advertise_host,
            port=self.port,
            key=self._control_key,
            app=self.record.app,
            tenant=split_cluster_name(self.record.app)[1],
        )

    @property
    def key(self) -> str:
        return self.record.key

    @property
    def root(self) -> Path:
        return self.config.data_dir / "instances" / instance_dir_name(self.record)

    @property
    def app_dir(self) -> Path:
        return self.root / "app"

    @property
    def log_path(self) -> Path:
        return self.root / "output.log"

    @property
    def state_dir(self) -> Path | None:
        """``$AETHER_STATE_DIR``: the stateful app's ``state_dir`` inside its app directory."""
        spec = self.record.spec
        return self.app_dir / spec.state_dir if spec.stateful and spec.state_dir else None

    @property
    def run_dir(self) -> Path:
        """Written by the instance: the checkpoint acknowledgement."""
        return self.root / "run"

    @property
    def ack_path(self) -> Path:
        return self.run_dir / "checkpoint.ack"

    @property
    def instance_id(self) -> str:
        """Stable for this instance on this node: the driver derives its uid from it."""
        return self.record.key

    @property
    def _criu(self) -> bool:
        """CRIU is switched on for this node and this instance's driver can checkpoint."""
        return self.config.criu and "checkpoint" in self.driver.abilities

    @property
    def criu_images(self) -> Path:
        return self.root / "criu-images"

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
        if self.pending is not None:  # a checkpoint taken but not yet stored
            self._spawn(self._store_checkpoint())
            return
        action = node_step(self.record.command, self.local)
        work: dict[NodeStep, Callable[[], Awaitable[None]]] = {
            NodeStep.LOAD: self._load,
            NodeStep.ACTIVATE: self._activate,
            NodeStep.DEACTIVATE: self._deactivate,
            NodeStep.UNLOAD: self._unload,
        }
        if action not in work:
            return
        request_id = self.record.request_id
        if request_id and (
            request_id in self.executed
            or (self.local is None and self.config.requests.dropped(request_id))
        ):
            log.debug("%s: request %s was carried out already; not again", self.key, request_id)
            return
        self.running = (self.record.command, request_id)
        self._spawn(work[action]())

    def _carried_out(self, request_id: str, **result: Any) -> None:
        self.executed.add(request_id)
        self.config.requests.remember(request_id, **result)

    def _spawn(self, coro: Awaitable[object]) -> None:
        async def run() -> None:
            try:
                await coro
            except NotFoundError:
                log.info("%s no longer exists on the server; removing it", self.key)
                await self.let_go()
            except ConflictError as exc:
                log.warning("%s: %s", self.key, exc)
            except AetherError as exc:
                log.warning("%s: server unavailable (%s); will retry", self.key, exc)
                self.needs_report = True  # the state we hold may not have reached the server
                await asyncio.sleep(1)
            except ValueError as exc:  # an answer this node cannot read: too new?
                log.error("%s: %s", self.key, exc)
                await asyncio.sleep(1)
            finally:
                self.on_change()

        self.task = asyncio.create_task(run(), name=f"step {self.key}")

    async def _report(
        self, state: State, *, message: str = "", url: str | None = None
    ) -> int | None:
        """Move to ``state`` and tell the server; a refused report undoes the move.

        A result (LOADED, ACTIVE, FAILED) that cannot be sent (server away) keeps
        the new state, and ``needs_report`` sends it again later: the work is done.
        A step's opening report (LOADING, ACTIVATING, ...) that cannot be sent
        undoes the move, so the step runs again from the start; keeping it would
        leave, say, ACTIVATING with no process, which no lifecycle step moves on.

        Returns the revision at which the report withdrew the instance's endpoint
        (None if it withdrew none).
        """
        if state is not State.ACTIVE:
            await self.periodic.stop()  # nothing else signals the app while it checkpoints
        if state is State.FAILED and self.ship_output is not None:
            try:  # the traceback that explains the failure, while the server takes it
                await asyncio.wait_for(self.ship_output(self), SHIP_OUTPUT_TIMEOUT)
            except (TimeoutError, OSError, AetherError) as exc:
                log.debug("%s: its output was not shipped before FAILED: %s", self.key, exc)
        previous, self.local = self.local, state
        snapshot = self.snapshot if state is State.LOADED else None
        try:
            answer = await self.client.report(
                self.key,
                state.value,
                message=message,
                url=url,
                request_id=self.record.request_id,
                snapshot=snapshot,
                entries=self.entries if state is State.ACTIVE else None,
            )
        except ConflictError:
            self.local = previous
            raise
        except AetherError:
            if state in _OPENING:
                self.local = previous
            raise
        except ValueError as exc:  # taken, but its answer this node cannot read: too new?
            log.error("%s: report answer: %s", self.key, exc)
            answer = None
        self.fenced = False  # the server knows the instance on this node's lease
        if state is State.ACTIVE:
            self._start_periodic()
        if self.running is not None and _TARGET.get(self.running[0]) is state:
            self._carried_out(self.running[1])
        withdrawn = answer.withdrawn_revision if answer is not None else None
        return int(withdrawn) if withdrawn is not None else None

    # -- steps ----------------------------------------------------------------

    def _span(self, step: str) -> contextlib.AbstractContextManager[None]:
        """A span for a lifecycle step, in the trace of the deployment that placed it."""
        record = self.record
        return tracing.span(
            f"node: {step} {split_cluster_name(record.app)[0]} v{record.version}/{record.n}",
            parent=record.traceparent,
            attributes={"aether.node": record.node, "aether.instance": self.key},
        )

    async def _load(self) -> None:
        with self._span("load"):
            await self._load_step()

    async def _load_step(self) -> None:
        await self._report(State.LOADING)
        try:
            await self._fetch_and_extract()
            if self.record.restore_from:
                with tracing.span("snapshot restore"):
                    await self._restore(self.record.restore_from)
        except (StepFailed, AetherError, OSError) as exc:
            if isinstance(exc, NotFoundError) and "instance" in str(exc):
                raise
            code = f" ({exc.code})" if isinstance(exc, AetherError) else ""  # e.g. link_escape
            await self._report(State.FAILED, message=f"load failed{code}: {exc}")
            return
        await asyncio.to_thread(self._hand_over)
        record = self.record
        if record.checkpoint and record.command is Command.DEACTIVATE and self.snapshot is None:
            # rebuilt after a restart: the checkpoint stored before it still counts
            self.snapshot = self.config.requests.result(record.request_id).get("snapshot")
        await self._report(State.LOADED)

    async def _restore(self, digest: str) -> None:
        """Download the snapshot, check its digest, unpack it into the state directory."""
        state_dir = self.state_dir
        if state_dir is None:
            raise StepFailed(f"told to restore {digest}, but the app has no state_dir")
        archive = self.root / "restore.tar.gz"
        try:
            await self.client.download_snapshot(digest, archive)
            actual = (await asyncio.to_thread(digest_file, archive))[0]
            if actual != digest:
                raise StepFailed(f"snapshot digest mismatch: expected {digest}, got {actual}")
            await asyncio.to_thread(restore_snapshot, archive, state_dir, self.criu_images)
        finally:
            archive.unlink(missing_ok=True)

    async def _fetch_and_extract(self) -> None:
        digest = self.record.digest
        cache = self.config.data_dir / "artifacts"
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        archive = cache / f"{digest.split(':', 1)[1]}.tar.gz"
        if not archive.exists():
            partial = archive.with_suffix(f".part{id(self)}")
            try:
                with tracing.span("artifact download", attributes={"aether.digest": digest}):
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
        self.root.mkdir(parents=True, mode=0o700)
        write_instance_file(self.root, self.record)  # for the sweep at a later start
        try:
            with tracing.span("artifact extract", attributes={"aether.digest": digest}):
                await asyncio.to_thread(self._extract, archive)
        except UnsafeArchiveError:
            archive.unlink(missing_ok=True)  # keep nothing of a hostile artifact
            raise

    def _extract(self, archive: Path) -> None:
        """Unpack the artifact into ``app/``. Where the instance runs as its own uid, its
        shipped files are hard links to the node's shared read-only copies
        (``node.contents``): only contents the node has not seen are written out.
        The state directory is always the instance's own."""
        if self.driver.host_uid(self.instance_id) is None:
            safe_extract(archive, self.app_dir)
            return
        state = self.record.spec.state_dir
        safe_extract(
            archive,
            self.app_dir,
            shared=self.config.contents,
            own=lambda rel: state is not None and (rel == state or rel.startswith(state + "/")),
        )

    def _hand_over(self) -> None:
        """Give ``app/`` and ``run/`` to the instance's uid, 0700: every directory and
        every file of its own, never a shared one (``node.contents``: a file with
        more than one link stays the node's, read-only)."""
        state_dir = self.state_dir
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(exist_ok=True)
        os.chmod(self.root, 0o700)
        uid = self.driver.host_uid(self.instance_id)
        for top in (self.app_dir, self.run_dir):
            os.chmod(top, 0o700)
            if uid is None:
                continue
            os.lchown(top, uid, uid)
            for dirpath, dirnames, filenames in os.walk(top):
                for name in dirnames:
                    os.lchown(os.path.join(dirpath, name), uid, uid)
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    st = os.lstat(path)
                    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                        continue  # shared with other instances: stays read-only
                    os.lchown(path, uid, uid)

    async def _activate(self) -> None:
        with self._span("activate"):
            await self._activate_step()

    async def _activate_step(self) -> None:
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
        if self.criu_images.is_dir() and await self._criu_restore():
            return
        self.port = free_port()
        self.entries = self._control_key = None
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
        state_dir = self.state_dir
        if state_dir is not None:
            env["AETHER_STATE_DIR"] = str(state_dir)
            env["AETHER_CHECKPOINT_ACK"] = str(self.ack_path)
        if self.is_slice:
            key = secrets.token_urlsafe(32)
            env["AETHER_SLICE_CONTROL_KEY"] = key
            # it listens where other nodes' routers and handles reach it
            env["AETHER_SLICE_HOST"] = self.config.advertise_host
            if spec.slice:
                env["AETHER_SLICE"] = spec.slice
        if not (self.run_dir.is_dir() and (state_dir is None or state_dir.is_dir())):
            await asyncio.to_thread(self._hand_over)  # loaded by an older node, or tampered with
        env.update(await self._secrets())
        launch = LaunchSpec(
            command=spec.start,
            cwd=self.app_dir,
            env=env,
            log_path=self.log_path,
            instance_id=self.instance_id,
            root=self.root,
            writable=(self.app_dir, self.run_dir),
            memory_mb=spec.resources.memory_mb,
        )
        try:
            self.handle = await self.driver.start(launch)
        except OSError as exc:
            raise StepFailed(f"could not start {spec.start!r}: {exc}") from exc
        self.url = f"http://{self.config.advertise_host}:{self.port}"
        await self._health_check()
        if self.is_slice:
            await self._describe(key)

    async def _secrets(self) -> dict[str, str]:
        """Fetch the secrets the app references (``[secrets]``), write its secret files
        and return its secret env. Values are held here only: never logged, reported or
        stored; one that is not set fails the start with the server's reason."""
        wanted = self.record.spec.secrets
        if not wanted.env and not wanted.files:
            return {}
        try:
            values = await self.client.instance_secrets(self.key)
        except ConflictError as exc:  # "secret X is not set"
            raise StepFailed(str(exc)) from None
        except AetherError as exc:
            raise StepFailed(f"could not fetch the app's secrets: {exc}") from None
        uid = self.driver.host_uid(self.instance_id)
        try:
            await asyncio.to_thread(write_secret_files, self.app_dir, values["files"], uid)
        except SecretFileError as exc:
            raise StepFailed(str(exc)) from None
        return values["env"]

    async def _describe(self, key: str) -> None:
        """Ask the healthy slice host for its entry points (reported with ACTIVE)."""
        assert self.port is not None
        control = SliceControl(self.config.advertise_host, self.port, key, self.record.app, "")
        try:
            self.entries = await describe(control)
        except ValueError as exc:
            raise StepFailed(f"the slice host {exc}; last output:\n{self._last_output()}") from None
        self._control_key = key

    async def _health_check(self) -> None:
        """Poll the health path (or the port) until it passes or ``health_timeout`` ends.

        Fails at once when the process exits; every failure says why, with the
        end of the instance's output (``core.failures``).
        """
        spec = self.record.spec
        health, port = spec.health, self.port
        assert port is not None
        started = time.monotonic()
        deadline = started + spec.health_timeout
        # a slice host listens on the advertise host only (AETHER_SLICE_HOST)
        host = self.config.advertise_host if self.is_slice else "127.0.0.1"
        url = f"http://{host}:{port}{health or '/'}"
        with tracing.span(f"health check GET {health or '/'}", kind="client"):
            await self._probe_until_healthy(host, port, url, started, deadline)

    async def _probe_until_healthy(
        self, host: str, port: int, url: str, started: float, deadline: float
    ) -> None:
        health = self.record.spec.health
        last_status: int | None = None
        headers: dict[str, str] = {}
        tracing.inject(headers)  # the instance's first requests carry the deploy's trace
        async with httpx.AsyncClient(headers=headers) as http:
            while (left := deadline - time.monotonic()) > 0:
                assert self.handle is not None
                if self.handle.returncode is not None:
                    raise StepFailed(
                        start_failure(
                            self.handle.returncode,
                            self._last_output(),
                            shell_convention=self._shell_convention,
                        )
                    )
                try:
                    if health is None:
                        with socket.create_connection((host, port), timeout=min(1, left)):
                            return
                    response = await http.get(url, timeout=min(_PROBE_TIMEOUT, left))
                    last_status = response.status_code
                    if response.status_code < 400:
                        return
                except (httpx.TransportError, OSError):
                    pass
                early = time.monotonic() - started < _PROBE_EARLY
                await asyncio.sleep(_PROBE_INTERVAL_EARLY if early else _PROBE_INTERVAL)
        raise StepFailed(
            health_failure(
                health, port, self.record.spec.health_timeout, last_status, self._last_output()
            )
        )

    @property
    def _shell_convention(self) -> bool:
        """The driver reports death by signal N as exit code 128+N (bubblewrap's init)."""
        return self.driver.name == "bwrap"

    def _last_output(self) -> str:
        """The end of the instance's output (``core.failures.tail_output``)."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(max(0, fh.seek(0, os.SEEK_END) - _OUTPUT_READ))
                data = fh.read()
        except OSError:
            return "(none)"
        return tail_output(data)

    async def _watch_process(self) -> None:
        """Restart a process that exits while it should serve, with backoff."""
        while self.handle is not None:
            code = await self.handle.wait()
            if self.local is not State.ACTIVE or self.gone:
                return
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < 60] + [now]
            self.crashes += 1
            if len(self.restarts) > self.config.max_restarts:
                last = describe_exit(code, shell_convention=self._shell_convention)
                await self._safe_report(
                    State.FAILED,
                    f"crash loop: exited {len(self.restarts)} times in 60s (last: {last}); "
                    f"last output:\n{self._last_output()}",
                )
                return
            exited = describe_exit(code, shell_convention=self._shell_convention)
            await self._safe_report(State.ACTIVATING, f"{exited}; restarting")
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

    async def _criu_restore(self) -> bool:
        """Bring back a process CRIU dumped (once); False: start the app afresh instead."""
        images = self.criu_images
        meta = criu_meta(images)
        try:
            if not self._criu:
                raise CheckpointError("CRIU is not switched on for this node")
            self.handle = await criu_restore(images, binary=self.config.criu_binary)
        except CheckpointError as exc:
            log.warning("%s: %s; starting it afresh on the restored state", self.key, exc)
            return False
        finally:
            await asyncio.to_thread(shutil.rmtree, images, True)
        self.port = int(meta.get("port") or 0)
        self.url = f"http://{self.config.advertise_host}:{self.port}"
        try:
            await self._health_check()
        except StepFailed as exc:
            log.warning(
                "%s: the restored process is not healthy (%s); starting afresh", self.key, exc
            )
            await self._stop_process()
            return False
        return True

    async def _deactivate(self) -> None:
        withdrawn = await self._report(State.DEACTIVATING)
        await self._drain(withdrawn)
        state_dir = self.state_dir
        if not (self.record.checkpoint and state_dir is not None):
            await self._stop_process()
            await self._report(State.LOADED)
            return
        spec = self.record.spec
        if not state_dir.resolve().is_relative_to(self.app_dir.resolve()):
            # the app replaced its state directory (or a parent) with a link out of it
            await self._stop_process()
            await self._report(State.FAILED, message="checkpoint failed: state_dir leaves the app")
            return
        try:
            made = await checkpoint(
                handle=self.handle,
                stop=self._stop_process,
                state_dir=state_dir,
                ack=self.ack_path,
                out=self.root / PENDING_SNAPSHOT,
                timeout=spec.checkpoint.timeout,
                use_criu=self._criu and spec.checkpoint.method != "cooperative",
                criu_binary=self.config.criu_binary,
                meta={"port": self.port},
            )
        except (CheckpointError, OSError) as exc:
            await self._stop_process()
            await self._report(State.FAILED, message=f"checkpoint failed: {exc}")
            return
        self.pending = (made.archive, made.digest, made.size_bytes, made.kind, made.detail)
        await self._store_checkpoint()

    async def _drain(self, revision: int | None) -> None:
        """Wait until every router is done with this instance (``core.withdrawal``).

        Every live router has applied the withdrawal of its endpoint, so nothing
        new is sent to it, and the requests they sent it have been answered — or
        the app's ``shutdown_grace`` ended. A server that cannot say (away, or
        older) gets the fixed ``drain_grace`` pause instead.
        """
        url = self.url
        if revision is None or url is None:
            return  # no endpoint was withdrawn: no router sends it anything
        grace = self.record.spec.shutdown_grace
        started = time.monotonic()
        deadline = started + grace
        waiting: dict[str, str] = {}
        while (left := deadline - time.monotonic()) > 0:
            try:
                answer = await self.client.withdrawal(
                    self.record.node, revision, url, wait=min(left, 10.0)
                )
            except AetherError as exc:
                log.warning("%s: cannot confirm the drain (%s); pausing instead", self.key, exc)
                await asyncio.sleep(min(self.config.drain_grace, left))
                return
            if answer.confirmed:
                log.info("%s: drained in %.2fs", self.key, time.monotonic() - started)
                return
            waiting = answer.waiting_for
        log.warning(
            "%s: shutdown_grace (%gs) ended before every router was done with it: %s",
            self.key,
            grace,
            "; ".join(f"{node}: {why}" for node, why in waiting.items()) or "no answer",
        )

    async def _store_checkpoint(self) -> None:
        with self._span("checkpoint"):
            await self._store_checkpoint_traced()

    async def _store_checkpoint_traced(self) -> None:
        """Upload the checkpoint taken, then report LOADED with its digest.

        A server that cannot be reached leaves it pending: the next step tries again.
        """
        assert self.pending is not None
        archive, digest, _, kind, detail = self.pending
        try:
            await self.client.upload_snapshot(archive, digest, instance=self.key, kind=kind)
        except AetherError as exc:
            if exc.status not in (400, 413):
                raise  # unreachable, or the instance is gone (handled by _spawn)
            self.pending = None
            archive.unlink(missing_ok=True)
            await self._report(State.FAILED, message=f"the checkpoint was refused: {exc}")
            return
        self.pending = None
        archive.unlink(missing_ok=True)
        self.snapshot = digest
        request_id = self.running[1] if self.running else self.record.request_id
        self.config.requests.remember(request_id, snapshot=digest)
        await self._report(State.LOADED, message=f"checkpointed ({kind}, {digest[:19]}): {detail}")

    async def _unload(self) -> None:
        with contextlib.suppress(ConflictError):
            await self._report(State.UNLOADING)
        await self.remove()
        await self.client.unloaded(self.key)
        if self.running is not None:
            self._carried_out(self.running[1])
            self.config.requests.drop([self.running[1]])

    async def _stop_process(self) -> None:
        if self.monitor is not None and self.monitor is not asyncio.current_task():
            self.monitor.cancel()
        self.monitor = None
        if isinstance(self.handle, RestoredProcess):  # not our child: CRIU brought it back
            await self.handle.stop(self.config.stop_grace)
            self.handle = None
        elif self.handle is not None:
            await self.driver.stop(self.handle, grace=self.config.stop_grace)
            self.handle = None

    def _start_periodic(self) -> None:
        state_dir, spec = self.state_dir, self.record.spec
        if state_dir is None or spec.checkpoint.interval <= 0:
            return
        requests, key = self.config.requests, self.key
        self.periodic.target = PeriodicTarget(
            key=key,
            interval=spec.checkpoint.interval,
            timeout=spec.checkpoint.timeout,
            state_dir=state_dir,
            app_dir=self.app_dir,
            ack=self.ack_path,
            root=self.root,
            handle=lambda: self.handle,
            stored=lambda digest: requests.remember(f"periodic {key}", snapshot=digest),
        )
        self.periodic.start()

    async def last_checkpoint(self) -> None:
        """The node stops: one more periodic checkpoint of an ACTIVE stateful instance, so
        its replacement (after the lease expires) misses nothing it acknowledged."""
        await self.periodic.stop()
        target = self.periodic.target
        if target is None or self.local is not State.ACTIVE or self.fenced:
            return
        try:
            async with asyncio.timeout(target.timeout + 10):
                await self.periodic.take(target)
        except (TimeoutError, AetherError, OSError, ValueError) as exc:
            log.warning("%s: no checkpoint as the node stops: %s", self.key, exc)

    def let_go(self) -> Awaitable[None]:
        """The server no longer assigns this instance: keep newer state, then remove it.

        Once per runner (a second call waits for the first); ``node.orphans``.
        """
        if self._release is None:
            self._release = asyncio.ensure_future(self._let_go())
        return asyncio.shield(self._release)

    async def _let_go(self) -> None:
        await self.periodic.stop()
        state_dir = self.state_dir
        ran = self.handle is not None or self.local in (State.ACTIVE, State.ACTIVATING)
        told = self.record.command is Command.UNLOAD
        if state_dir is None or told or self.gone or not ran:
            await self.remove()
            return
        self.gone = True
        stored = self.config.requests.snapshots() | {self.periodic.last or ""}
        if await store_orphan(
            self.client,
            key=self.key,
            state_dir=state_dir,
            app_dir=self.app_dir,
            scratch=self.root,
            stored=stored,
            taken_at=self.writes_until,
            stop=self._stop_process,
        ):
            await self.remove()
        else:
            self.config.requests.drop(self.executed)

    async def remove(self) -> None:
        """Stop everything and delete the instance's files (no report)."""
        await self.periodic.stop()
        self.gone = True
        # later deliveries of the commands carried out here start nothing (rule 3)
        self.config.requests.drop(self.executed)
        await self._stop_process()
        if self.root.exists():
            await asyncio.to_thread(shutil.rmtree, self.root, True)
            await asyncio.to_thread(self.config.contents.prune)

    async def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
