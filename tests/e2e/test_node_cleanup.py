"""A node killed with ``kill -9`` removes at its next start what no assignment holds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-python"


def app_copy(root: Path, name: str) -> Path:
    """hello-python under another name (so another artifact digest)."""
    target = root / name
    shutil.copytree(EXAMPLE, target)
    toml = target / "aether.toml"
    toml.write_text(toml.read_text().replace('name = "hello-python"', f'name = "{name}"'))
    return target


def archives(node_dir: Path) -> dict[str, int]:
    """The cached artifact archives: file name -> inode."""
    return {p.name: p.stat().st_ino for p in (node_dir / "artifacts").glob("*.tar.gz")}


def test_a_killed_node_removes_its_stale_instance_directories_when_it_restarts(
    tmp_path: Path,
) -> None:
    # a lease long enough for a restart to come back before it expires (phase 2)
    cluster = Cluster(tmp_path / "cluster", lease_ttl=8.0)
    try:
        cluster.start_server()
        cluster.start_node("n1")
        n1 = cluster.root / "n1"
        for name in ("keep", "gone"):
            cluster.cli_json("deploy", str(app_copy(tmp_path, name)), "--instances", "1")
        wait_for(
            lambda: [i["node"] for a in ("keep", "gone") for i in cluster.active(a)] == ["n1"] * 2,
            30,
            "keep and gone ACTIVE on n1",
        )
        gone_dir, keep_dir = n1 / "instances" / "gone@1-0", n1 / "instances" / "keep@1-0"
        assert gone_dir.is_dir() and keep_dir.is_dir()
        assert len(archives(n1)) == 2

        # phase 1: kill -9; the lease expires, the leader lets n1's instances go; gone is removed
        cluster.kill_node("n1")
        wait_for(lambda: cluster.node_state("n1") == "down", 30, "n1's lease expired")
        wait_for(lambda: cluster.api_get("/instances?app=gone") == [], 20, "gone let go")
        cluster.cli("apps", "rm", "gone")
        assert gone_dir.is_dir()  # nobody cleaned up after the killed node

        cluster.start_node("n1")  # the same data directory
        wait_for(lambda: not gone_dir.exists(), 30, "the stale directory of gone removed")
        wait_for(lambda: [i["node"] for i in cluster.active("keep")] == ["n1"], 30, "keep back")
        assert keep_dir.is_dir()
        cached = archives(n1)
        assert len(cached) == 1  # gone's archive went with it; keep's is cached again

        # phase 2: kill -9 and restart before the lease expires: keep's assignment still
        # holds it, so neither its directory nor its artifact is swept
        before = cluster.active("keep")[0]["url"]
        cluster.kill_node("n1")
        cluster.start_node("n1")
        wait_for(
            lambda: [i["url"] for i in cluster.active("keep")] not in ([], [before]),
            30,
            "keep ACTIVE again from the restarted node",
        )
        assert [i["node"] for i in cluster.api_get("/instances?app=keep")] == ["n1"]
        assert keep_dir.is_dir() and (keep_dir / "app" / "app.py").is_file()
        assert archives(n1) == cached  # the same file: not removed and fetched again
        log = (cluster.root / "n1.log").read_text()
        assert "keep@1-0" not in log.split("removed what no assignment holds")[-1].split("\n")[0]
    finally:
        cluster.stop()
