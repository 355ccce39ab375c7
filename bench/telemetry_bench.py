"""Telemetry ingest: how many nodes one server sustains at one push per second.

    .venv/bin/python -m bench.telemetry_bench [--steps 500,1000,2000,3000,4000]
        [--workers 2] [--warmup 15] [--duration 20] [--client aiohttp|raw|both]
        [--transport plain|mtls|both]

A real ``aether server`` process (its own data directory, SQLite stores, the
default settings: it is the leader, so it also aggregates every second, feeds
the risk engine and the controller, and writes roll-ups every minute). For each
step N, ``--workers`` load-generator processes simulate N nodes between them:
each node pushes a realistic ``NodeMetrics`` (10 instances, 5 endpoints, ~2.6 kB
of JSON) once per second at its own phase with its own credential (each
simulated node joins once, before the first step, with the join token and a CSR
for a key of its own), like the node daemon (a late push is sent at once, then
the schedule continues). Two generators (``--client both``, the default):
``aiohttp`` sessions, and ``raw`` -- HTTP/1.1 written by hand on one keep-alive
connection per node, which costs the shared CPUs a third as much.

Two transports (``--transport both``, the default; a fresh server for each
client and transport, one after the other in the same run): ``mtls`` -- every
node calls the server's node port over mutual TLS with the certificate it got
at join (its own ``ssl`` context, so its own connection) and its credential, as
a real node does; ``plain`` -- a server started with ``AETHER_NODE_AUTH=credential``
takes the credential alone over plain HTTP on the API port (the legacy mode).
The keys (EC P-256, one per simulated node) are made once per run and kept in
the run's temporary directory for every server.

Per step: the achieved update rate (pushes answered 204 per second of the
measured window), the ingest latency as the node sees it (request sent →
response read: p50/p95/p99/max), how late the generators sent (their own
event-loop lag: when it grows, the generators were the limit), the server's own
time per push (``telemetry_ingest_duration_seconds``), the CPU used by the
server, by the generators and by anything else on the machine meanwhile, and
whether the leader's latest sample holds all N nodes fresh. Each step first
waits (up to ``--patience``, 60 s) for the machine to be idle. A step passes when the rate is
≥ 99 % of N with no errors and the p99 latency is under 100 ms. The result is
the largest passing N, per client and transport; the table at the end puts
plain and mTLS side by side with the mTLS/plain ratios of p50 and p99.

Everything shares one machine: with 2 cores the load generators take CPU the
server would otherwise have, so the figure is a lower bound for a server with
the machine to itself. Results: bench/results/telemetry.json (``--result-name``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from aether.ports import free_port
from aether.trust import ca, tls
from bench.common import REPO, machine_busy, percentile, wait_until_quiet, write_result
from tests.support.waiting import wait_for

RESULT_NAME = "telemetry"
TRANSPORTS = ("plain", "mtls")
AIM_NODES = 2000
P99_LIMIT_MS = 100.0
INSTANCES_PER_NODE = 10
ENDPOINTS_PER_NODE = 5


# -- the simulated node ------------------------------------------------------------------


def node_template(node: str, rng: random.Random) -> bytes:
    """A realistic push of ``node`` with ``%(ts)s`` and ``%(seq)d`` left to fill in."""
    apps = [f"app-{rng.randrange(200):03d}" for _ in range(ENDPOINTS_PER_NODE)]
    instances = [
        {
            "key": f"instances/{node}/{apps[i % len(apps)]}@3/{i}",
            "app": apps[i % len(apps)],
            "version": 3,
            "n": i,
            "cpu": round(rng.uniform(0.01, 0.9), 4),
            "rss_mb": round(rng.uniform(40, 900), 2),
            "restarts": rng.randrange(3),
        }
        for i in range(INSTANCES_PER_NODE)
    ]
    endpoints = [
        {
            "app": app,
            "calls": rng.randrange(500),
            "errors": rng.randrange(3),
            "total_ms": round(rng.uniform(100, 20_000), 3),
            "in_flight": rng.randrange(10),
        }
        for app in apps
    ]
    body = {
        "schema": 1,  # its version, as the node daemon writes it
        "node": node,
        "ts": "TS",
        "seq": "SEQ",
        "interval": 1.0,
        "cpu": round(rng.uniform(0.05, 0.95), 4),
        "memory_used_mb": round(rng.uniform(1000, 60_000), 1),
        "memory_total_mb": 65536.0,
        "disk_used_mb": round(rng.uniform(10_000, 400_000), 1),
        "disk_total_mb": 512_000.0,
        "net_rx_bytes": rng.randrange(10**12),
        "net_tx_bytes": rng.randrange(10**12),
        "instances": instances,
        "endpoints": endpoints,
    }
    return json.dumps(body).replace('"TS"', "%(ts)s").replace('"SEQ"', "%(seq)d").encode()


def node_contexts(identities: dict[str, Any], nodes: list[str]) -> dict[str, ssl.SSLContext]:
    """Each node's own client context (its certificate and key, the cluster's CAs) when
    ``identities`` are for the node port; none for plain HTTP."""
    if not identities.get("authorities"):
        return {}
    keys: dict[str, dict[str, str]] = identities["keys"]
    return {
        node: tls.client_context(
            identities["authorities"], identities["nodes"][node]["certificate"], keys[node]["key"]
        )
        for node in nodes
    }


async def _simulate(
    identities: dict[str, Any],
    nodes: list[str],
    start_at: float,
    warmup: float,
    duration: float,
    client: str = "aiohttp",
) -> dict[str, Any]:
    import aiohttp

    url: str = identities["url"]
    tokens = {node: identities["nodes"][node]["credential"] for node in nodes}
    contexts = node_contexts(identities, nodes)
    if contexts and time.time() > start_at:
        print(
            f"worker: the TLS contexts were ready {time.time() - start_at:.1f} s late "
            "(the warm-up absorbs it unless it is longer)",
            file=sys.stderr,
            flush=True,
        )
    rng = random.Random(hash(nodes[0]) if nodes else 0)
    templates = {node: node_template(node, rng).decode() for node in nodes}
    measure_from = start_at + warmup
    stop_at = measure_from + duration
    latencies: list[float] = []
    lateness: list[float] = []
    errors: dict[str, int] = {}
    slow: list[float] = []  # when in the second (wall clock) the slow pushes were sent
    sent = 0

    def record(begun: float, due: float, status: int | str, elapsed: float) -> None:
        """Count one push sent at ``begun`` (due at ``due``), once the warm-up is over."""
        nonlocal sent
        if begun < measure_from:
            return
        sent += 1
        lateness.append(max(0.0, begun - due))
        if status == 204:
            latencies.append(elapsed)
            if elapsed > 0.05:
                slow.append(round(begun % 1.0, 3))
        else:
            errors[str(status)] = errors.get(str(status), 0) + 1

    async def node_loop(session: aiohttp.ClientSession, node: str) -> None:
        template = templates[node]
        target = f"{url}/api/v1/nodes/{node}/metrics"
        headers = {"Authorization": f"Bearer {tokens[node]}", "Content-Type": "application/json"}
        next_at = start_at + rng.random()  # every node at its own phase
        seq = 0
        while True:
            delay = next_at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            begun = time.time()
            if begun >= stop_at:
                return
            body = (template % {"ts": repr(begun), "seq": seq}).encode()
            started = time.perf_counter()
            status: int | str
            try:
                async with session.post(
                    target, data=body, headers=headers, ssl=contexts.get(node, True)
                ) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            record(begun, next_at, status, time.perf_counter() - started)
            seq += 1
            next_at += 1.0
            if next_at < time.time():  # more than a period late: send now, then on schedule
                next_at = time.time()

    async def raw_node_loop(node: str) -> None:
        """The same schedule over one keep-alive connection, HTTP/1.1 written by hand."""
        template = templates[node]
        host, _, port = url.split("://", 1)[1].partition(":")
        head = (
            f"POST /api/v1/nodes/{node}/metrics HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {tokens[node]}\r\nContent-Type: application/json\r\n"
        )
        next_at = start_at + rng.random()
        context = contexts.get(node)
        reader, writer = await asyncio.open_connection(
            host, int(port), ssl=context, server_hostname=host if context else None
        )
        seq = 0
        try:
            while True:
                delay = next_at - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                begun = time.time()
                if begun >= stop_at:
                    return
                body = (template % {"ts": repr(begun), "seq": seq}).encode()
                started = time.perf_counter()
                writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                response = await reader.readuntil(b"\r\n\r\n")
                status = int(response.split(b" ", 2)[1])
                for line in response.lower().split(b"\r\n"):
                    if line.startswith(b"content-length:") and int(line.split(b":")[1]):
                        await reader.readexactly(int(line.split(b":")[1]))
                record(begun, next_at, status, time.perf_counter() - started)
                seq += 1
                next_at += 1.0
                if next_at < time.time():
                    next_at = time.time()
        finally:
            writer.close()

    if client == "raw":
        await asyncio.gather(*(raw_node_loop(node) for node in nodes))
        return {
            "latencies": latencies,
            "lateness": lateness,
            "errors": errors,
            "sent": sent,
            "slow_phase": slow,
        }
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(node_loop(session, node) for node in nodes))
    return {
        "latencies": latencies,
        "lateness": lateness,
        "errors": errors,
        "sent": sent,
        "slow_phase": slow,
    }


def sim_node(i: int) -> str:
    return f"sim-{i:05d}"


def worker_main(args: argparse.Namespace) -> None:
    nodes = [sim_node(i) for i in range(args.first, args.first + args.count)]
    identities: dict[str, Any] = json.loads(Path(args.identities).read_text())
    if identities.get("authorities"):
        identities["keys"] = json.loads(Path(identities["keys_file"]).read_text())
    result = asyncio.run(
        _simulate(identities, nodes, args.start_at, args.warmup, args.duration, args.client)
    )
    Path(args.out).write_text(json.dumps(result))


# -- the orchestrator --------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])
    return total - fields[3] - fields[4], total


def _histogram(text: str) -> dict[str, float]:
    """Buckets, sum and count of ``telemetry_ingest_duration_seconds``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("telemetry_ingest_duration_seconds"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _server_side(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    count = after.get("telemetry_ingest_duration_seconds_count", 0) - before.get(
        "telemetry_ingest_duration_seconds_count", 0
    )
    total = after.get("telemetry_ingest_duration_seconds_sum", 0) - before.get(
        "telemetry_ingest_duration_seconds_sum", 0
    )
    buckets = sorted(
        (float(k.split('le="')[1].rstrip('"}')), after[k] - before.get(k, 0))
        for k in after
        if "_bucket" in k and 'le="+Inf"' not in k
    )
    p99_bound = next((le for le, n in buckets if count and n >= 0.99 * count), None)
    return {
        "pushes": int(count),
        "mean_ms": round(total / count * 1000, 3) if count else None,
        "p99_at_most_ms": p99_bound * 1000 if p99_bound is not None else None,
    }


def _ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50) * 1000, 2),
        "p95": round(percentile(values, 95) * 1000, 2),
        "p99": round(percentile(values, 99) * 1000, 2),
        "max": round(max(values) * 1000, 2),
    }


