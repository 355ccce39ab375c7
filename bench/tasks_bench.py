"""Tasks and sandboxes: Aether against Celery and rq, and bwrap sandbox creation.

    .venv/bin/python -m bench.tasks_bench [aether|celery|rq|create|all] [--tasks N] ...

- ``aether``: a real ``aether server`` and ``aether node`` (tests/support/cluster.py),
  4 bwrap sandboxes created first, then N ``vm:execute echo i`` tasks submitted
  over the HTTP API (an httpx.AsyncClient, 64 submits in flight); also ``--nodes 2``.
- ``celery``: a real ``redis-server`` and ``celery worker --pool prefork
  --concurrency 8``; the task runs ``subprocess.run(["echo", i])``.
- ``rq``: the same Redis, 8 ``rq worker`` processes, the same job.
- ``create``: ``BwrapDriver().create`` in-process (100 times) and 200
  ``vm:create`` → ``vm:execute echo`` → ``vm:delete`` cycles through a cluster.
- ``all``: everything in one run, with the Aether / Celery / rq ratios; those
  three run ``--rounds`` times (default 3) interleaved and the median round is
  kept. Every part first waits (up to 90 s) for the machine to be idle and
  records how busy it was (``machine_busy_before``).

Latency is submit-to-result, from each system's own timestamps (one machine, one
clock): Aether's ``created_at`` → ``finished_at`` of the task (both stamped by the
server), and for every system the client's submit call → the moment the result is
stored (Aether ``finished_at``, Celery ``date_done``, rq ``ended_at``). Throughput
is N / (last result stored - first submit call). Figures go to
bench/results/tasks.json (each section keeps the run it came from).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from aether.ports import free_port
from bench.common import REPO, RESULTS, percentile, wait_until_quiet, write_result
from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

RESULT_NAME = "tasks"
CELERY_QUEUE = "bench"
RQ_QUEUE = "bench"
RQ_JOB = "subprocess.run"  # nothing of this module to import in each forked job
WORKERS = 8  # Celery prefork processes, rq workers; the node runs 8 tasks at once
SUBMIT_IN_FLIGHT = 64
BATCH = 100  # tasks per POST /tasks:batch in the batched-submit burst
WARMUP = 40
SERIAL = 50
POLL = 0.01  # seconds between GETs of one task awaited alone (each GET costs the server ~4 ms)
FINAL = ("succeeded", "failed", "dead", "cancelled")


# -- the Celery app (its worker imports this module once, before forking) --------

_celery: Any = None


def celery_app() -> Any:
    """The Celery app; its broker and result backend are ``BENCH_REDIS_URL``."""
    global _celery
    if _celery is None:
        from celery import Celery  # type: ignore[import-untyped]

        url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
        app = Celery("bench_tasks", broker=url, backend=url)
        app.conf.update(
            task_default_queue=CELERY_QUEUE,
            broker_connection_retry_on_startup=True,
            worker_hijack_root_logger=False,
            result_expires=3600,
        )

        @app.task(name="bench.echo")  # type: ignore[untyped-decorator]
        def echo(i: str) -> str:
            return subprocess.run(["echo", i], capture_output=True, text=True, check=True).stdout

        _celery = app
    return _celery


def __getattr__(name: str) -> Any:
    """``celery -A bench.tasks_bench:app`` builds the app only in processes that use it."""
    if name == "app":
        return celery_app()
    raise AttributeError(name)


# -- statistics --------------------------------------------------------------------


def _ms(values: list[float]) -> dict[str, float]:
    """Percentiles of durations in seconds, in milliseconds."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50) * 1000, 2),
        "p95": round(percentile(values, 95) * 1000, 2),
        "p99": round(percentile(values, 99) * 1000, 2),
        "mean": round(statistics.fmean(values) * 1000, 2),
        "min": round(min(values) * 1000, 2),
        "max": round(max(values) * 1000, 2),
    }


def _epoch(stamp: str | datetime) -> float:
    """Epoch seconds of an ISO timestamp or datetime; naive ones are UTC."""
    dt = datetime.fromisoformat(stamp.replace("Z", "+00:00")) if isinstance(stamp, str) else stamp
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


