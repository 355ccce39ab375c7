"""The added cost of authentication + rate limiting + audit per request.

    .venv/bin/python -m bench.auth_overhead_bench [--rounds 10] [--requests 100]

The server's own app factory (``create_asgi``) builds the same ASGI app twice in
this process, each with its own data directory (embedded SQLite stores, default
settings), served by uvicorn on two loopback ports, one event loop in a
background thread:

- **on**: the app as ``aether server`` runs it: bearer-token authentication (the
  token cache, a records lookup when an entry expires), the per-tenant rate
  limiter (in-memory moving windows; the limits are raised so that no request of
  the run is refused: the check is the same), the ``RateLimit-*`` headers and the
  audit middleware (one hash-chained row per mutating call);
- **off**: the same app with ``dependency_overrides`` on ``authenticate`` (a fixed
  cluster-admin ``Principal``, no token read), the audit and rate-limit-headers
  middleware left out of its stack, and a limiter that allows every request
  without counting. Nothing of this is a switch of the server: it exists only
  here.

One ``httpx.Client`` drives both over real HTTP, one request at a time, in
``--rounds`` interleaved rounds (on, off, off, on, ...) of ``--requests`` calls
of each route: ``GET /api/v1/apps`` (a read) and ``PATCH /api/v1/tenants/{t}``
(a write: a display name; on the "on" server it appends an audit row). The
client shares the process (and its GIL) with the servers, the same in both
modes. Results: bench/results/auth_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request

from aether.ports import free_port
from aether.server.asgi import create_asgi
from aether.server.context import get_context
from aether.server.http.audit import AuditMiddleware
from aether.server.http.auth import authenticate
from aether.server.http.ratelimit import RateLimiter, RateLimitHeaders, Verdict
from aether.server.settings import ServerSettings
from aether.store.records import DEFAULT_TENANT, Principal
from bench.common import percentile, wait_until_quiet, write_result

RESULT_NAME = "auth_overhead"
TENANT = "bench"
ROUTES = ("read", "write")
MODES = ("on", "off")


class _Unlimited(RateLimiter):
    """Allows every request without counting (the "off" server only)."""

    async def hit(self, tenant_id: str, tenant: str) -> Verdict:
        return Verdict(True, 0, 0, 0)


def _settings(data_dir: Path, port: int) -> ServerSettings:
    # high enough that no request of the run is refused; the check costs the same
    return ServerSettings(
        data_dir=data_dir, port=port, rate_limit_per_minute=10_000_000, rate_limit_burst=1_000_000
    )


def _without_checks(app: FastAPI, principal: list[Principal]) -> None:
    """Take authentication, rate limiting and audit out of ``app`` (before it starts)."""
    skipped = (AuditMiddleware, RateLimitHeaders)
    app.user_middleware = [m for m in app.user_middleware if m.cls not in skipped]

    async def fixed(request: Request) -> Principal:
        request.state.principal = principal[0]
        return principal[0]

    app.dependency_overrides[authenticate] = fixed


def _same_overhead(app: FastAPI) -> None:
    """An identity override on the "on" app. FastAPI rebuilds every dependency of a
    request when an app has any override; without this, only "off" would pay that
    (about half a millisecond a request here) and the difference would understate the
    checks' cost."""
    app.dependency_overrides[get_context] = get_context


async def _serve(
    apps: dict[str, FastAPI],
    ports: dict[str, int],
    ready: threading.Event,
    loop: list[asyncio.AbstractEventLoop],
) -> None:
    loop.append(asyncio.get_running_loop())
    servers = [
        uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=ports[mode], log_level="warning"))
        for mode, app in apps.items()
    ]
    for server in servers:
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    tasks = []
    for server in servers:  # one at a time: the schema upgrades must not overlap
        tasks.append(asyncio.create_task(server.serve()))
        while not server.started and not tasks[-1].done():
            await asyncio.sleep(0.05)
    off = apps["off"].state.ctx
    default = await off.records.ensure_tenant(DEFAULT_TENANT)
    apps["off"].state.bench_principal.append(
        Principal(tenant_id=default.id, tenant=DEFAULT_TENANT, role="admin", token_id="bench")
    )
    off.limiter = _Unlimited(off.settings, off.records, off.limiter.storage)
    ready.set()
    while not all(task.done() for task in tasks):
        if getattr(apps["on"].state, "bench_stop", False):
            for server in servers:
                server.should_exit = True
        await asyncio.sleep(0.1)


@dataclass
class _Servers:
    bases: dict[str, str]  # mode → base URL
    apps: dict[str, FastAPI]
    loop: asyncio.AbstractEventLoop

    def audited_writes(self, mode: str) -> int:
        """The mode's audit events of the write route (a check that "off" wrote none)."""
        ctx = self.apps[mode].state.ctx
        rows = ctx.records.list_audit(None, action="PATCH /tenants/{tenant}", limit=1_000_000)
        return len(asyncio.run_coroutine_threadsafe(rows, self.loop).result(60))


