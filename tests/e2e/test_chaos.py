"""Chaos against real processes: the cluster converges to exactly the desired counts after each."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from tests.e2e.test_core_scenario import Probe
from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-python"


def app_processes(under: Path) -> list[int]:
    """Pids of instance processes whose working directory is an instance's app under ``under``.

    A sandboxed instance shows its directory at its own path (``/instance/app``),
    so the directory is recognised by its device and inode, not by that path.
    """
    dirs = set()
    for app in under.glob("instances/*/app"):
        with contextlib.suppress(OSError):
            st = app.stat()
            dirs.add((st.st_dev, st.st_ino))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.stat(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        sandbox = cmdline.split(b"\0")[0].endswith(b"bwrap")  # its init, not the app
        if (cwd.st_dev, cwd.st_ino) in dirs and b"app.py" in cmdline and not sandbox:
            found.append(int(entry.name))
    return found


def test_a_stopped_node_is_replaced_and_stops_its_extras_when_it_wakes(
    cluster: Cluster,
) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    cluster.start_node("n2")
    cluster.cli_json("deploy", str(EXAMPLE), "--instances", "2")
    wait_for(
        lambda: sorted(i["node"] for i in cluster.active("hello-python")) == ["n1", "n2"],
        30,
        "one instance on each node",
    )
    assert len(app_processes(cluster.root / "n1")) == 1

    probe = Probe(f"{cluster.router('n2')}/apps/hello-python/")
    probe.start()
    try:
        cluster.kill(cluster.nodes["n1"], signal.SIGSTOP)  # frozen past its 3 s lease
        wait_for(lambda: cluster.node_state("n1") == "down", 15, "n1's lease expired")
        wait_for(
            lambda: [i["node"] for i in cluster.active("hello-python")] == ["n2", "n2"],
            20,
            "both instances ACTIVE on n2",
        )
        # meanwhile the frozen node's process still exists: a duplicate until n1 wakes
        assert len(app_processes(cluster.root / "n1")) == 1

        cluster.kill(cluster.nodes["n1"], signal.SIGCONT)
        wait_for(lambda: cluster.node_state("n1") == "ready", 20, "n1 registered again")
        wait_for(lambda: not app_processes(cluster.root / "n1"), 20, "n1 stopped its extra")
    finally:
        probe.stop()
    assert probe.failures == [], probe.failures[:5]
    instances = cluster.api_get("/instances?app=hello-python")
    assert len(instances) == 2  # exactly the desired count, no lasting duplicate
    assert {i["node"] for i in instances} == {"n2"}
    assert all(i["state"] == "ACTIVE" for i in instances)
