"""The Node.js example deploys and serves through a router."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import Cluster

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-node"


def test_hello_node_deploys_and_serves(cluster: Cluster) -> None:
    if shutil.which("node") is None:
        pytest.fail("Node.js is needed for this test: apt-get install nodejs (make test does it)")
    cluster.start_server()
    cluster.start_node("n1")
    deployed = cluster.cli_json("deploy", str(EXAMPLE), "--instances", "2")
    assert deployed["status"] == "active"
    instances = set()
    for _ in range(6):
        response = httpx.get(deployed["url"], timeout=5)
        assert response.status_code == 200
        body = response.json()
        assert body["message"] == "Hello from Node.js on Aether"
        instances.add(body["instance"])
    assert instances == {"hello-node@1/0", "hello-node@1/1"}