class NodeKeys:
    """One EC key and CSR per simulated node, made once and kept in ``path`` (JSON) for
    every server of the run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.known: dict[str, dict[str, str]] = (
            json.loads(path.read_text()) if path.exists() else {}
        )

    def ensure(self, count: int) -> dict[str, dict[str, str]]:
        missing = [sim_node(i) for i in range(count) if sim_node(i) not in self.known]
        for node in missing:
            key = ca.new_key()
            self.known[node] = {"key": ca.key_pem(key), "csr": ca.new_request(key, node)}
        if missing:
            self.path.write_text(json.dumps(self.known))
        return self.known


class Server:
    """A real ``aether server``; ``transport`` plain also takes node credentials alone over
    plain HTTP on the API port (``AETHER_NODE_AUTH=credential``), mtls is the default."""

    def __init__(self, root: Path, transport: str = "mtls") -> None:
        self.root = root
        self.transport = transport
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (root / "server.log").open("ab")
        env = {**os.environ, "AETHER_LEASE_TTL": "3"}
        env["AETHER_NODE_AUTH"] = "credential" if transport == "plain" else "mtls"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aether",
                "server",
                "--data-dir",
                str(root / "server"),
                "--port",
                str(self.port),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        wait_for(lambda: httpx.get(f"{self.url}/readyz").status_code == 200, 60, "server ready")
        self.join_token = (root / "server" / "join.token").read_text().strip()
        self.admin_token = (root / "server" / "admin.token").read_text().strip()
        self.identities = root / "identities.json"

    def join(self, count: int, keys: NodeKeys) -> Path:
        """Each of the first ``count`` simulated nodes joins (once, with its CSR): where the
        nodes call, with what (JSON for the workers)."""
        known: dict[str, Any] = (
            json.loads(self.identities.read_text())
            if self.identities.exists()
            else {"transport": self.transport, "keys_file": str(keys.path), "nodes": {}}
        )
        requests = keys.ensure(count)
        with httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.join_token}"}, timeout=30
        ) as http:
            for node in (sim_node(i) for i in range(count)):
                if node not in known["nodes"]:
                    response = http.post(
                        "/api/v1/nodes/join", json={"id": node, "csr": requests[node]["csr"]}
                    )
                    response.raise_for_status()
                    joined = response.json()
                    known["nodes"][node] = {
                        "credential": joined["credential"],
                        "certificate": joined["certificate"],
                    }
                    if self.transport == "mtls":
                        known["url"] = joined["node_urls"][0]
                        known["authorities"] = joined["authorities"]
                    else:
                        known["url"] = self.url
                        known["authorities"] = []
        self.identities.write_text(json.dumps(known))
        return self.identities

    def metrics_text(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=30).text

    def latest(self) -> dict[str, Any]:
        response = httpx.get(
            f"{self.url}/api/v1/metrics",
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=30,
        )
        response.raise_for_status()
        data: dict[str, Any] = response.json() or {}
        return data

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def run_step(
    server: Server,
    nodes: int,
    workers: int,
    warmup: float,
    duration: float,
    root: Path,
    client: str,
    keys: NodeKeys,
) -> dict[str, Any]:
    identities = server.join(nodes, keys)
    # time for the workers to start and build their bodies (and, with mTLS, a context per
    # node: ~3 ms each on an idle core)
    ready_in = 2.0 + (nodes / workers * 0.008 if server.transport == "mtls" else 0.0)
    start_at = time.time() + ready_in
    per = [nodes // workers + (1 if i < nodes % workers else 0) for i in range(workers)]
    procs, outs, first = [], [], 0
    for i, count in enumerate(per):
        out = root / f"worker-{nodes}-{i}.json"
        outs.append(out)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.telemetry_bench",
                    "worker",
                    "--identities",
                    str(identities),
                    "--first",
                    str(first),
                    "--count",
                    str(count),
                    "--start-at",
                    repr(start_at),
                    "--warmup",
                    str(warmup),
                    "--duration",
                    str(duration),
                    "--out",
                    str(out),
                    "--client",
                    client,
                ],
                cwd=REPO,
            )
        )
        first += count
    time.sleep(max(0.0, start_at + warmup - time.time()))
    hist_before = _histogram(server.metrics_text())
    cpu_before, wall_before = _cpu_seconds(server.proc.pid), time.monotonic()
    gen_before = sum(_cpu_seconds(p.pid) for p in procs)
    machine_before = _machine_ticks()
    time.sleep(max(0.0, start_at + warmup + duration - time.time() - 1.0))
    cpu_after, wall_after = _cpu_seconds(server.proc.pid), time.monotonic()
    gen_after = sum(_cpu_seconds(p.pid) for p in procs)
    machine_after = _machine_ticks()
    wall = wall_after - wall_before
    busy_cores = (
        (machine_after[0] - machine_before[0])
        / max(1, machine_after[1] - machine_before[1])
        * (os.cpu_count() or 1)
    )
    server_cores = (cpu_after - cpu_before) / wall
    generator_cores = (gen_after - gen_before) / wall
    latest = server.latest()  # while every node still pushes
    hist_after = _histogram(server.metrics_text())
    for proc in procs:
        proc.wait(timeout=duration + warmup + 120)
    latencies: list[float] = []
    lateness: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    for out in outs:
        data = json.loads(out.read_text())
        latencies += data["latencies"]
        lateness += data["lateness"]
        sent += data["sent"]
        for k, v in data["errors"].items():
            errors[k] = errors.get(k, 0) + v
    sampled = latest.get("nodes", {})
    fresh = sum(1 for n in sampled.values() if not n["stale"])
    rate = len(latencies) / duration
    lat = _ms(latencies)
    passed = not errors and rate >= 0.99 * nodes and lat.get("p99", 1e9) < P99_LIMIT_MS
    late = _ms(lateness)
    step: dict[str, Any] = {
        "nodes": nodes,
        "transport": server.transport,
        "target_rate_per_s": nodes,
        "achieved_rate_per_s": round(rate, 1),
        "pushes_sent": sent,
        "errors": errors,
        "latency_ms": lat,
        "generator_lateness_ms": late,
        "server_ingest": _server_side(hist_before, hist_after),
        "server_cpu_cores": round(server_cores, 3),
        "generator_cpu_cores": round(generator_cores, 3),
        # everything else running on the machine meanwhile (other programs)
        "other_cpu_cores": round(max(0.0, busy_cores - server_cores - generator_cores), 3),
        "latest_sample_nodes": len(sampled),
        "latest_sample_fresh_nodes": fresh,
        "passed": passed,
    }
    print(
        f"[{client} {server.transport}] N={nodes}: {rate:.0f}/s of {nodes}/s, "
        f"latency p50 {lat.get('p50')} p95 {lat.get('p95')} p99 {lat.get('p99')} "
        f"max {lat.get('max')} ms, "
        f"generator lateness p99 {late.get('p99')} ms, "
        f"CPU cores: server {step['server_cpu_cores']}, generators "
        f"{step['generator_cpu_cores']}, other {step['other_cpu_cores']}; "
        f"sample {fresh}/{len(sampled)} fresh, "
        f"errors {errors or 0} -> {'PASS' if passed else 'FAIL'}",
        file=sys.stderr,
        flush=True,
    )
    return step


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.telemetry_bench")
    sub = parser.add_subparsers(dest="mode")
    worker = sub.add_parser("worker")
    worker.add_argument(
        "--identities", required=True, help="JSON: where to call, each node's credential"
    )
    worker.add_argument("--first", type=int, required=True)
    worker.add_argument("--count", type=int, required=True)
    worker.add_argument("--start-at", type=float, required=True)
    worker.add_argument("--warmup", type=float, required=True)
    worker.add_argument("--duration", type=float, required=True)
    worker.add_argument("--out", required=True)
    worker.add_argument("--client", choices=["aiohttp", "raw"], default="aiohttp")
    parser.add_argument("--steps", default="500,1000,2000,3000,4000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--warmup",
        type=float,
        default=15.0,
        help="seconds before measuring: until every node has connected (thousands take seconds)",
    )
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--keep-going", action="store_true", help="run steps after a failure")
    parser.add_argument(
        "--client",
        choices=["aiohttp", "raw", "both"],
        default="both",
        help="aiohttp sessions, or hand-written HTTP/1.1 (a cheaper generator: more CPU left "
        "for the server on a small machine)",
    )
    parser.add_argument(
        "--transport",
        choices=["plain", "mtls", "both"],
        default="both",
        help="mtls: the node port with each node's certificate; plain: the credential alone "
        "over plain HTTP on the API port (AETHER_NODE_AUTH=credential)",
    )
    parser.add_argument(
        "--patience", type=float, default=60.0, help="seconds to wait for an idle machine per step"
    )
    parser.add_argument(
        "--result-name",
        default=RESULT_NAME,
        help="bench/results/NAME.json (a reduced run can keep the full run's file)",
    )
    args = parser.parse_args()
    if args.mode == "worker":
        worker_main(args)
        return

    steps = [int(s) for s in args.steps.split(",")]
    busy_before = round(machine_busy(), 3)
    print(
        f"{os.cpu_count()} CPUs (machine {busy_before:.0%} busy before): the server and "
        f"{args.workers} load-generator processes share them, so these figures are a lower "
        "bound for a server with the machine to itself",
        file=sys.stderr,
        flush=True,
    )
    clients = ["aiohttp", "raw"] if args.client == "both" else [args.client]
    transports = list(TRANSPORTS) if args.transport == "both" else [args.transport]
    keys_dir = Path(tempfile.mkdtemp(prefix="aether-telemetry-keys-"))
    keys = NodeKeys(keys_dir / "keys.json")
    made = time.perf_counter()
    keys.ensure(max(steps))
    print(
        f"{max(steps)} node keys and CSRs made in {time.perf_counter() - made:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    runs: dict[str, dict[str, Any]] = {}
    try:
        for client in clients:
            for transport in transports:
                runs.setdefault(client, {})[transport] = run_server(
                    args, steps, client, transport, keys
                )
    finally:
        shutil.rmtree(keys_dir, ignore_errors=True)
    comparison = compare(runs)
    print_table(runs, comparison)
    best = {
        transport: max(
            (r[transport]["max_nodes_p99_under_100ms"] for r in runs.values() if transport in r),
            default=0,
        )
        for transport in transports
    }
    aim_transport = "mtls" if "mtls" in best else transports[0]
    write_result(
        args.result_name,
        {
            "command": "python -m bench.telemetry_bench " + " ".join(sys.argv[1:]),
            "setup": {
                "server": "one `aether server` process (leader, SQLite, default settings) per "
                "client and transport, one after the other",
                "transports": "mtls = the node port, mutual TLS with each node's certificate "
                "from its join (one connection per node) + its credential; plain = "
                "AETHER_NODE_AUTH=credential, the credential alone over plain HTTP on the API "
                "port",
                "load_generators": f"{args.workers} processes with keep-alive connections: "
                "aiohttp sessions, or raw = HTTP/1.1 written by hand on one connection per node",
                "push": f"{INSTANCES_PER_NODE} instances, {ENDPOINTS_PER_NODE} endpoints, "
                "1 per second per node, each node at its own phase",
                "warmup_s": args.warmup,
                "measured_s": args.duration,
                "pass": f"rate >= 99% of N, no errors, p99 latency < {P99_LIMIT_MS:.0f} ms",
                "shared_machine": f"{os.cpu_count()} CPUs shared by the server and the "
                "load generators",
                "machine_busy_before": busy_before,
            },
            "runs": runs,
            "comparison": comparison,
            "max_nodes_p99_under_100ms": best,
            "aim": AIM_NODES,
            "aim_transport": aim_transport,
            "aim_met": best[aim_transport] >= AIM_NODES,
        },
    )


def run_server(
    args: argparse.Namespace, steps: list[int], client: str, transport: str, keys: NodeKeys
) -> dict[str, Any]:
    """The steps against a fresh server for ``client`` over ``transport``."""
    root = Path(tempfile.mkdtemp(prefix="aether-telemetry-bench-"))
    server = Server(root, transport)
    results: list[dict[str, Any]] = []
    try:
        for nodes in steps:
            # the previous step's nodes go stale meanwhile
            quiet = wait_until_quiet(patience=args.patience)
            step = run_step(
                server, nodes, args.workers, args.warmup, args.duration, root, client, keys
            )
            step["machine_busy_before"] = quiet
            results.append(step)
            if not step["passed"] and not args.keep_going:
                break
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    passing = [s["nodes"] for s in results if s["passed"]]
    return {"steps": results, "max_nodes_p99_under_100ms": max(passing, default=0)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def compare(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """mTLS against plain HTTP, per client and N both measured: latencies and their ratios."""
    rows: list[dict[str, Any]] = []
    for client, by_transport in runs.items():
        if not {"plain", "mtls"} <= by_transport.keys():
            continue
        plain = {s["nodes"]: s for s in by_transport["plain"]["steps"]}
        mtls = {s["nodes"]: s for s in by_transport["mtls"]["steps"]}
        for nodes in sorted(plain.keys() & mtls.keys()):
            p, m = plain[nodes], mtls[nodes]
            row: dict[str, Any] = {"client": client, "nodes": nodes}
            for q in ("p50", "p99"):
                row[f"plain_{q}_ms"] = p["latency_ms"].get(q)
                row[f"mtls_{q}_ms"] = m["latency_ms"].get(q)
                row[f"{q}_ratio"] = _ratio(m["latency_ms"].get(q), p["latency_ms"].get(q))
            row["plain_server_cpu_cores"] = p["server_cpu_cores"]
            row["mtls_server_cpu_cores"] = m["server_cpu_cores"]
            row["plain_passed"] = p["passed"]
            row["mtls_passed"] = m["passed"]
            rows.append(row)
    return rows


def print_table(runs: dict[str, dict[str, Any]], comparison: list[dict[str, Any]]) -> None:
    out = sys.stderr
    print("\nclient   transport      N   rate/s   p50 ms   p99 ms  server cores  result", file=out)
    for client, by_transport in runs.items():
        for transport, run in by_transport.items():
            for s in run["steps"]:
                lat = s["latency_ms"]
                print(
                    f"{client:8} {transport:9} {s['nodes']:6} {s['achieved_rate_per_s']:8} "
                    f"{lat.get('p50', '-'):>8} {lat.get('p99', '-'):>8} "
                    f"{s['server_cpu_cores']:>13} {'PASS' if s['passed'] else 'FAIL':>7}",
                    file=out,
                )
    if comparison:
        print(
            "\nmTLS against plain HTTP (ratio = mtls / plain)\n"
            "client        N  plain p50  mtls p50  ratio  plain p99  mtls p99  ratio",
            file=out,
        )
        for r in comparison:
            print(
                f"{r['client']:8} {r['nodes']:6} {r['plain_p50_ms']:>10} {r['mtls_p50_ms']:>9} "
                f"{r['p50_ratio']!s:>6} {r['plain_p99_ms']:>10} {r['mtls_p99_ms']:>9} "
                f"{r['p99_ratio']!s:>6}",
                file=out,
            )
    out.flush()


if __name__ == "__main__":
    main()
