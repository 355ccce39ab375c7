"""``scale APP N``, ``deployments`` after a scale, ``logs --format json`` and ``verified``."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-python"


def test_app_commands_against_a_real_cluster(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster")
    try:
        cluster.start_server()
        cluster.start_node("n1")
        # unsigned (no signing key anywhere): nothing was sent, so verified is null
        cluster.env.pop("AETHER_SIGNING_KEY", None)
        deployed = cluster.cli_json("deploy", str(EXAMPLE), "--instances", "1")
        assert deployed["uploaded"] is True and deployed["signature"] is None
        assert deployed["verified"] is None

        scaled = cluster.cli_json("scale", "hello-python", "2")  # the space form
        assert scaled["instances_desired"] == 2
        assert cluster.cli_json("scale", "hello-python=1")["instances_desired"] == 1
        for bad in (["hello-python"], ["hello-python", "two"], ["=3"]):
            refused = cluster.cli("scale", *bad, check=False)
            assert refused.returncode == 2, (bad, refused.stdout, refused.stderr)
            assert "APP=N or APP N" in refused.stderr

        cluster.cli("scale", "hello-python", "3")
        shown = cluster.cli_json("deployments", "hello-python")["deployments"]
        assert [(d["version"], d["instances"]) for d in shown] == [(1, 3)]
        table = cluster.cli("deployments", "hello-python").stdout
        assert " 3 " in table.splitlines()[-1]

        def json_lines() -> list[dict[str, object]]:
            out = cluster.cli("logs", "hello-python", "--format", "json").stdout
            return [json.loads(line) for line in out.splitlines()]

        lines = wait_for(json_lines, 30, "log lines")
        assert all({"app", "instance", "version", "node", "line"} <= set(entry) for entry in lines)
        first = lines[0]
        assert first["app"] == "hello-python" and first["version"] == 1 and first["node"] == "n1"
        assert str(first["instance"]).startswith("hello-python/")
        assert not str(first["line"]).startswith("[v")  # the label is parsed out
    finally:
        cluster.stop()
