"""A stateful app's recovery point, end to end, with real server and node processes.

``examples/counter`` (with a short ``[checkpoint] interval``) under a loop of
increments: (a) ``kill -9`` of its node loses at most one interval of
increments, and the ``node_lost`` event and ``aether status`` say what the
replacement restored; (b) ``kill -STOP`` of its node past its lease, then
``kill -CONT``: the replacement serves from the newest periodic checkpoint, the
returned node never serves the old instance again, its newer state becomes an
``orphaned`` snapshot (with an event saying what the replacement misses), and
``aether snapshots restore`` brings the count back.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def counter_with(tmp: Path, interval: float) -> Path:
    """``examples/counter`` with its checkpoint interval set to ``interval`` seconds."""
    app = tmp / "counter"
    shutil.copytree(EXAMPLES / "counter", app)
    toml = app / "aether.toml"
    text = toml.read_text()
    assert "interval = 5" in text
    toml.write_text(text.replace("interval = 5", f"interval = {interval:g}"))
    return app


def other(node: str) -> str:
    return "n2" if node == "n1" else "n1"


def events(cluster: Cluster, kind: str) -> list[dict[str, Any]]:
    (app,) = [a for a in cluster.api_get("/apps") if a["name"] == "counter"]
    found = cluster.api_get(f"/deployments/{app['deployment_id']}/events")
    return [e for e in found if e["type"] == kind]


def serving_on(cluster: Cluster, node: str) -> dict[str, Any] | None:
    found = [i for i in cluster.active("counter") if i["node"] == node]
    return found[0] if found else None


def test_kill_9_of_the_counters_node_loses_at_most_one_interval(
    cluster: Cluster, tmp_path: Path
) -> None:
    interval = 1.0
    cluster.start_server()
    cluster.start_node("n1")
    cluster.start_node("n2")
    cluster.cli_json("deploy", str(counter_with(tmp_path, interval)))
    (inst,) = cluster.active("counter")
    home, survivor = inst["node"], other(inst["node"])
    url = f"{cluster.router(survivor)}/apps/counter/"

    acked: list[tuple[float, int]] = []  # (when, count) of each acknowledged increment
    with httpx.Client(timeout=5) as http:
        started = time.monotonic()
        while time.monotonic() - started < 4 * interval:
            acked.append((time.monotonic(), http.post(url + "inc").json()["count"]))
        cluster.kill_node(home)  # kill -9, right after the last acknowledged increment
        killed = time.monotonic()

        wait_for(lambda: serving_on(cluster, survivor), 30, "the replacement ACTIVE")
        recovered = int(http.get(url).json()["count"])
        last = acked[-1][1]
        lost = last - recovered
        # what one interval (plus the time a checkpoint takes) may lose
        allowed = sum(1 for when, _ in acked if when > killed - interval - 1.0)
        assert 0 <= lost <= allowed, (lost, allowed, len(acked))
        assert recovered > 0  # it restored a periodic checkpoint, not an empty state
        assert http.post(url + "inc").json()["count"] == recovered + 1

    (lost_event,) = events(cluster, "node_lost")
    assert "restores checkpoint sha256:" in lost_event["message"], lost_event
    assert (
        "RPO 1s" in lost_event["message"]
        and "lost unless the node returns" in (lost_event["message"])
    )

    def recovery_point() -> dict[str, Any] | None:
        """The counter in `aether status` once its replacement checkpoints again."""
        (app,) = [a for a in cluster.cli_json("status")["apps"] if a["name"] == "counter"]
        age = app["checkpoint_age_seconds"]
        return app if age is not None and age < interval + 1.0 else None

    app = wait_for(recovery_point, 15, "a fresh checkpoint of the replacement")
    assert app["rpo_seconds"] == interval
    text = cluster.cli("status").stdout
    assert "RPO" in text and "LAST CHECKPOINT" in text
    (row,) = [line.split() for line in text.splitlines() if line.startswith("counter ")]
    assert row[3] == "1s" and row[5] == "ago", row


def test_a_frozen_node_returns_its_newer_state_as_an_orphan_that_can_be_restored(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    cluster.start_node("n2")
    cluster.cli_json("deploy", str(counter_with(tmp_path, 2)))
    (inst,) = cluster.active("counter")
    home, survivor = inst["node"], other(inst["node"])
    url = f"{cluster.router(survivor)}/apps/counter/"

    def periodic() -> list[dict[str, Any]]:
        snaps = cluster.cli_json("snapshots", "ls", "counter")["snapshots"]
        return [s for s in snaps if s["kind"] == "periodic"]

    with httpx.Client(timeout=5) as http:
        for _ in range(10):
            http.post(url + "inc")
        wait_for(periodic, 15, "a periodic checkpoint")
        for _ in range(20):  # right after a checkpoint: the next is ~2 s away
            last = int(http.post(url + "inc").json()["count"])
        cluster.kill(cluster.nodes[home], signal.SIGSTOP)  # frozen past its 3 s lease
        try:
            replacement = wait_for(
                lambda: serving_on(cluster, survivor), 30, "the replacement ACTIVE"
            )
            restored = int(http.get(url).json()["count"])
            # the newest periodic checkpoint: at least the first 10, not the last 20
            assert 10 <= restored < last, (restored, last)
            for _ in range(3):
                now = int(http.post(url + "inc").json()["count"])
            assert now == restored + 3
        finally:
            cluster.kill(cluster.nodes[home], signal.SIGCONT)

        # the returned node's router never sends a request to the old instance
        old_router = f"{cluster.router(home)}/apps/counter/"
        answers: list[Any] = []
        until = time.monotonic() + 4
        while time.monotonic() < until:
            try:
                response = http.get(old_router)
            except httpx.TransportError:
                continue
            answers.append(response.json() if response.status_code == 200 else response.status_code)
        counts = {a["count"] for a in answers if isinstance(a, dict)}
        assert last not in counts, answers[:10]  # the old instance holds `last`
        assert counts == {now}, answers[:10]  # and it routes to the replacement

    def orphan() -> dict[str, Any] | None:
        snaps = cluster.cli_json("snapshots", "ls", "counter")["snapshots"]
        found = [s for s in snaps if s["status"] == "orphaned"]
        return found[0] if found else None

    kept = wait_for(orphan, 30, "the returned node's state as an orphaned snapshot")
    assert kept["node"] == home and kept["kind"] == "orphaned"
    (event,) = events(cluster, "state_orphaned")
    assert kept["digest"] in event["message"] and "missing" in event["message"], event
    assert replacement["key"] in event["message"]
    listed = cluster.cli("snapshots", "ls", "counter").stdout
    assert "orphaned" in listed

    moved = cluster.cli_json("snapshots", "restore", "counter", kept["digest"][:20])
    assert moved["status"] == "done" and moved["kind"] == "stateful", moved
    with httpx.Client(timeout=5) as http:
        assert http.get(url).json()["count"] == last  # every acknowledged increment is back
    statuses = {
        s["digest"]: s["status"]
        for s in cluster.cli_json("snapshots", "ls", "counter")["snapshots"]
    }
    assert statuses[kept["digest"]] == "restored"


def test_a_node_stopped_cleanly_checkpoints_its_stateful_instance_first(
    cluster: Cluster, tmp_path: Path
) -> None:
    """No periodic checkpoint falls in this test (interval 600 s): what the replacement
    restores is the checkpoint the node took as it stopped."""
    cluster.start_server()
    cluster.start_node("n1")
    cluster.start_node("n2")
    cluster.cli_json("deploy", str(counter_with(tmp_path, 600)))
    (inst,) = cluster.active("counter")
    home, survivor = inst["node"], other(inst["node"])
    url = f"{cluster.router(survivor)}/apps/counter/"
    with httpx.Client(timeout=5) as http:
        for _ in range(12):
            last = int(http.post(url + "inc").json()["count"])
        cluster.kill(cluster.nodes.pop(home), signal.SIGTERM)
        wait_for(lambda: serving_on(cluster, survivor), 30, "the replacement ACTIVE")
        assert http.get(url).json()["count"] == last == 12
    kinds = [s["kind"] for s in cluster.cli_json("snapshots", "ls", "counter")["snapshots"]]
    assert kinds == ["periodic"]