@dataclass
class Burst:
    """One batch of jobs: when each was submitted (client) and its result stored."""

    submitted: dict[str, float] = field(default_factory=dict)  # id -> client submit call
    stored: dict[str, float] = field(default_factory=dict)  # id -> result stored
    accepted: dict[str, float] = field(default_factory=dict)  # id -> server created_at
    ok: int = 0
    by_node: dict[str, int] = field(default_factory=dict)  # Aether: tasks run per node
    bad: list[str] = field(default_factory=list)
    cpu_ms_per_task: dict[str, float] = field(default_factory=dict)
    submit_seconds: float = 0.0  # the whole submission phase, client side
    wall_seconds: float = 0.0  # first submit to all results seen, client side

    def figures(self) -> dict[str, Any]:
        ids = [i for i in self.submitted if i in self.stored]
        latency = [self.stored[i] - self.submitted[i] for i in ids]
        span = max(self.stored[i] for i in ids) - min(self.submitted.values()) if ids else 0
        out: dict[str, Any] = {
            "tasks": len(self.submitted),
            "succeeded": self.ok,
            "failed": len(self.bad),
            "failures_sample": self.bad[:5],
            "throughput_per_s": round(len(ids) / span, 1) if span else None,
            "makespan_s": round(span, 3),
            "latency_ms": _ms(latency),
            "submit_phase_s": round(self.submit_seconds, 3),
            "submits_per_s": round(len(self.submitted) / self.submit_seconds, 1)
            if self.submit_seconds
            else None,
            "client_wall_s": round(self.wall_seconds, 3),
        }
        if self.by_node:
            out["tasks_by_node"] = self.by_node
        if self.cpu_ms_per_task:
            out["cpu_ms_per_task"] = self.cpu_ms_per_task
        if self.accepted:
            out["server_latency_ms"] = _ms([self.stored[i] - self.accepted[i] for i in ids])
        return out


# -- processes ----------------------------------------------------------------------


def _spawn(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            start_new_session=True,
        )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@contextlib.contextmanager
