"""Alerts against real processes: an app that crash-loops fires its rule within the
for-duration, runs the rule's runbook in a sandbox (its output on the alert), is
POSTed to a webhook that fails twice (retried with backoff, visible), and resolves
once a good version is deployed."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

APP = """\
import os, sys, threading, time
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass

if os.environ.get("CRASH") == "1":
    threading.Timer(2.0, lambda: os._exit(3)).start()
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def _app(root: Path, crash: bool) -> Path:
    root.mkdir(parents=True)
    (root / "aether.toml").write_text(
        'name = "looper"\nstart = "python3 app.py"\nhealth = "/healthz"\ninstances = 1\n\n'
        f'[env]\nCRASH = "{1 if crash else 0}"\n'
    )
    (root / "app.py").write_text(APP)
    return root


class Receiver:
    def __init__(self, failures: int) -> None:
        self.calls: list[tuple[float, int, dict[str, Any]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = 500 if len(receiver.calls) < failures else 200
                receiver.calls.append((time.monotonic(), status, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=2)
    yield r
    r.server.shutdown()


def _alert(cluster: Cluster, state: str) -> dict[str, Any] | None:
    alerts: list[dict[str, Any]] = cluster.api_get("/alerts")
    return next((a for a in alerts if a["rule"] == "CrashLooping" and a["state"] == state), None)


def _by_fingerprint(cluster: Cluster, fingerprint: str) -> dict[str, Any]:
    alerts: list[dict[str, Any]] = cluster.api_get("/alerts")
    return next(a for a in alerts if a["fingerprint"] == fingerprint)


def test_a_crash_looping_app_fires_runs_its_runbook_and_resolves_when_fixed(
    tmp_path: Path, receiver: Receiver
) -> None:
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is needed: apt-get install bubblewrap (make test does it)")
    rules = tmp_path / "rules.json"
    rule: dict[str, Any] = {
        "name": "CrashLooping",
        "kind": "crash_loop",
        "threshold": 2,
        "for_seconds": 3,
        "window": 60,
        "severity": "critical",
    }
    rules.write_text(json.dumps([rule]))
    cluster = Cluster(tmp_path / "cluster")
    cluster.env.update(
        {
            "AETHER_ALERT_RULES_FILE": str(rules),
            "AETHER_ALERT_WEBHOOK_URL": receiver.url,
            "AETHER_ALERT_INTERVAL": "0.5",
        }
    )
    try:
        cluster.start_server()
        cluster.start_node("n1")
        created = cluster.cli_json("task", "submit", "-type", "vm:create", "-name", "runbooks")
        vm = wait_for(
            lambda: (cluster.api_get(f"/tasks/{created['id']}").get("result") or {}).get("vm_id"),
            60,
            "the runbook sandbox",
        )
        rule["runbook"] = {
            "sandbox_id": vm,
            "command": "sh",
            "args": ["-c", "echo runbook for $ALERT_APP after $ALERT_RULE"],
        }
        rules.write_text(json.dumps([rule]))  # read again by the leader

        cluster.cli("deploy", str(_app(tmp_path / "bad", crash=True)), timeout=300)
        pending = wait_for(lambda: _alert(cluster, "pending"), 60, "the alert pending")
        firing = wait_for(lambda: _alert(cluster, "firing"), 60, "the alert firing")
        assert firing["fingerprint"] == pending["fingerprint"]
        assert firing["labels"] == {"app": "looper"}
        assert firing["fired_at"] - firing["started_at"] >= 3

        shown = wait_for(
            lambda: (a := _alert(cluster, "firing")) and a["runbook_output"] and a,
            60,
            "the runbook's output on the alert",
        )
        assert "runbook for looper after CrashLooping" in shown["runbook_output"]

        wait_for(lambda: len(receiver.calls) >= 3, 30, "the webhook delivered")
        assert [c[1] for c in receiver.calls[:3]] == [500, 500, 200]
        gaps = [b[0] - a[0] for a, b in zip(receiver.calls, receiver.calls[1:3], strict=False)]
        seen = [(round(c[0], 2), c[1], c[2]["state"]) for c in receiver.calls]
        assert gaps[0] >= 0.4 and gaps[1] >= 0.9, (gaps, seen)
        notify = wait_for(
            lambda: _by_fingerprint(cluster, firing["fingerprint"])["notify"].get("firing"),
            10,
            "the delivery recorded",
        )
        assert notify["attempts"] == 3 and notify["delivered_at"] is not None
        listed = cluster.cli("alerts", "ls").stdout
        assert "CrashLooping" in listed and "sent (3 attempt(s))" in listed

        cluster.cli("deploy", str(_app(tmp_path / "good", crash=False)), timeout=300)
        resolved = wait_for(lambda: _alert(cluster, "resolved"), 90, "the alert resolved")
        assert resolved["resolved_at"] >= resolved["fired_at"]
        wait_for(
            lambda: any(c[2]["state"] == "resolved" for c in receiver.calls),
            30,
            "the resolution POSTed",
        )
    finally:
        cluster.stop()
