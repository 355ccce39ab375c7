"""A node's calls over mutual TLS against plain HTTP: registration, a push, a handshake.

    .venv/bin/python -m bench.node_tls_bench [--joins 30] [--registers 100]
        [--pushes 200] [--connections 100] [--pause 0.01]

Two real ``aether server`` processes at once (each its own data directory, SQLite,
default settings), both idle but for this client: **mtls** (the default,
``AETHER_NODE_AUTH=mtls``: node routes on the node port, mutual TLS with the
node's certificate + its credential) and **plain** (``AETHER_NODE_AUTH=credential``:
the credential alone over plain HTTP on the API port, the legacy mode). One
client (``http.client``, one request at a time, the same code for both but the
connection) measures, alternating plain and mTLS sample by sample so that drift
on the machine falls on both:

- **join + first register**: a new EC key and CSR, ``POST /nodes/join`` (the API
  port, plain HTTP in both: the join token is what is checked), then -- with mTLS --
  the node's ``ssl`` context from the answer, a new connection to the node port
  (TCP + TLS handshake with the client certificate) and ``POST /nodes/register``;
  the parts are reported too;
- **register alone**: ``POST /nodes/register`` again on a kept-alive connection;
- **push** at low load: one node, ``--pushes`` ``POST /nodes/{id}/metrics`` (the
  telemetry bench's ~2.6 kB body) on a kept-alive connection, ``--pause`` apart;
- **handshake**: the same push on a new connection each time (``--connections``),
  with the connect (TCP, + TLS handshake with mTLS) timed apart; the handshake's
  cost is the new-connection p50 minus the kept-alive p50.

Latencies in ms (p50/p95/p99/max), and mtls/plain ratios of p50 and p99. The
client shares the machine with both servers. Results: bench/results/node_tls.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aether.trust import ca, tls
from bench.common import machine_busy, write_result
from bench.telemetry_bench import TRANSPORTS, Server, _ms, node_template

RESULT_NAME = "node_tls"
CAPS = {"cpus": 1, "memory_mb": 512, "drivers": ["process"]}


@dataclass
class Target:
    """One server as a node sees it: where it joins, where node routes are called."""

    transport: str
    server: Server
    api: tuple[str, int]
    nodes: tuple[str, int] = ("", 0)
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, []).append(seconds)


@dataclass
class Identity:
    node: str
    credential: str
    context: ssl.SSLContext | None  # mtls: the node's own client context


def _hostport(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def connect(target: Target, who: Identity | None) -> http.client.HTTPConnection:
    """A new connection where ``who`` calls node routes (not yet opened)."""
    if who is not None and who.context is not None:
        host, port = target.nodes
        return http.client.HTTPSConnection(host, port, timeout=30, context=who.context)
    host, port = target.api
    return http.client.HTTPConnection(host, port, timeout=30)


def call(conn: http.client.HTTPConnection, path: str, body: bytes, token: str) -> tuple[int, bytes]:
    conn.request(
        "POST",
        path,
        body=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    return response.status, response.read()


def _check(status: int, body: bytes, what: str, ok: tuple[int, ...] = (200,)) -> None:
    if status not in ok:
        raise RuntimeError(f"{what}: {status} {body[:300]!r}")


def join_and_register(target: Target, node: str, record: bool = True) -> Identity:
    """A new node: key, CSR, join, (context), first register on a new connection."""
    started = time.perf_counter()
    key = ca.new_key()
    csr = ca.new_request(key, node)
    keyed = time.perf_counter()
    api = http.client.HTTPConnection(*target.api, timeout=30)
    status, body = call(
        api,
        "/api/v1/nodes/join",
        json.dumps({"id": node, "csr": csr}).encode(),
        target.server.join_token,
    )
    api.close()
    _check(status, body, "join", (201,))
    joined = json.loads(body)
    join_done = time.perf_counter()
    context = (
        tls.client_context(joined["authorities"], joined["certificate"], ca.key_pem(key))
        if target.transport == "mtls"
        else None
    )
    if context is not None:
        target.nodes = _hostport(joined["node_urls"][0])
    who = Identity(node, joined["credential"], context)
    context_done = time.perf_counter()
    conn = connect(target, who)
    conn.connect()
    connected = time.perf_counter()
    status, body = call(conn, "/api/v1/nodes/register", _register_body(node), who.credential)
    conn.close()
    _check(status, body, "register")
    done = time.perf_counter()
    if not record:
        return who
    target.add("join_and_first_register", done - started)
    target.add("join_part_key_and_csr", keyed - started)
    target.add("join_part_join", join_done - keyed)
    target.add("join_part_context", context_done - join_done)
    target.add("join_part_connect", connected - context_done)
    target.add("join_part_first_register", done - connected)
    return who


def _register_body(node: str) -> bytes:
    return json.dumps(
        {"id": node, "capabilities": CAPS, "router_url": "http://127.0.0.1:1"}
    ).encode()


def interleaved(
    targets: list[Target], rounds: int, sample: Callable[[Target, int], object], pause: float = 0.0
) -> None:
    """``sample(target, i)`` for each round, plain and mTLS alternating who goes first."""
    for i in range(rounds):
        for target in targets if i % 2 == 0 else list(reversed(targets)):
            sample(target, i)
            if pause:
                time.sleep(pause)


def measure(args: argparse.Namespace, targets: list[Target]) -> dict[str, Any]:
    run = f"{os.getpid()}-{int(time.time())}"
    for target in targets:  # a first join warms each server (and its token cache) up
        join_and_register(target, f"warm-{target.transport}-{run}", record=False)
    interleaved(
        targets, args.joins, lambda t, i: join_and_register(t, f"join-{t.transport}-{run}-{i}")
    )

    # one node per server from here on, with a kept-alive connection
    nodes = {
        t.transport: join_and_register(t, f"bench-{t.transport}-{run}", record=False)
        for t in targets
    }
    kept = {t.transport: connect(t, nodes[t.transport]) for t in targets}

    def register(target: Target, _: int) -> None:
        who = nodes[target.transport]
        started = time.perf_counter()
        status, body = call(
            kept[target.transport],
            "/api/v1/nodes/register",
            _register_body(who.node),
            who.credential,
        )
        target.add("register_alone", time.perf_counter() - started)
        _check(status, body, "register")

    interleaved(targets, args.registers, register)

    rng = random.Random(7)
    templates = {t.transport: node_template(nodes[t.transport].node, rng).decode() for t in targets}
    seqs = dict.fromkeys(templates, 0)

    def push_body(transport: str) -> bytes:
        seqs[transport] += 1
        return (templates[transport] % {"ts": repr(time.time()), "seq": seqs[transport]}).encode()

    def push(target: Target, _: int) -> None:
        who = nodes[target.transport]
        body = push_body(target.transport)
        started = time.perf_counter()
        status, answer = call(
            kept[target.transport], f"/api/v1/nodes/{who.node}/metrics", body, who.credential
        )
        target.add("push_kept_alive", time.perf_counter() - started)
        _check(status, answer, "push", (200, 204))

    interleaved(targets, args.pushes, push, args.pause)

    def push_new_connection(target: Target, _: int) -> None:
        who = nodes[target.transport]
        body = push_body(target.transport)
        started = time.perf_counter()
        conn = connect(target, who)
        conn.connect()
        connected = time.perf_counter()
        status, answer = call(conn, f"/api/v1/nodes/{who.node}/metrics", body, who.credential)
        done = time.perf_counter()
        conn.close()
        target.add("push_new_connection", done - started)
        target.add("connect", connected - started)
        _check(status, answer, "push", (200, 204))

    interleaved(targets, args.connections, push_new_connection, args.pause)
    for conn in kept.values():
        conn.close()

    figures: dict[str, dict[str, Any]] = {
        t.transport: {k: _ms(v) for k, v in t.samples.items()} for t in targets
    }
    for by in figures.values():
        new, kept_alive = by["push_new_connection"], by["push_kept_alive"]
        by["handshake_cost_p50"] = {
            "ms": round(new["p50"] - kept_alive["p50"], 2),
            "what": "push on a new connection p50 - push kept alive p50 (plain: TCP connect; "
            "mtls: TCP connect + TLS handshake with the client certificate)",
        }
    return figures


def ratios(figures: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    plain, mtls = figures.get("plain"), figures.get("mtls")
    if plain is None or mtls is None:
        return {}
    out: dict[str, dict[str, float | None]] = {}
    for name, m in mtls.items():
        p = plain.get(name, {})
        if "p50" in m and p.get("p50"):
            out[name] = {
                "p50": round(m["p50"] / p["p50"], 2),
                "p99": round(m["p99"] / p["p99"], 2) if p.get("p99") else None,
            }
    return out


def print_table(figures: dict[str, Any], ratio: dict[str, dict[str, float | None]]) -> None:
    out = sys.stderr
    names = [n for n in next(iter(figures.values())) if n != "handshake_cost_p50"]
    print(
        f"\n{'measure':26} {'plain p50':>9} {'p95':>7} {'p99':>7} "
        f"{'mtls p50':>9} {'p95':>7} {'p99':>7} {'x p50':>6} {'x p99':>6}",
        file=out,
    )
    for name in names:
        p = figures.get("plain", {}).get(name, {})
        m = figures.get("mtls", {}).get(name, {})
        r = ratio.get(name, {})
        print(
            f"{name:26} {p.get('p50', '-')!s:>9} {p.get('p95', '-')!s:>7} "
            f"{p.get('p99', '-')!s:>7} {m.get('p50', '-')!s:>9} {m.get('p95', '-')!s:>7} "
            f"{m.get('p99', '-')!s:>7} {r.get('p50', '-')!s:>6} {r.get('p99', '-')!s:>6}",
            file=out,
        )
    for transport, by in figures.items():
        print(f"handshake cost ({transport}): {by['handshake_cost_p50']['ms']} ms", file=out)
    out.flush()


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.node_tls_bench")
    parser.add_argument("--joins", type=int, default=30, help="nodes joined per server")
    parser.add_argument("--registers", type=int, default=100)
    parser.add_argument("--pushes", type=int, default=200)
    parser.add_argument("--connections", type=int, default=100, help="pushes on new connections")
    parser.add_argument("--pause", type=float, default=0.01, help="seconds between pushes")
    parser.add_argument("--transport", choices=["plain", "mtls", "both"], default="both")
    args = parser.parse_args()
    transports = list(TRANSPORTS) if args.transport == "both" else [args.transport]

    busy_before = round(machine_busy(), 3)
    roots: list[Path] = []
    targets: list[Target] = []
    try:
        for transport in transports:
            root = Path(tempfile.mkdtemp(prefix=f"aether-node-tls-{transport}-"))
            roots.append(root)
            server = Server(root, transport)
            targets.append(Target(transport, server, _hostport(server.url)))
        figures = measure(args, targets)
    finally:
        for target in targets:
            target.server.stop()
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
    ratio = ratios(figures)
    print_table(figures, ratio)
    write_result(
        RESULT_NAME,
        {
            "command": "python -m bench.node_tls_bench " + " ".join(sys.argv[1:]),
            "setup": {
                "servers": "two `aether server` processes at once (SQLite, default settings): "
                "mtls (node port, mutual TLS + credential) and plain "
                "(AETHER_NODE_AUTH=credential, the credential alone over plain HTTP on the API "
                "port)",
                "client": "http.client, one request at a time, plain and mTLS alternating",
                "joins": args.joins,
                "registers": args.registers,
                "pushes": args.pushes,
                "new_connection_pushes": args.connections,
                "pause_s": args.pause,
                "shared_machine": f"{os.cpu_count()} CPUs shared by both servers and the client",
                "machine_busy_before": busy_before,
            },
            "latency_ms": figures,
            "mtls_over_plain": ratio,
        },
    )


if __name__ == "__main__":
    main()