def redis_server(root: Path) -> Iterator[str]:
    """A real ``redis-server`` (its default persistence) on a free loopback port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is needed: apt-get install redis-server")
    port = free_port()
    data = root / "redis"
    data.mkdir()
    proc = _spawn(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)],
        root / "redis.log",
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis

        client = redis.Redis.from_url(url)
        wait_for(lambda: client.ping(), 20, "redis-server")
        yield url
    finally:
        _stop([proc])


def _version(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else "?"


# -- Aether ---------------------------------------------------------------------------


class AetherApi:
    """The task API over one httpx.AsyncClient with the admin token."""

    def __init__(self, cluster: Cluster) -> None:
        self.http = httpx.AsyncClient(
            base_url=f"{cluster.api}/api/v1",
            headers={"Authorization": f"Bearer {cluster.admin_token}"},
            timeout=60,
            limits=httpx.Limits(max_connections=SUBMIT_IN_FLIGHT + 8),
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def submit(self, type: str, payload: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.post("/tasks", json={"type": type, "payload": payload})
        response.raise_for_status()
        task: dict[str, Any] = response.json()
        return task

    async def submit_batch(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        response = await self.http.post("/tasks:batch", json={"tasks": bodies})
        response.raise_for_status()
        tasks: list[dict[str, Any]] = response.json()["tasks"]
        return tasks

    async def get(self, task_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/tasks/{task_id}")
        response.raise_for_status()
        task: dict[str, Any] = response.json()
        return task

    async def list(self, **params: Any) -> list[dict[str, Any]]:
        response = await self.http.get("/tasks", params=params)
        response.raise_for_status()
        tasks: list[dict[str, Any]] = response.json()
        return tasks

    async def wait(self, task_id: str, interval: float, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            task = await self.get(task_id)
            if task["state"] in FINAL:
                return task
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} still {task['state']} after {timeout}s")
            await asyncio.sleep(interval)


def _cluster(root: Path) -> Cluster:
    # sandboxes under a root other uids can traverse: a root node then runs bwrap
    # as the sandbox's own unprivileged uid (the production path, with RLIMIT_NPROC)
    os.chmod(root, 0o711)
    cluster = Cluster(root)
    cluster.env.pop("AETHER_TASK_LEASE", None)  # the server's default (15 s)
    # 2,000 submits in seconds are over the default per-tenant rate (1,000 a minute,
    # bursts of 200): raised, as an operator would for bulk work (a POST /tasks:batch
    # counts as one request, so the batched burst would not need it)
    cluster.env["AETHER_RATE_LIMIT_PER_MINUTE"] = "10000000"
    cluster.env["AETHER_RATE_LIMIT_BURST"] = "1000000"
    return cluster


async def _sandboxes(api: AetherApi, nodes: list[str], count: int) -> list[str]:
    """``count`` bwrap sandboxes spread evenly over ``nodes`` (vm:create lands anywhere)."""
    per_node = max(1, count // len(nodes))
    held: dict[str, list[str]] = {n: [] for n in nodes}
    for _ in range(10):
        created = await asyncio.gather(
            *(api.submit("vm:create", {"name": f"bench-{uuid.uuid4().hex[:6]}"}) for _ in nodes)
            if len(nodes) > 1
            else (api.submit("vm:create", {"name": f"bench-{i}"}) for i in range(count))
        )
        for task in await asyncio.gather(*(api.wait(t["id"], 0.02) for t in created)):
            result = task["result"] or {}
            if task["state"] != "succeeded" or result.get("driver") != "bwrap":
                raise RuntimeError(f"vm:create did not give a bwrap sandbox: {task}")
            held[result["node"]].append(result["vm_id"])
        if all(len(v) >= per_node for v in held.values()):
            break
    picked = [vm for vms in held.values() for vm in vms[:per_node]]
    if len(picked) < count:
        raise RuntimeError(f"could not spread {count} sandboxes over {nodes}: {held}")
    return picked


def _echo(vms: list[str], i: int) -> dict[str, Any]:
    return {"vm_id": vms[i % len(vms)], "command": "echo", "args": [str(i)]}


async def _aether_burst(api: AetherApi, vms: list[str], n: int, batch: int = 0) -> Burst:
    """Submit ``n`` echo tasks (64 in flight, or ``batch`` per ``POST /tasks:batch`` one
    batch at a time); wait for all by polling the list in batches."""
    burst = Burst()
    gate = asyncio.Semaphore(SUBMIT_IN_FLIGHT)

    async def one(i: int) -> None:
        async with gate:
            start = time.time()
            task = await api.submit("vm:execute", _echo(vms, i))
        burst.submitted[task["id"]] = start
        burst.accepted[task["id"]] = _epoch(task["created_at"])

    first = time.time()
    if batch:
        for lo in range(0, n, batch):
            start = time.time()
            bodies = [
                {"type": "vm:execute", "payload": _echo(vms, i)}
                for i in range(lo, min(lo + batch, n))
            ]
            for task in await api.submit_batch(bodies):
                burst.submitted[task["id"]] = start
                burst.accepted[task["id"]] = _epoch(task["created_at"])
    else:
        await asyncio.gather(*(one(i) for i in range(n)))
    burst.submit_seconds = time.time() - first

    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 600
    stalled_since = time.monotonic()
    while len(seen) < n:
        await asyncio.sleep(1.0)  # one list query a second (~30 ms of server time)
        before = len(seen)
        for task in await api.list(state="succeeded", type="vm:execute", limit=500):
            if task["id"] in burst.submitted:
                seen[task["id"]] = task
        if len(seen) > before:
            stalled_since = time.monotonic()
        elif time.monotonic() - stalled_since > 5:
            # failed, or fell out of the newest 500 before a poll saw it: ask each
            missing = [i for i in burst.submitted if i not in seen]
            for task in await asyncio.gather(*(api.get(i) for i in missing[:200])):
                if task["state"] in FINAL:
                    seen[task["id"]] = task
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n - len(seen)} of {n} tasks unfinished after 600 s")
    burst.wall_seconds = time.time() - first
    for task_id, task in seen.items():
        burst.stored[task_id] = _epoch(task["finished_at"])
        burst.by_node[task["claimed_by"]] = burst.by_node.get(task["claimed_by"], 0) + 1
        result = task.get("result") or {}
        if (
            task["state"] == "succeeded"
            and result.get("exit_code") == 0
            and result.get("stdout") == f"{task['payload']['args'][0]}\n"
        ):
            burst.ok += 1
        else:
            burst.bad.append(f"{task['state']}: {task.get('error') or result}")
    return burst


async def _aether_serial(api: AetherApi, vm: str, n: int) -> dict[str, Any]:
    """One task in flight at a time: latency without queueing."""
    client: list[float] = []
    server: list[float] = []
    for i in range(n):
        start = time.time()
        task = await api.submit("vm:execute", {"vm_id": vm, "command": "echo", "args": [str(i)]})
        done = await api.wait(task["id"], POLL)
        assert done["state"] == "succeeded", done
        client.append(_epoch(done["finished_at"]) - start)
        server.append(_epoch(done["finished_at"]) - _epoch(done["created_at"]))
    return {"latency_ms": _ms(client), "server_latency_ms": _ms(server)}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _node_pids(cluster: Cluster, nodes: list[str]) -> list[int]:
    return [cluster.nodes[n].pid for n in nodes]


async def _aether_run(
    cluster: Cluster, nodes: list[str], tasks: int, sandboxes: int
) -> dict[str, Any]:
    api = AetherApi(cluster)
    assert cluster.server is not None
    server_pid, node_pids = cluster.server.pid, _node_pids(cluster, nodes)

    def cpu() -> tuple[float, float]:
        return _cpu_seconds(server_pid), sum(_cpu_seconds(p) for p in node_pids)

    async def burst_with_cpu(batch: int = 0) -> Burst:
        server0, node0 = cpu()
        burst = await _aether_burst(api, vms, tasks, batch)
        server1, node1 = cpu()
        burst.cpu_ms_per_task = {
            "server": round((server1 - server0) * 1000 / tasks, 2),
            "nodes (bwrap children not counted)": round((node1 - node0) * 1000 / tasks, 2),
        }
        return burst

    try:
        vms = await _sandboxes(api, nodes, sandboxes)
        await _aether_burst(api, vms, WARMUP)  # warm: imports, connections, caches
        burst = await burst_with_cpu()
        batched = await burst_with_cpu(BATCH)
        serial = await _aether_serial(api, vms[0], SERIAL)
    finally:
        await api.close()
    unprivileged = not any(
        "mapped to root" in (cluster.root / f"{n}.log").read_text(errors="replace") for n in nodes
    )
    return {
        "nodes": len(nodes),
        "sandboxes": len(vms),
        "node_task_concurrency": 8,
        "bwrap_as_unprivileged_uid": unprivileged,
        "burst": burst.figures(),
        "burst_batched_submit": batched.figures(),
        "serial": serial,
    }


def bench_aether(
    tasks: int, nodes: int = 1, sandboxes: int = 4, queue_url: str | None = None
) -> dict[str, Any]:
    """The burst on one server; ``queue_url``: the Redis task queue backend (else SQL)."""
    with tempfile.TemporaryDirectory() as tmp:
        cluster = _cluster(Path(tmp))
        if queue_url:
            cluster.env["AETHER_QUEUE_URL"] = queue_url
        try:
            cluster.start_server()
            names = [f"n{i + 1}" for i in range(nodes)]
            for name in names:
                cluster.start_node(name)
            data: dict[str, Any] = asyncio.run(_aether_run(cluster, names, tasks, sandboxes))
        except BaseException:
            print(cluster.logs(), file=sys.stderr)
            raise
        finally:
            cluster.stop()
    data["what"] = (
        f"{tasks} vm:execute `echo i` on {sandboxes} existing bwrap sandboxes, "
        f"{nodes} node(s), submitted over HTTP with {SUBMIT_IN_FLIGHT} submits in flight "
        f"(burst_batched_submit: {BATCH} per POST /tasks:batch); "
        f"queue backend {'redis' if queue_url else 'sql'}"
    )
    _show(f"aether ({nodes} node{'s' if nodes > 1 else ''})", data["burst"])
    return data


# -- Celery --------------------------------------------------------------------------------


def _celery_burst(app: Any, n: int) -> Burst:
    burst = Burst()
    first = time.time()
    for i in range(n):
        start = time.time()
        result = app.send_task("bench.echo", args=[str(i)], queue=CELERY_QUEUE)
        burst.submitted[result.id] = start
    burst.submit_seconds = time.time() - first
    expected = {task_id: k for k, task_id in enumerate(burst.submitted)}
    for task_id, meta in app.backend.get_many(set(burst.submitted), timeout=600, interval=0.2):
        burst.stored[task_id] = _epoch(meta["date_done"])
        if meta["status"] == "SUCCESS" and meta["result"] == f"{expected[task_id]}\n":
            burst.ok += 1
        else:
            burst.bad.append(f"{meta['status']}: {meta.get('result')}")
    burst.wall_seconds = time.time() - first
    return burst


def _celery_serial(app: Any, n: int) -> dict[str, Any]:
    latency: list[float] = []
    for i in range(n):
        start = time.time()
        result = app.send_task("bench.echo", args=[str(i)], queue=CELERY_QUEUE)
        assert result.get(timeout=60) == f"{i}\n"
        latency.append(_epoch(app.backend.get_task_meta(result.id)["date_done"]) - start)
    return {"latency_ms": _ms(latency)}


def bench_celery(tasks: int, redis_url: str, root: Path) -> dict[str, Any]:
    env = {**os.environ, "BENCH_REDIS_URL": redis_url}
    os.environ["BENCH_REDIS_URL"] = redis_url
    celery = str(Path(sys.executable).with_name("celery"))
    worker = _spawn(
        [
            celery,
            "-A",
            "bench.tasks_bench:app",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(WORKERS),
            "-Q",
            CELERY_QUEUE,
            "--loglevel",
            "WARNING",
            "--hostname",
            f"bench-{uuid.uuid4().hex[:6]}@%h",
        ],
        root / "celery.log",
        env,
    )
    try:
        app = celery_app()
        _celery_burst(app, WARMUP)  # waits for the worker to be up, warms its processes
        burst = _celery_burst(app, tasks)
        serial = _celery_serial(app, SERIAL)
    except BaseException:
        print((root / "celery.log").read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        _stop([worker])
    data: dict[str, Any] = {
        "what": f"{tasks} Celery tasks running subprocess.run(['echo', i]); Redis broker and "
        f"result backend; celery worker --pool prefork --concurrency {WORKERS}",
        "version": _version([celery, "--version"]),
        "burst": burst.figures(),
        "serial": serial,
    }
    _show("celery", data["burst"])
    return data


# -- rq ---------------------------------------------------------------------------------------


def _rq_enqueue(queue: Any, i: int) -> Any:
    """The job is ``subprocess.run(["echo", i], capture_output=True, text=True, check=True)``."""
    return queue.enqueue(
        RQ_JOB, ["echo", str(i)], capture_output=True, text=True, check=True, result_ttl=3600
    )


def _rq_burst(queue: Any, connection: Any, n: int) -> Burst:
    from rq.job import Job, JobStatus

    burst = Burst()
    expected: dict[str, int] = {}
    first = time.time()
    for i in range(n):
        start = time.time()
        job = _rq_enqueue(queue, i)
        burst.submitted[job.id] = start
        expected[job.id] = i
    burst.submit_seconds = time.time() - first
    pending = set(burst.submitted)
    deadline = time.monotonic() + 600
    while pending:
        time.sleep(0.2)
        ids = list(pending)
        for job in Job.fetch_many(ids, connection=connection):
            if job is None:
                continue
            status = job.get_status(refresh=False)
            if status == JobStatus.FINISHED:
                value = getattr(job.return_value(), "stdout", None)
                if value == f"{expected[job.id]}\n":
                    burst.ok += 1
                else:
                    burst.bad.append(f"finished: {value!r}")
            elif status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
                burst.bad.append(f"{status}: {job.exc_info}")
            else:
                continue
            burst.stored[job.id] = _epoch(job.ended_at or datetime.now(UTC))
            pending.discard(job.id)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} rq jobs unfinished after 600 s")
    burst.wall_seconds = time.time() - first
    return burst


def _rq_serial(queue: Any, n: int) -> dict[str, Any]:
    from rq.job import JobStatus

    latency: list[float] = []
    for i in range(n):
        start = time.time()
        job = _rq_enqueue(queue, i)
        while job.get_status(refresh=True) not in (JobStatus.FINISHED, JobStatus.FAILED):
            time.sleep(0.005)
        job.refresh()
        assert job.return_value().stdout == f"{i}\n"
        latency.append(_epoch(job.ended_at) - start)
    return {"latency_ms": _ms(latency)}


def bench_rq(tasks: int, redis_url: str, root: Path) -> dict[str, Any]:
    import redis
    from rq import Queue

    rq = str(Path(sys.executable).with_name("rq"))
    workers = [
        _spawn(
            [rq, "worker", "--url", redis_url, "--path", str(REPO), "-q", RQ_QUEUE],
            root / f"rq-{k}.log",
        )
        for k in range(WORKERS)
    ]
    try:
        connection = redis.Redis.from_url(redis_url)
        queue = Queue(RQ_QUEUE, connection=connection)
        _rq_burst(queue, connection, WARMUP)
        burst = _rq_burst(queue, connection, tasks)
        serial = _rq_serial(queue, SERIAL)
    except BaseException:
        print((root / "rq-0.log").read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        _stop(workers)
    data: dict[str, Any] = {
        "what": f"{tasks} rq jobs running subprocess.run(['echo', i]) (the job's function is "
        f"subprocess.run itself); {WORKERS} `rq worker` "
        "processes (default Worker: a forked work horse per job) on the same Redis",
        "version": _version([rq, "--version"]),
        "burst": burst.figures(),
        "serial": serial,
    }
    _show("rq", data["burst"])
    return data


# -- sandbox creation and cycles ------------------------------------------------------------


async def _driver_alone(root: Path, runs: int) -> dict[str, Any]:
    from aether.node.drivers.base import SandboxSpec
    from aether.node.drivers.bwrap import BwrapDriver

    os.chmod(root, 0o711)
    driver = BwrapDriver()
    first = time.perf_counter()
    warm = await driver.create(SandboxSpec(id="warm", name="warm", root=root / "warm"))
    cold = time.perf_counter() - first  # includes the probes: bwrap run as root and as a uid
    creates: list[float] = []
    handles = []
    for i in range(runs):
        spec = SandboxSpec(id=f"sb-{i}", name=f"sb-{i}", root=root / f"sb-{i}")
        start = time.perf_counter()
        handles.append(await driver.create(spec))
        creates.append(time.perf_counter() - start)
    execs: list[float] = []
    for i in range(runs):
        start = time.perf_counter()
        result = await driver.execute(handles[i % len(handles)], "echo", [str(i)], timeout=30)
        execs.append(time.perf_counter() - start)
        assert result.exit_code == 0 and result.stdout == f"{i}\n", result
    plain: list[float] = []
    for i in range(runs):
        start = time.perf_counter()
        subprocess.run(["echo", str(i)], capture_output=True, check=True)
        plain.append(time.perf_counter() - start)
    deletes: list[float] = []
    for handle in handles:
        start = time.perf_counter()
        await driver.delete(handle)
        deletes.append(time.perf_counter() - start)
    await driver.delete(warm)
    return {
        "what": f"BwrapDriver().create(SandboxSpec(...)) in-process, {runs} times "
        "(after one warm-up create, which runs the bwrap probes)",
        "host_uid": warm.extra.get("host_uid") is not None,
        "first_create_ms": round(cold * 1000, 2),
        "create_ms": _ms(creates),
        "execute_echo_ms": _ms(execs),
        "plain_subprocess_echo_ms": _ms(plain),
        "delete_ms": _ms(deletes),
    }


async def _cycle(api: AetherApi, k: int, poll: float) -> dict[str, float]:
    start = time.time()
    create = await api.wait(
        (await api.submit("vm:create", {"name": f"cycle-{k}"}))["id"], poll, 120
    )
    assert create["state"] == "succeeded", create
    created_seen = time.time()
    vm = create["result"]["vm_id"]
    assert create["result"]["driver"] == "bwrap", create
    run = await api.wait(
        (await api.submit("vm:execute", {"vm_id": vm, "command": "echo", "args": [str(k)]}))["id"],
        poll,
        120,
    )
    assert run["state"] == "succeeded" and run["result"]["stdout"] == f"{k}\n", run
    gone = await api.wait((await api.submit("vm:delete", {"vm_id": vm}))["id"], poll, 120)
    assert gone["state"] == "succeeded", gone
    end = time.time()

    def server(task: dict[str, Any]) -> float:
        return _epoch(task["finished_at"]) - _epoch(task["created_at"])

    return {
        "cycle": end - start,
        "cycle_server": _epoch(gone["finished_at"]) - start,
        "create_client": created_seen - start,
        "create": server(create),
        "execute": server(run),
        "delete": server(gone),
        "start": start,
        "end": _epoch(gone["finished_at"]),
    }


async def _cycles(cluster: Cluster, cycles: int, parallel: int) -> dict[str, Any]:
    api = AetherApi(cluster)
    try:
        for k in range(5):  # warm-up
            await _cycle(api, -1 - k, POLL)
        out: dict[str, Any] = {}
        for label, width in (("sequential", 1), (f"{parallel}_at_once", parallel)):
            runs: list[dict[str, float]] = []
            gate = asyncio.Semaphore(width)

            # one GET every 10 ms per cycle in flight would be polling, not cycling
            poll = POLL * width

            async def one(
                k: int, gate: asyncio.Semaphore = gate, poll: float = poll
            ) -> dict[str, float]:
                async with gate:
                    return await _cycle(api, k, poll)

            first = time.time()
            runs = await asyncio.gather(*(one(k) for k in range(cycles)))
            total = time.time() - first

            def col(key: str, runs: list[dict[str, float]] = runs) -> list[float]:
                return [r[key] for r in runs]

            out[label] = {
                "cycles": cycles,
                "in_flight": width,
                "poll_interval_ms": round(poll * 1000),
                "total_s": round(total, 3),
                "total_server_s": round(max(col("end")) - min(col("start")), 3),
                "cycles_per_s": round(cycles / (max(col("end")) - min(col("start"))), 2),
                "cycle_ms": _ms(col("cycle_server")),
                "cycle_client_ms": _ms(col("cycle")),
                "vm_create_ms": _ms(col("create")),
                "vm_create_client_ms": _ms(col("create_client")),
                "vm_execute_ms": _ms(col("execute")),
                "vm_delete_ms": _ms(col("delete")),
            }
            print(
                f"cycles {label}: {out[label]['total_server_s']} s total, cycle p50 "
                f"{out[label]['cycle_ms']['p50']} ms, vm:create p50 "
                f"{out[label]['vm_create_ms']['p50']} ms",
                file=sys.stderr,
            )
        return out
    finally:
        await api.close()


def bench_create(runs: int = 100, cycles: int = 200, parallel: int = 8) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        alone = asyncio.run(_driver_alone(Path(tmp), runs))
    print(f"driver create alone: {alone['create_ms']}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        cluster = _cluster(Path(tmp))
        try:
            cluster.start_server()
            cluster.start_node("n1")
            cycle_data = asyncio.run(_cycles(cluster, cycles, parallel))
        except BaseException:
            print(cluster.logs(), file=sys.stderr)
            raise
        finally:
            cluster.stop()
    return {
        "driver_alone": alone,
        "cycles": {
            "what": f"{cycles} cycles of vm:create -> vm:execute echo -> vm:delete through one "
            "node, each step submitted once the previous one succeeded (each task polled "
            "every 10 ms x cycles in flight); "
            "cycle_ms: first submit -> delete's finished_at; vm_*_ms: created_at -> "
            "finished_at of each task",
            **cycle_data,
        },
    }


# -- driver ------------------------------------------------------------------------------------


def _source() -> dict[str, Any]:
    """The commit measured, and whether src/ differed from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "src_modified": bool(git("status", "-s", "src"))}


