"""``aether node``: register, heartbeat, follow assignments, run instances, route.

A node joins once: the join token is exchanged for a credential of its own
(``DATA_DIR/node.credential``, 0600) and a short-lived certificate for its own key
(``node.identity``). Every later call goes to the servers' node ports over mutual
TLS with that certificate, carrying the credential; the node renews the
certificate two-thirds through its life, and at once when the servers trust a CA
it does not know (a rotation). If the server stops accepting the credential (401:
revoked, or unknown to a restored server) the node joins again with its join
token, if it has one; a node an admin revoked is refused (403) and stops.

The node is level-triggered like the leader: the assignment stream keeps a
local copy of this node's instance keys and of all endpoints; a reconcile pass
compares that desired state with the runners it has and steps each one. When
the server is unreachable nothing is stopped: instances keep serving and the
router keeps its last endpoint table while the node reconnects.

The node tells the server how far its router got (``PUT /nodes/{id}/routes``:
the revision applied, the requests still open to withdrawn endpoints) whenever
its table dropped an endpoint, such a request ended, or it registered: that is
the confirmation a stopping instance waits for (``core.withdrawal``).

Slice instances are told where the other slices are: from the endpoint cache the
node keeps a table per tenant (``node.slice_control.slice_tables``) and pushes it
with ``$endpoints`` to that tenant's ACTIVE slice instances on this node whenever
it changes, and once as each becomes ACTIVE (``EndpointPusher``, coalesced).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aether import __version__
from aether.client import ApiClient
from aether.errors import AetherError, ForbiddenError, NotFoundError, UnauthorizedError
from aether.model.api import AssignmentLine, RegisterIn, RegisterOut
from aether.model.cluster import Endpoint, InstanceRecord, NodeCapabilities
from aether.model.compat import skew_warning
from aether.model.placements import AgentPlacement
from aether.model.versioned import VERSION_FIELD, upcast_to
from aether.node import diag
from aether.node.capabilities import fingerprint
from aether.node.cleanup import sweep
from aether.node.drivers import instance_drivers, sandbox_drivers
from aether.node.identity import NodeIdentity
from aether.node.logship import LogShipper
from aether.node.orphans import store_stale_orphan
from aether.node.router import Router
from aether.node.router_tls import TlsOptions
from aether.node.runner import InstanceRunner, RunnerConfig
from aether.node.slice_control import EndpointPusher, SliceControl, SliceTable, slice_tables
from aether.node.tasks import TaskWorker
from aether.node.telemetry import TelemetryCollector, TelemetryPusher
from aether.ops import diag_log

__all__ = ["CREDENTIAL_FILE", "CredentialError", "NodeDaemon", "NodeOptions"]

log = logging.getLogger("aether.node")

CREDENTIAL_FILE = "node.credential"


class CredentialError(Exception):
    """The node has no credential and cannot get one (revoked, or no join token)."""


@dataclass
class NodeOptions:
    server: str
    join_token: str | None  # None: DATA_DIR/node.credential must exist
    data_dir: Path
    router_port: int = 8080
    router_host: str = "127.0.0.1"
    advertise_host: str = "127.0.0.1"
    node_id: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # "bwrap": app instances run sandboxed (the default); "none": as plain processes
    # of the node, for trusted single-tenant setups only (--isolation none)
    isolation: str = "bwrap"
    # the CA (PEM file) to verify an https API URL by when joining; None: the system's
    server_ca: Path | None = None
    # the router serves HTTPS too (certificates per host name: node/router_tls.py)
    router_tls: TlsOptions | None = None


def _node_id(data_dir: Path, requested: str | None) -> str:
    """A stable id, kept in the data dir so a restarted node is the same node."""
    path = data_dir / "node.json"
    if path.exists():
        stored = str(json.loads(path.read_text())["id"])
        if requested is None or requested == stored:
            return stored
    node_id = requested or f"{os.uname().nodename.split('.')[0]}-{uuid.uuid4().hex[:6]}"
    path.write_text(json.dumps({"id": node_id}))
    return node_id


class NodeDaemon:
    def __init__(self, options: NodeOptions) -> None:
        self.options = options
        options.data_dir.mkdir(parents=True, exist_ok=True)
        # the node's files (credentials, instances' logs and state) are the node's alone
        options.data_dir.chmod(0o700)
        (options.data_dir / "instances").mkdir(mode=0o700, exist_ok=True)
        (options.data_dir / "instances").chmod(0o700)
        self.node_id = _node_id(options.data_dir, options.node_id)
        self.identity = NodeIdentity.load(options.data_dir, self.node_id)
        self.renew_now = asyncio.Event()  # the servers trust a CA this node does not know
        # the node's credential and certificate, once it has them (``ensure_credential``)
        self.client = ApiClient(options.server, None)
        self.drivers, self.isolation, self.isolation_detail = instance_drivers(options.isolation)
        self.config = RunnerConfig(options.data_dir, options.advertise_host)
        self.router = Router(
            options.router_host, options.router_port, api_url=options.server, tls=options.router_tls
        )
        self.router.node = self.node_id  # its own instances first
        self.routes_changed = asyncio.Event()  # the router's state is to be sent
        self.router.on_change = self.routes_changed.set
        self.router.withhold = self.withheld
        self.runners: dict[str, InstanceRunner] = {}
        self.assigned: dict[str, InstanceRecord] = {}
        self.endpoints: dict[str, Endpoint] = {}
        # per tenant, its slices' endpoints (from ``endpoints``), pushed to its slice
        # instances on this node whenever it changes, and once as each one is ACTIVE
        self.slice_tables: dict[str, SliceTable] = {}
        self.slice_push = EndpointPusher(self.node_id)
        self.apps: set[str] | None = None  # apps with a blueprint, from the assignment stream
        self.agents: dict[str, AgentPlacement] = {}  # deployed agents (the router serves them)
        self.revision = 0
        # after the first assignment snapshot of this process: remove what no assignment holds
        self.sweep_due = False
        self.swept = False
        self.registration: RegisterOut | None = None
        self.capabilities: NodeCapabilities | None = None  # as last registered
        self.diag_sent: set[str] = set()  # diagnostics requests answered (node/diag.py)
        self.background: set[asyncio.Task[None]] = set()  # e.g. a diagnostics part being sent
        self.lease_lost = asyncio.Event()
        # when the server last acknowledged this node's lease (monotonic, and wall clock)
        self.lease_acked: float | None = None
        self.lease_acked_wall = 0.0
        self.fenced_on: dict[str, int] = {}  # instance key → the lease it was fenced on
        self.changed = asyncio.Event()
        self.shipper = LogShipper(self.client, self.node_id, self.runners)
        self.telemetry = TelemetryPusher(
            self.client,
            TelemetryCollector(self.node_id, options.data_dir),
            self.router,
            self.runners,
            lambda: self.registration,
        )
        self.sandboxes = sandbox_drivers()
        self.tasks = TaskWorker(
            self.client, self.node_id, options.data_dir / "sandboxes", dict(self.sandboxes)
        )

    def lease_fresh(self) -> bool:
        """The server acknowledged this node's lease within its ttl (monotonic clock)."""
        reg = self.registration
        if reg is None or self.lease_acked is None:
            return False
        return time.monotonic() - self.lease_acked < reg.lease_ttl

    def withheld(self, url: str) -> bool:
        """Whether the router must not send to ``url`` now: one of this node's own stateful
        instances while its lease may have expired (a replacement may serve elsewhere), or
        one fenced since, until the server accepts a report of it again."""
        for runner in self.runners.values():
            if runner.url == url and runner.state_dir is not None:
                if not self.lease_fresh():
                    self._fence(runner)
                return runner.fenced
        return False

    def _fence(self, runner: InstanceRunner) -> None:
        if runner.fenced:
            return
        runner.fenced = True
        reg = self.registration
        self.fenced_on[runner.key] = reg.lease_id if reg is not None else -1
        ttl = reg.lease_ttl if reg is not None else 0.0
        runner.writes_until = min(time.time(), self.lease_acked_wall + ttl)
        log.warning("%s: this node's lease may have expired; not serving it", runner.key)

    def _lease_acked(self, sent: float, sent_wall: float) -> None:
        """The server renewed the lease for a call sent at ``sent`` (monotonic): an answer
        read late (the node was frozen while it was on its way) is as old as its call."""
        self.lease_acked = sent
        self.lease_acked_wall = sent_wall

    def _unfence(self) -> None:
        """A heartbeat on the lease a runner was fenced on was acknowledged in time: that
        lease never expired, so nothing was replaced. (Fenced on a lease that was lost, a
        runner waits for the server to accept a report of it on the new one.)"""
        reg = self.registration
        if reg is None or not self.lease_fresh():
            return
        for runner in self.runners.values():
            if runner.fenced and self.fenced_on.get(runner.key) == reg.lease_id:
                runner.fenced = False

    @property
    def router_url(self) -> str:
        return f"http://{self.options.advertise_host}:{self.router.port}"

    @property
    def credential_path(self) -> Path:
        return self.options.data_dir / CREDENTIAL_FILE

    async def ensure_credential(self) -> None:
        """Use the stored credential and certificate, or join with the join token."""
        try:
            credential = self.credential_path.read_text().strip()
        except FileNotFoundError:
            credential = ""
        if not credential or not self.identity.usable:
            credential = await self._join()
        self.client.use_token(credential)
        assert self.identity.context is not None
        self.client.use_identity(self.identity.node_urls, self.identity.context)

    def _api_client(self, token: str | None) -> ApiClient:
        """A client for the API URL (joining, finding the node ports again)."""
        verify = None
        if self.options.server_ca is not None:
            import ssl

            verify = ssl.create_default_context(cafile=str(self.options.server_ca))
        return ApiClient(self.options.server, token, verify=verify)

    async def _join(self) -> str:
        token = self.options.join_token
        if not token:
            raise CredentialError(
                f"node {self.node_id} has no credential ({self.credential_path}) and no join "
                "token to get one: start it with --join-token-file (a cluster admin creates "
                "one with `aether tokens join`)"
            )
        delay = 0.2
        async with self._api_client(token) as joiner:
            while True:
                try:
                    joined = await joiner.join(self.node_id, self.identity.request())
                    break
                except ForbiddenError as exc:
                    raise CredentialError(f"node {self.node_id} may not join: {exc}") from None
                except UnauthorizedError as exc:
                    if exc.code == "join_token_used":  # single-use, already used: final
                        raise CredentialError(f"node {self.node_id} may not join: {exc}") from None
                    log.error("the server refused the join token (%s); retrying", exc)
                    await asyncio.sleep(5)
                except AetherError as exc:
                    log.info("cannot join yet (%s); retrying", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5)
        self.identity.take(joined.certificate, joined.authorities, joined.node_urls)
        path = self.credential_path
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(joined.credential + "\n")
        os.replace(tmp, path)
        log.info(
            "node %s joined: credential in %s, certificate until %s; calling %s",
            self.node_id,
            path,
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(joined.not_after)),
            ", ".join(joined.node_urls),
        )
        return joined.credential

    async def _credential_refused(self, exc: UnauthorizedError) -> None:
        """A 401 on the node's own credential: join again (an admin's revocation stops it)."""
        log.error(
            "this node's credential was revoked or is unknown to the server (%s); "
            "joining again with the join token",
            exc,
        )
        self.credential_path.unlink(missing_ok=True)
        self.client.use_token(await self._join())
        assert self.identity.context is not None
        self.client.use_identity(self.identity.node_urls, self.identity.context)

    async def _renew(self) -> None:
        """Renew the certificate two-thirds through its life, or when told a new CA."""
        while True:
            wait = max(0.0, self.identity.renew_at() - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.renew_now.wait(), wait)
            self.renew_now.clear()
            try:
                issued = await self.client.renew_certificate(self.node_id, self.identity.request())
            except AetherError as exc:
                log.warning("renewing this node's certificate failed (%s); retrying", exc)
                await asyncio.sleep(5)
                continue
            context = self.identity.take(issued.certificate, issued.authorities)
            self.client.use_identity(self.identity.node_urls, context)
            log.info(
                "node %s renewed its certificate (until %s)",
                self.node_id,
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(issued.not_after)),
            )

    async def _find_servers(self) -> None:
        """No node port answered: ask the API URL where they are now (a server restarted
        on another port)."""
        try:
            async with self._api_client(None) as api:
                trust = await api.cluster_trust()
        except AetherError as exc:
            log.debug("asking %s for the node ports failed (%s)", self.options.server, exc)
            return
        if trust.node_urls and tuple(trust.node_urls) != self.identity.node_urls:
            context = self.identity.take(
                self.identity.certificate, list(self.identity.authorities), trust.node_urls
            )
            self.client.use_identity(self.identity.node_urls, context)
            log.info("the servers' node ports are now %s", ", ".join(trust.node_urls))

    async def run(self) -> None:
        try:
            await self.ensure_credential()
        except BaseException:
            await self.client.close()
            raise
        diag_log.install()  # the recent log lines, for a diagnostics bundle
        await self.router.start()
        log.info("node %s: router on %s", self.node_id, self.router_url)
        print(f"aether node {self.node_id}: router on {self.router_url}", flush=True)
        renewal = asyncio.create_task(self._renew(), name="certificate")
        reconciler = asyncio.create_task(self._reconcile_loop(), name="reconcile")
        shipper = asyncio.create_task(self.shipper.run(), name="logs")
        worker = asyncio.create_task(self.tasks.run(), name="tasks")
        telemetry = asyncio.create_task(self.telemetry.run(), name="telemetry")
        routes = asyncio.create_task(self._send_routes(), name="routes")
        try:
            while True:
                await self._register()
                self.lease_lost.clear()
                session = [
                    asyncio.create_task(self._heartbeat(), name="heartbeat"),
                    asyncio.create_task(self._follow(), name="assignments"),
                ]
                await self.lease_lost.wait()
                for runner in self.runners.values():
                    if runner.state_dir is not None:
                        self._fence(runner)
                for task in session:
                    task.cancel()
                await asyncio.gather(*session, return_exceptions=True)
                log.warning("node %s lost its lease; registering again", self.node_id)
        finally:
            renewal.cancel()
            reconciler.cancel()
            shipper.cancel()
            worker.cancel()
            telemetry.cancel()
            routes.cancel()
            await self.shutdown()

    async def shutdown(self) -> None:
        for runner in list(self.runners.values()):
            await runner.cancel()
            await runner.last_checkpoint()  # a stateful one's state since its last one
            await runner.remove()
        await self.slice_push.close()
        await self.telemetry.close()  # its connections to slice instances
        await self.router.stop()
        await self.client.close()

    async def _register(self) -> None:
        process = self.drivers.get("process")
        caps = await asyncio.to_thread(
            functools.partial(
                fingerprint,
                sorted(self.drivers),
                self.options.labels,
                list(self.sandboxes),
                isolation=self.isolation,
                isolation_detail=self.isolation_detail,
                limits=dict(process.limits) if process is not None else {},
            )
        )
        self.capabilities = caps
        body = RegisterIn(
            id=self.node_id, capabilities=caps, router_url=self.router_url, version=__version__
        )
        delay = 0.2
        while True:
            try:
                sent, sent_wall = time.monotonic(), time.time()
                self.registration = await self.client.register(body)
                self._lease_acked(sent, sent_wall)  # a new lease: fenced runners stay fenced
                break
            except UnauthorizedError as exc:
                await self._credential_refused(exc)
            except AetherError as exc:
                log.info("cannot register yet (%s); retrying", exc)
                if exc.status == 0 or exc.status >= 500:
                    await self._find_servers()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)
        self.config.drain_grace = self.registration.drain_grace
        # CRIU checkpoints only where the server switched them on (criu check passed, policy)
        self.config.criu = self.registration.config.features.get("criu", False)
        for runner in self.runners.values():
            runner.needs_report = True  # endpoints were on the old lease: publish them again
        self.routes_changed.set()  # so was what the router said
        self.changed.set()
        log.info("registered as %s (lease %d)", self.node_id, self.registration.lease_id)
        skew = skew_warning(__version__, self.registration.server_version)
        if skew is not None:
            log.warning("%s", skew)

    async def _heartbeat(self) -> None:
        assert self.registration is not None
        reg = self.registration
        while True:
            await asyncio.sleep(reg.heartbeat_interval)
            try:
                sent, sent_wall = time.monotonic(), time.time()
                answer = await self.client.heartbeat(self.node_id, reg.lease_id)
                self._lease_acked(sent, sent_wall)
                if set(answer.authorities) - set(self.identity.fingerprints()):
                    self.renew_now.set()  # a new CA: renew from it before the old retires
                if answer.diag:
                    self._send_diag(answer.diag)
                self._unfence()
            except (NotFoundError, UnauthorizedError):  # registering again says which
                self.lease_lost.set()
                return
            except ValueError as exc:  # an answer this node cannot read: too new?
                log.error("heartbeat answer: %s", exc)
            except AetherError as exc:
                log.debug("heartbeat failed (%s); retrying", exc)
                if exc.status == 0 or exc.status >= 500:  # no node port answered: moved?
                    await self._find_servers()

    def _send_diag(self, request: dict[str, Any]) -> None:
        """A diagnostics bundle asks for this node's part: send it once, in the background."""
        if request.get("id") in self.diag_sent:
            return
        self.diag_sent.add(str(request.get("id")))
        secrets = [self.options.join_token or ""]
        with contextlib.suppress(OSError):
            secrets.append(self.credential_path.read_text().strip())
        part = diag.send_part(
            self.client, self.node_id, request, self.options, self.capabilities, secrets
        )
        task = asyncio.create_task(part, name="diag")
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _follow(self) -> None:
        """Keep ``assigned`` and ``endpoints`` in step with the server, resuming by revision."""
        delay = 0.2
        while True:
            try:
                async for message in self.client.assignments(self.node_id, self.revision):
                    delay = 0.2
                    self._apply(message)
            except (NotFoundError, UnauthorizedError):
                self.lease_lost.set()
                return
            except AetherError as exc:
                log.debug("assignment stream ended (%s); resuming from %d", exc, self.revision)
            except ValueError as exc:  # a line or record this node cannot read: too new?
                log.error("assignment stream: %s", exc)
                delay = 2
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2)

    def _apply(self, message: dict[str, Any]) -> None:
        if message.get(VERSION_FIELD, 1) != AssignmentLine.SCHEMA_VERSION:  # older or newer
            message = upcast_to("assignment", message, AssignmentLine.SCHEMA_VERSION)
        kind = message["type"]
        if kind == "ping":
            return
        if kind == "resync":
            self.revision = 0
            return
        if kind == "snapshot":
            self.assigned = {}
            for value in message["instances"]:
                record = InstanceRecord.model_validate(value)
                self.assigned[record.key] = record
            self.endpoints = {}
            for value in message["endpoints"]:
                ep = Endpoint.model_validate(value)
                self.endpoints[f"endpoints/{ep.app}/{ep.entry}/{ep.node}:{ep.n}"] = ep
            apps = message.get("apps")  # a server without it: the router cannot tell 404
            self.apps = None if apps is None else set(apps)
            placements = (AgentPlacement.model_validate(v) for v in message.get("agents", []))
            self.agents = {f"agents/{p.agent_id}": p for p in placements}
            self.revision = int(message["revision"]) + 1
            self.sweep_due = not self.swept
            self.routes_changed.set()
        else:
            key: str = message["key"]
            if key.startswith("instances/"):
                if kind == "PUT":
                    self.assigned[key] = InstanceRecord.model_validate(message["value"])
                else:
                    self.assigned.pop(key, None)
            elif key.startswith("endpoints/"):
                if kind == "PUT":
                    self.endpoints[key] = Endpoint.model_validate(message["value"])
                else:
                    self.endpoints.pop(key, None)
            elif key.startswith("agents/"):
                if kind == "PUT":
                    self.agents[key] = AgentPlacement.model_validate(message["value"])
                else:
                    self.agents.pop(key, None)
            elif key.startswith("blueprints/") and self.apps is not None:
                name = key.removeprefix("blueprints/")
                if kind == "PUT":
                    self.apps.add(name)
                else:
                    self.apps.discard(name)
            self.revision = int(message["revision"]) + 1
        self.router.update(self.endpoints.values(), self.apps)
        self.router.update_agents(self.agents.values())
        if kind == "snapshot" or message["key"].startswith("endpoints/"):
            self.slice_tables = slice_tables(self.endpoints.values())
            self.push_endpoints()
        self.changed.set()

    async def _send_routes(self) -> None:
        """Tell the server what the router applied, each time that matters (coalesced)."""
        while True:
            await self.routes_changed.wait()
            self.routes_changed.clear()
            if self.revision == 0 or self.registration is None:
                continue  # nothing applied yet; the first snapshot sets it again
            try:
                await self.client.put_routes(
                    self.node_id, self.revision - 1, self.router.withdrawn_in_flight()
                )
            except AetherError as exc:  # away, or the lease is being replaced: again soon
                log.debug("could not send the router's state (%s); retrying", exc)
                await asyncio.sleep(0.5)
                self.routes_changed.set()

    def _kick(self) -> None:
        self.changed.set()

    async def _reconcile_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.changed.wait()
            self.changed.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("node reconcile pass failed")

    async def sweep(self) -> None:
        """Once per start, after the first snapshot: remove what no assignment holds.

        Runs before the reconcile pass that starts any runner, so nothing it
        removes is in use (``node.cleanup``).
        """
        self.sweep_due, self.swept = False, True
        held = [*self.assigned.values(), *(r.record for r in self.runners.values())]
        stored = self.config.requests.snapshots()
        try:
            result = await asyncio.to_thread(sweep, self.options.data_dir, held, stored)
        except Exception:
            log.exception("removing stale instance directories failed")
            return
        for name in result.kept:  # a stateful instance's state the server may not have
            root = self.options.data_dir / "instances" / name
            try:
                await store_stale_orphan(self.client, root, stored)
            except Exception:
                log.exception("keeping the state of %s failed", root)

    async def reconcile(self) -> None:
        if self.sweep_due:
            await self.sweep()
        for key, record in self.assigned.items():
            runner = self.runners.get(key)
            if runner is None or runner.gone:
                driver = self.drivers.get(record.spec.driver)
                if driver is None:
                    continue
                runner = InstanceRunner(
                    record, self.client, driver, self.config, self._kick, self.shipper.flush
                )
                self.runners[key] = runner
            runner.record = record
            runner.step()
        for key in [k for k in self.runners if k not in self.assigned]:
            runner = self.runners.pop(key)
            if runner.state_dir is not None and not self.lease_fresh():
                self._fence(runner)  # when it last could take writes, for its orphan
            await runner.cancel()
            await runner.let_go()  # a stateful one's newer state is kept (node.orphans)
        for key in [k for k, r in self.runners.items() if r.gone and not r.busy]:
            del self.runners[key]
        self.push_endpoints()

    def slice_controls(self) -> dict[str, SliceControl]:
        """This node's ACTIVE slice instances (instance key → how to call them)."""
        controls = {key: runner.slice_control for key, runner in self.runners.items()}
        return {key: control for key, control in controls.items() if control is not None}

    def push_endpoints(self) -> None:
        """``$endpoints`` to each ACTIVE slice instance whose tenant's table it lacks."""
        self.slice_push.sync(self.slice_controls(), self.slice_tables)
