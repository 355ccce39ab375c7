"""``aether apps rm`` with real processes: the app stops, its route is gone, its name is free."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-python"


def test_apps_rm_stops_the_app_and_frees_its_route_and_name(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    deployed = cluster.cli_json("deploy", str(EXAMPLE), "--instances", "2")
    assert deployed["status"] == "active" and deployed["version"] == 1
    route = f"{cluster.router('n1')}/apps/hello-python/"
    assert httpx.get(route, timeout=5).status_code == 200

    removed = cluster.cli("apps", "rm", "hello-python")
    assert "deleted hello-python (was v1); 2 instance(s) stopping" in removed.stdout

    gone = httpx.get(route, timeout=5)
    assert gone.status_code == 404, gone.text  # not 503: the app does not exist any more
    assert gone.json()["code"] == "not_found"
    listed = cluster.cli_json("list")
    assert "hello-python" not in [a["name"] for a in listed["apps"]]
    wait_for(lambda: cluster.api_get("/instances?app=hello-python") == [], 30, "instances gone")
    missing = cluster.cli("apps", "rm", "hello-python", "--format", "json", check=False)
    assert missing.returncode == 41
    assert '"not_found"' in missing.stdout

    again = cluster.cli_json("deploy", str(EXAMPLE), "--instances", "1")
    assert again["status"] == "active" and again["version"] == 2
    answer = httpx.get(route, timeout=5)
    assert answer.status_code == 200 and answer.json()["message"] == "Hello from Aether"
    assert [a["name"] for a in cluster.cli_json("list")["apps"]] == ["hello-python"]