def _show(name: str, burst: dict[str, Any]) -> None:
    lat = burst["latency_ms"]
    print(
        f"{name}: {burst['succeeded']}/{burst['tasks']} ok, {burst['throughput_per_s']} tasks/s, "
        f"latency p50 {lat.get('p50')} ms p99 {lat.get('p99')} ms",
        file=sys.stderr,
    )


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median throughput, with every round's headline figures."""
    ordered = sorted(rounds, key=lambda r: r["burst"]["throughput_per_s"] or 0)
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    if len(rounds) > 1:
        chosen["rounds"] = [
            {
                "throughput_per_s": r["burst"]["throughput_per_s"],
                "latency_p50_ms": r["burst"]["latency_ms"]["p50"],
                "latency_p99_ms": r["burst"]["latency_ms"]["p99"],
                "serial_p50_ms": r["serial"]["latency_ms"]["p50"],
                "machine_busy_before": r["machine_busy_before"],
            }
            for r in rounds
        ]
    return chosen


def _ratios(data: dict[str, Any]) -> dict[str, Any]:
    aether = data["aether"]["burst"]
    out: dict[str, Any] = {"run": data["aether"]["run"]}
    for other in ("celery", "rq"):
        theirs = data[other]["burst"]
        out[f"throughput_aether_over_{other}"] = round(
            aether["throughput_per_s"] / theirs["throughput_per_s"], 3
        )
        for variant, run in (("sql", data["aether"]), ("redis", data.get("aether_redis"))):
            for burst in ("burst", "burst_batched_submit"):
                if run is not None and burst in run:
                    out[f"throughput_aether_{variant}_{burst}_over_{other}"] = round(
                        run[burst]["throughput_per_s"] / theirs["throughput_per_s"], 3
                    )
        if "rounds" in data["aether"] and "rounds" in data[other]:
            out[f"throughput_aether_over_{other}_by_round"] = [
                round(a["throughput_per_s"] / b["throughput_per_s"], 3)
                for a, b in zip(data["aether"]["rounds"], data[other]["rounds"], strict=True)
            ]
        out[f"latency_ms_aether_vs_{other}"] = {
            q: [aether["latency_ms"][q], theirs["latency_ms"][q]] for q in ("p50", "p95", "p99")
        }
        out[f"serial_latency_ms_aether_vs_{other}"] = {
            q: [data["aether"]["serial"]["latency_ms"][q], data[other]["serial"]["latency_ms"][q]]
            for q in ("p50", "p99")
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tasks_bench", description=__doc__)
    parser.add_argument("what", choices=("aether", "celery", "rq", "create", "all"))
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--nodes", type=int, default=1, help="aether: 1, or 2 nodes")
    parser.add_argument("--runs", type=int, default=100, help="create: driver creates")
    parser.add_argument("--cycles", type=int, default=200, help="create: cycles")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="aether, celery and rq interleaved this many times; the median round is "
        "reported (default: 3 for all, else 1)",
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.what == "all" else 1)

    path = RESULTS / f"{RESULT_NAME}.json"
    data: dict[str, Any] = {}
    if path.exists():
        data = json.loads(path.read_text())
        for key in ("benchmark", "when", "machine", "source", "source_at_end"):
            data.pop(key, None)
    run = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    source = _source()
    wanted = [w for w in ("celery", "rq") if args.what in (w, "all")]
    for name in wanted:
        try:
            importlib.import_module(name)
        except ImportError:
            raise SystemExit(
                f"{name} is needed: .venv/bin/pip install -e '.[test,bench]'"
            ) from None

    def measured(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        # another tenant of this machine would skew every figure
        busy = wait_until_quiet(patience=90)
        return {**fn(), "run": run, "machine_busy_before": busy}

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        compared: dict[str, Callable[[], dict[str, Any]]] = {}
        url = ""
        if wanted or args.what in ("aether", "all"):
            url = stack.enter_context(redis_server(root))
            data["redis"] = {"version": _version(["redis-server", "--version"]), "run": run}
        if args.what in ("aether", "all"):
            key = "aether" if args.nodes == 1 else f"aether_{args.nodes}_nodes"
            compared[key] = lambda: bench_aether(args.tasks, args.nodes)
            # the Redis queue backend, on its own database of the same Redis
            compared[f"{key}_redis"] = lambda: bench_aether(
                args.tasks, args.nodes, queue_url=url.rsplit("/", 1)[0] + "/15"
            )
        if wanted:
            if "celery" in wanted:
                compared["celery"] = lambda: bench_celery(args.tasks, url, root)
            if "rq" in wanted:
                compared["rq"] = lambda: bench_rq(args.tasks, url, root)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in compared}
        for _ in range(rounds):  # interleaved: a slow spell of the machine hits all three
            for name, fn in compared.items():
                results[name].append(measured(fn))
        for name, done in results.items():
            data[name] = _median_round(done)
        if args.what == "all":
            data["aether_2_nodes"] = measured(lambda: bench_aether(args.tasks, 2))
        if args.what in ("create", "all"):
            data["create"] = measured(lambda: bench_create(args.runs, args.cycles))
    if all(k in data for k in ("aether", "celery", "rq")):
        same = {data[k]["run"] for k in ("aether", "celery", "rq")}
        if len(same) == 1:
            data["ratios"] = _ratios(data)
        else:
            data["ratios"] = {"note": "aether, celery and rq come from different runs: run `all`"}
    data["command"] = ".venv/bin/python -m bench.tasks_bench all"
    data["source"] = source
    if _source() != source:
        data["source_at_end"] = _source()  # the tree changed while this ran
    write_result(RESULT_NAME, data)


if __name__ == "__main__":
    main()
