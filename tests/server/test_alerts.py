"""Alerts on a real leader: a crash-looping app's alert goes pending, fires after its
for-duration, is POSTed to a webhook that fails twice (retried with backoff, each
attempt visible on the alert), and resolves when the restarts stop. Tenancy: a
tenant sees its own apps' alerts only; silences mute notifications.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from aether.client import ApiClient
from aether.model.api import RegisterIn
from aether.model.cluster import NodeCapabilities
from aether.model.names import cluster_name
from aether.model.telemetry import InstanceMetrics
from tests.support.api import bearer, unique
from tests.support.server import RunningServer, running_server
from tests.support.telemetry import node_sample

FAILURES = 2  # the webhook answers 500 this many times, then 200


class Receiver:
    """A real local HTTP server: fails the first ``FAILURES`` POSTs, records each."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int, dict[str, Any]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = 500 if len(receiver.calls) < FAILURES else 200
                receiver.calls.append((time.monotonic(), status, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def alerting(
    tmp_path_factory: pytest.TempPathFactory, receiver: Receiver
) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("aether-alerts")
    rules = Path(data) / "rules.json"
    rules.write_text(
        json.dumps(
            [
                {
                    "name": "CrashLooping",
                    "kind": "crash_loop",
                    "threshold": 2,
                    "for_seconds": 1.5,
                    "window": 4,
                    "severity": "critical",
                },
                {"name": "NodeLost", "disabled": True},
            ]
        )
    )
    with running_server(
        data / "server",
        lease_ttl=60.0,
        alert_rules_file=rules,
        alert_webhook_url=receiver.url,
        alert_interval=0.25,
    ) as running:
        yield running


async def _alerts(base: str, token: str, **params: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base) as http:
        got = await http.get("/api/v1/alerts", params=params, headers=bearer(token))
        assert got.status_code == 200, got.text
        answer: list[dict[str, Any]] = got.json()
        return answer


async def _until(
    base: str, token: str, app: str, state: str, timeout: float = 20.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        seen = [a for a in await _alerts(base, token) if a["labels"].get("app") == app]
        if seen and seen[0]["state"] == state:
            return seen[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{app}: never {state}; last {seen}")


async def test_crash_loop_fires_notifies_with_retries_and_resolves(
    alerting: RunningServer, receiver: Receiver
) -> None:
    tenant = unique("acme")
    app = cluster_name("web", tenant)
    node = unique("n")
    mine = alerting.token("viewer", tenant)
    restarts = {"n": 0}
    pushing = True

    async def pusher(api: ApiClient) -> None:
        seq = 0
        while pushing:
            seq += 1
            instance = InstanceMetrics(
                key=f"instances/{node}/{app}@1/0",
                app=app,
                version=1,
                n=0,
                cpu=0.1,
                rss_mb=10,
                restarts=restarts["n"],
            )
            await api.push_metrics(node_sample(node, seq, instances=[instance]))
            await asyncio.sleep(0.2)

    async with ApiClient(alerting.base_url, alerting.node_token(node)) as node_api:
        await node_api.register(
            RegisterIn(
                id=node,
                capabilities=NodeCapabilities(cpus=4, memory_mb=4096, drivers=["process"]),
                router_url="http://127.0.0.1:9",
            )
        )
        task = asyncio.create_task(pusher(node_api))
        try:
            started = time.monotonic()
            for n in range(1, 4):  # the instance keeps crashing
                await asyncio.sleep(0.5)
                restarts["n"] = n
            pending = await _until(alerting.base_url, mine, app, "pending")
            assert pending["rule"] == "CrashLooping" and pending["tenant"] == tenant
            for n in range(4, 10):  # still crashing: fires after its for-duration
                await asyncio.sleep(0.4)
                restarts["n"] = n
            firing = await _until(alerting.base_url, mine, app, "firing")
            assert firing["fired_at"] - firing["started_at"] >= 1.5
            assert time.monotonic() - started < 15

            # the webhook: 500, 500, then 200, with growing waits between attempts
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(receiver.calls) < FAILURES + 1:
                await asyncio.sleep(0.1)
            calls = [c for c in receiver.calls if c[2]["labels"].get("app") == app]
            assert [c[1] for c in calls[: FAILURES + 1]] == [500, 500, 200]
            assert calls[0][2]["state"] == "firing" and calls[0][2]["rule"] == "CrashLooping"
            gaps = [b[0] - a[0] for a, b in itertools.pairwise(calls[: FAILURES + 1])]
            assert gaps[0] >= 0.4 and gaps[1] >= 0.9, gaps  # 0.5 s, then 1 s
            shown = (await _alerts(alerting.base_url, mine, state="firing"))[0]
            assert shown["notify"]["firing"]["attempts"] == FAILURES + 1
            assert shown["notify"]["firing"]["delivered_at"] is not None

            # other tenants see nothing of it; the cluster's operators see it
            other = await _alerts(alerting.base_url, alerting.token("admin", unique("b")))
            assert all(a["labels"].get("app") != app for a in other)
            ops = await _alerts(alerting.base_url, alerting.token("operator"))
            assert any(a["labels"].get("app") == app for a in ops)

            # fixed: no more restarts -> resolved (the window empties of rises)
            resolved = await _until(alerting.base_url, mine, app, "resolved")
            assert resolved["resolved_at"] >= resolved["fired_at"]
        finally:
            pushing = False
            await task


async def test_silences_are_the_tenant_s_own(alerting: RunningServer) -> None:
    tenant = unique("acme")
    op = alerting.token("operator", tenant)
    async with httpx.AsyncClient(base_url=alerting.base_url) as http:
        made = await http.post(
            "/api/v1/alerts/silences",
            json={"matchers": {"alertname": "CrashLooping"}, "duration": 60, "comment": "x"},
            headers=bearer(op),
        )
        assert made.status_code == 201, made.text
        silence = made.json()
        assert silence["tenant"] == tenant and silence["active"] is True
        mine = await http.get("/api/v1/alerts/silences", headers=bearer(op))
        assert [s["id"] for s in mine.json()] == [silence["id"]]
        other = bearer(alerting.token("operator", unique("b")))
        theirs = await http.get("/api/v1/alerts/silences", headers=other)
        assert silence["id"] not in [s["id"] for s in theirs.json()]
        gone = await http.delete(f"/api/v1/alerts/silences/{silence['id']}", headers=other)
        assert gone.status_code == 404
        viewer = bearer(alerting.token("viewer", tenant))
        refused = await http.delete(f"/api/v1/alerts/silences/{silence['id']}", headers=viewer)
        assert refused.status_code == 403
        deleted = await http.delete(f"/api/v1/alerts/silences/{silence['id']}", headers=bearer(op))
        assert deleted.status_code == 204
