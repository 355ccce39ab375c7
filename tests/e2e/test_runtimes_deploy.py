"""Real apps with real dependencies, built on this machine, deployed and served."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import Cluster

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _need(*commands: str) -> None:
    for command in commands:
        if shutil.which(command) is None:
            pytest.fail(f"{command} is needed: apt-get install nodejs npm (make test does it)")


def test_express_app_builds_deploys_and_redeploys_incrementally(
    cluster: Cluster, tmp_path: Path
) -> None:
    _need("node", "npm")
    app = tmp_path / "express-app"
    shutil.copytree(EXAMPLES / "express-app", app)
    cluster.start_server()
    cluster.start_node("n1")
    cluster.start_node("n2")

    first = cluster.cli_json("deploy", str(app))
    assert first["runtime"] == "node"
    assert first["status"] == "active"
    assert first["uploaded"] is True
    names = {c["name"] for c in first["sbom"]["components"]}
    assert {"express", "morgan", "ms"} <= names
    assert any(e["path"].startswith("node_modules/express/") for e in first["manifest"])
    body = httpx.get(first["url"], timeout=5).json()
    assert body["message"] == "Hello from Express on Aether"
    assert body["instance"].startswith("express-app@1/")
    sbom = cluster.api_get(f"/artifacts/{first['digest']}/sbom")
    assert sbom["bomFormat"] == "CycloneDX"

    # a one-line change uploads one file, not node_modules again
    server_js = app / "server.js"
    server_js.write_text(
        server_js.read_text().replace("Hello from Express on Aether", "Hello again")
    )
    second = cluster.cli_json("deploy", str(app))
    assert second["version"] == 2
    assert second["digest"] != first["digest"]
    assert second["uploaded_bytes"] < 10_000 < first["uploaded_bytes"]
    assert second["reused_files"] > 100
    assert httpx.get(second["url"], timeout=5).json()["message"] == "Hello again"


def test_flask_app_vendors_its_dependencies_and_serves(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    deployed = cluster.cli_json("deploy", str(EXAMPLES / "flask-app"), "--instances", "2")
    assert deployed["runtime"] == "python"
    assert deployed["status"] == "active"
    assert "flask" in {c["name"].lower() for c in deployed["sbom"]["components"]}
    instances = set()
    for _ in range(6):
        response = httpx.get(deployed["url"], timeout=5)
        assert response.status_code == 200
        instances.add(response.json()["instance"])
    assert instances == {"flask-app@1/0", "flask-app@1/1"}


def test_static_site_is_served(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    deployed = cluster.cli_json("deploy", str(EXAMPLES / "static-site"), "--no-sbom")
    assert deployed["runtime"] == "static"
    assert deployed["sbom"] is None
    page = httpx.get(deployed["url"], timeout=5)
    assert page.status_code == 200
    assert "<html" in page.text.lower()
