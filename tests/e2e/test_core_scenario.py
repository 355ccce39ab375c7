"""The core end-to-end scenario: deploy, serve, lose a node, restart the server, roll back."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-python"


def _all_ok(url: str, count: int) -> list[str]:
    """``count`` requests through a router; every one must answer 200. The instances seen."""
    seen = []
    with httpx.Client(timeout=5) as http:
        for _ in range(count):
            response = http.get(url)
            assert response.status_code == 200, response.text
            seen.append(response.json()["instance"])
    return seen


class Probe(threading.Thread):
    """Requests through a router in the background, counting failures."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.ok = 0
        self.failures: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self.stopping.is_set():
                try:
                    response = http.get(self.url)
                    if response.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{response.status_code} {response.text[:100]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                time.sleep(0.02)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


def test_deploy_serve_heal_restart_rollback(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    cluster.start_node("n2")

    # deploy hello-python with 3 instances
    deployed = cluster.cli_json("deploy", str(EXAMPLE), "--instances", "3")
    assert deployed["app"] == "hello-python"
    assert deployed["version"] == 1
    assert deployed["digest"].startswith("sha256:")
    assert deployed["size_bytes"] > 0
    assert deployed["url"].endswith("/apps/hello-python/")
    assert len(cluster.active("hello-python")) == 3

    # 100 requests through one router all succeed, spread over the instances
    seen = _all_ok(f"{cluster.router('n2')}/apps/hello-python/", 100)
    assert len(set(seen)) == 3

    # kill -9 one node: within 10 s all 3 instances are ACTIVE on the other one
    cluster.kill_node("n1")
    wait_for(
        lambda: (
            [i for i in cluster.active("hello-python") if i["node"] == "n2"]
            if len([i for i in cluster.active("hello-python") if i["node"] == "n2"]) == 3
            else None
        ),
        10,
        "3 instances ACTIVE on n2",
    )
    _all_ok(f"{cluster.router('n2')}/apps/hello-python/", 50)
    status = cluster.cli_json("status")
    assert {n["id"]: n["state"] for n in status["nodes"]} == {"n1": "down", "n2": "ready"}

    # kill -9 the server: instances never stop serving; restart on the same data dir
    probe = Probe(f"{cluster.router('n2')}/apps/hello-python/")
    probe.start()
    time.sleep(0.5)
    cluster.kill_server()
    time.sleep(2)
    cluster.start_server()
    time.sleep(1)
    probe.stop()
    assert probe.failures == []
    assert probe.ok > 20
    apps = cluster.cli_json("apps")["apps"]
    assert [(a["name"], a["version"], a["instances_desired"]) for a in apps] == [
        ("hello-python", 1, 3)
    ]
    assert cluster.api_get("/blueprints/hello-python")["instances"] == 3
    assert [
        d["version"] for d in cluster.cli_json("deployments", "hello-python")["deployments"]
    ] == [1]
    wait_for(lambda: len(cluster.active("hello-python")) == 3, 10, "3 ACTIVE after server restart")

    # a second version, then roll back: the first serves again
    v2 = tmp_path / "hello-v2"
    shutil.copytree(EXAMPLE, v2)
    toml = (v2 / "aether.toml").read_text().replace("Hello from Aether", "Hello v2")
    (v2 / "aether.toml").write_text(toml)
    second = cluster.cli_json("deploy", str(v2))
    assert second["version"] == 2
    assert second["instances"] == 3  # a redeploy keeps the scale
    assert second["digest"] != deployed["digest"]
    wait_for(
        lambda: {i["version"] for i in cluster.active("hello-python")} == {2},
        20,
        "only v2 serving",
    )
    assert httpx.get(f"{cluster.router('n2')}/apps/hello-python/").json()["message"] == "Hello v2"

    rolled = cluster.cli_json("rollback", "hello-python")
    assert rolled["version"] == 3
    assert rolled["rollback_of"] == 1
    assert rolled["digest"] == deployed["digest"]
    wait_for(
        lambda: {i["version"] for i in cluster.active("hello-python")} == {3},
        20,
        "only the rolled-back version serving",
    )
    messages = {
        httpx.get(f"{cluster.router('n2')}/apps/hello-python/").json()["message"] for _ in range(10)
    }
    assert messages == {"Hello from Aether"}
