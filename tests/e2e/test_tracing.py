"""Issue 21: one ``aether deploy`` is one trace — the CLI, the server, the leader, the
node and the instance's first request — sent over OTLP/HTTP to a real receiver."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.cluster import Cluster
from tests.support.otlp import ReceivedSpan, otlp_receiver
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

APP = """
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        print("traceparent=" + str(self.headers.get("traceparent")), flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


DEPLOY_SPANS = {
    "aether deploy",
    "POST /api/v1/apps/{app}/deployments",
    "leader: place traced",
    "node: load traced v1/0",
    "artifact download",
    "artifact extract",
    "node: activate traced v1/0",
    "health check GET /",
}


def _deploy_trace(spans: list[ReceivedSpan]) -> list[ReceivedSpan] | None:
    """The spans of the trace the CLI's ``aether deploy`` started, once every process
    has sent its part (each sends its spans in batches of its own)."""
    roots = [s for s in spans if s.name == "aether deploy" and s.service == "aether-cli"]
    if not roots:
        return None
    trace = [s for s in list(spans) if s.trace_id == roots[0].trace_id]
    return trace if {s.name for s in trace} >= DEPLOY_SPANS else None


def test_one_deploy_is_one_trace_from_the_cli_to_the_instance(
    cluster: Cluster, tmp_path: Path
) -> None:
    with otlp_receiver() as (endpoint, spans):
        cluster.env["AETHER_OTLP_ENDPOINT"] = endpoint
        cluster.start_server()
        cluster.start_node("n1")
        app = tmp_path / "traced"
        app.mkdir()
        (app / "app.py").write_text(APP)
        (app / "aether.toml").write_text(
            'name = "traced"\nstart = "python3 app.py"\nhealth = "/"\n'
        )
        cluster.cli("deploy", str(app))

        trace = wait_for(lambda: _deploy_trace(spans), 30, "the deploy's trace")
        # a request through the router, in a trace of the caller's: the router's span
        # joins it, and the instance is handed the router's span as its parent
        caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        answer = httpx.get(
            f"{cluster.router('n1')}/apps/traced/", headers={"traceparent": caller}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        routed = wait_for(
            lambda: [s for s in list(spans) if s.name == "router: GET traced"],
            30,
            "the router's span",
        )

    ids = {s.span_id for s in trace}
    roots = [s for s in trace if not s.parent_id]
    assert [r.name for r in roots] == ["aether deploy"], [(s.name, s.parent_id) for s in trace]
    orphans = [s.name for s in trace if s.parent_id and s.parent_id not in ids]
    assert not orphans, f"spans whose parent is not in the trace: {orphans}"
    services = {s.service for s in trace}
    assert services == {"aether-cli", "aether-server", "aether-node"}, services
    # the instance's first request carried the trace (the app printed the header)
    trace_id = roots[0].trace_id

    def printed() -> str | None:
        out = cluster.cli("logs", "traced").stdout
        return out if trace_id in out else None

    logs = wait_for(printed, 30, "the instance's output naming the trace")
    assert f"traceparent=00-{trace_id}-" in logs
    (hop,) = routed
    assert [hop.trace_id, hop.parent_id] == caller.split("-")[1:3]
    assert f"traceparent=00-{hop.trace_id}-{hop.span_id}-" in cluster.cli("logs", "traced").stdout


TASK_SPANS = {"aether task", "task claim: vm:execute", "task: vm:execute"}


def test_a_task_runs_in_the_trace_it_was_submitted_in(cluster: Cluster) -> None:
    """``aether task submit`` → the server's claim → the node's run, one trace, and the
    sandboxed command gets the run's span as ``TRACEPARENT``."""
    with otlp_receiver() as (endpoint, spans):
        cluster.env["AETHER_OTLP_ENDPOINT"] = endpoint
        cluster.start_server()
        cluster.start_node("n1")
        created = cluster.cli_json("task", "submit", "-type", "vm:create", "-name", "traced")
        vm = wait_for(
            lambda: cluster.cli_json("task", "get", created["id"]).get("result"),
            60,
            "the sandbox",
        )["vm_id"]
        submitted = cluster.cli_json(
            *("task", "submit", "-type", "vm:execute", "-vm-id", vm),
            *("-cmd", "sh", "-args", "-c 'echo $TRACEPARENT'"),
        )
        done = wait_for(
            lambda: (t := cluster.cli_json("task", "get", submitted["id"]))["result"] and t,
            60,
            "the command's result",
        )

        def task_trace() -> list[ReceivedSpan] | None:
            runs = [s for s in list(spans) if s.name == "task: vm:execute"]
            if not runs:
                return None
            trace = [s for s in list(spans) if s.trace_id == runs[0].trace_id]
            # each process sends its spans in its own batches: wait for all three
            return trace if {s.name for s in trace} >= TASK_SPANS else None

        trace = wait_for(task_trace, 30, "the task's trace")

    names = {s.name: s for s in trace}
    assert {s.service for s in trace} == {"aether-cli", "aether-server", "aether-node"}
    ids = {s.span_id for s in trace}
    assert [s.name for s in trace if not s.parent_id] == ["aether task"]
    assert all(s.parent_id in ids for s in trace if s.parent_id)
    run = names["task: vm:execute"]
    printed = str(done["result"].get("stdout", ""))
    assert printed.startswith(f"00-{run.trace_id}-{run.span_id}-"), done["result"]