@contextmanager
def _servers(tmp: Path) -> Iterator[_Servers]:
    """The "on" and "off" servers, running while inside."""
    ports = {mode: free_port() for mode in MODES}
    apps = {mode: create_asgi(_settings(tmp / mode, ports[mode])) for mode in MODES}
    apps["off"].state.bench_principal = []
    _without_checks(apps["off"], apps["off"].state.bench_principal)
    _same_overhead(apps["on"])
    ready = threading.Event()
    loop: list[asyncio.AbstractEventLoop] = []
    thread = threading.Thread(
        target=lambda: asyncio.run(_serve(apps, ports, ready, loop)), name="servers", daemon=True
    )
    thread.start()
    if not ready.wait(60):
        raise RuntimeError("the servers did not start")
    try:
        bases = {mode: f"http://127.0.0.1:{ports[mode]}" for mode in MODES}
        yield _Servers(bases, apps, loop[0])
    finally:
        apps["on"].state.bench_stop = True
        thread.join(15)


def _call(client: httpx.Client, base: str, route: str, i: int) -> float:
    began = time.perf_counter()
    if route == "read":
        response = client.get(f"{base}/api/v1/apps")
    else:
        response = client.patch(f"{base}/api/v1/tenants/{TENANT}", json={"display_name": f"b{i}"})
    elapsed = time.perf_counter() - began
    if response.status_code != 200:
        raise RuntimeError(f"{route} on {base}: {response.status_code} {response.text[:200]}")
    return elapsed * 1000


def _client(data_dir: Path) -> httpx.Client:
    """A client with the server's admin token (the "off" server ignores it, but for the
    edge's check of a request with a body, a token-cache hit)."""
    token = (data_dir / "admin.token").read_text().strip()
    return httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _prepare(client: httpx.Client, base: str) -> None:
    created = client.post(f"{base}/api/v1/tenants", json={"name": TENANT})
    if created.status_code != 201:
        raise RuntimeError(f"creating the tenant: {created.status_code} {created.text}")
    for route in ROUTES:
        for i in range(50):  # warm up: imports, caches, the token cache's entry
            _call(client, base, route, i)


def _order(round_no: int) -> tuple[str, ...]:
    return MODES if round_no % 2 == 0 else tuple(reversed(MODES))


def measure(rounds: int, requests: int) -> tuple[dict[str, dict[str, list[float]]], dict[str, int]]:
    """Latencies (ms) by mode and route, over interleaved rounds; the audit events of
    the write route by mode."""
    samples: dict[str, dict[str, list[float]]] = {m: {r: [] for r in ROUTES} for m in MODES}
    with tempfile.TemporaryDirectory() as tmp, _servers(Path(tmp)) as servers:
        bases = servers.bases
        clients = {mode: _client(Path(tmp) / mode) for mode in MODES}
        try:
            for mode in MODES:
                _prepare(clients[mode], bases[mode])
            for round_no in range(rounds):
                for mode in _order(round_no):
                    for route in ROUTES:
                        samples[mode][route] += [
                            _call(clients[mode], bases[mode], route, i) for i in range(requests)
                        ]
            audited = {mode: servers.audited_writes(mode) for mode in MODES}
        finally:
            for client in clients.values():
                client.close()
    writes = rounds * requests + 50  # the measured ones and the warm-up's
    if audited["off"] != 0 or audited["on"] < writes:
        raise RuntimeError(f"audit events of the writes {audited}: expected on ≥ {writes}, off 0")
    return samples, audited


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 3),
        "p95": round(percentile(values, 95), 3),
        "p99": round(percentile(values, 99), 3),
    }


def report(samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    stats = {m: {r: _stats(samples[m][r]) for r in ROUTES} for m in MODES}
    added = {
        r: {q: round(stats["on"][r][q] - stats["off"][r][q], 3) for q in ("p50", "p99")}
        for r in ROUTES
    }
    return {"latency_ms": stats, "added_ms": added}


def _print(result: dict[str, Any]) -> None:
    print(f"{'route':<6} {'mode':<4} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for route in ROUTES:
        for mode in MODES:
            s = result["latency_ms"][mode][route]
            print(f"{route:<6} {mode:<4} {s['p50']:>8.2f} {s['p95']:>8.2f} {s['p99']:>8.2f}")
        a = result["added_ms"][route]
        print(f"{route:<6} added: p50 {a['p50']:+.2f} ms, p99 {a['p99']:+.2f} ms")


def run(rounds: int, requests: int) -> dict[str, Any]:
    busy = wait_until_quiet(patience=60)
    samples, audited = measure(rounds, requests)
    result = {**report(samples), "audited_writes": audited}
    _print(result)
    write_result(
        RESULT_NAME,
        {
            "command": f".venv/bin/python -m bench.auth_overhead_bench --rounds {rounds} "
            f"--requests {requests}",
            "what": "the same app twice in one process: auth + rate limit + audit on, and off "
            "(dependency override, no audit/rate-limit middleware, an allow-all limiter); "
            "GET /api/v1/apps (read) and PATCH /api/v1/tenants/{t} (write), one at a time, "
            "interleaved rounds",
            "machine_busy_before": busy,
            "rounds": rounds,
            "requests_per_round": requests,
            **result,
        },
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    run(args.rounds, args.requests)


if __name__ == "__main__":
    main()
