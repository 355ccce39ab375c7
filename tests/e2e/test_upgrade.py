"""Version skew against real processes: the previous release (``v0.1.0``, from a git
worktree of its tag, run with this checkout's venv) next to this checkout's code.

The policy (docs/operations.md, "Upgrades"): servers upgrade first; a node one minor
version behind its servers keeps working. So a new server with an old node must do
everything (join over mTLS, deploy, serve through the old node's router, scale, roll
back); a new node with an old server is not supported, and the node says so in its log.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import aether
from tests.e2e.test_core_scenario import Probe
from tests.support.cluster import Cluster
from tests.support.ha import HaCluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "hello-python"
PREVIOUS = "v0.1.0"  # the release before this one: move all three on at each release
PREVIOUS_COMMIT = "0ff15914075cc67b97fc45f3bb86464321e08db8"
ARCHIVE = Path(__file__).parent / "releases" / f"{PREVIOUS}.tar.xz"
ARCHIVE_SHA256 = "4d49fc1941c50542e52aba840675fbffbb505db816399b2f03c54edd5821e46a"


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)


@pytest.fixture(scope="session")
def previous_release() -> Iterator[Path]:
    """The previous release's source: a detached git worktree of its tag.

    A clone made without tags (CI's is) still has the release's commit in its history,
    so the worktree is made from the commit the tag names. A clone that has neither
    (shallow) falls back to ``releases/{PREVIOUS}.tar.xz``, the release's ``src`` and
    ``pyproject.toml`` as ``git archive`` wrote them; `test_the_pinned_archive_is_the_tag`
    keeps that archive true to the tag.
    """
    root = Path(tempfile.mkdtemp(prefix="aether-previous-"))
    tree = root / PREVIOUS
    revision = _previous_revision()
    try:
        if revision is not None:
            added = _git("worktree", "add", "--detach", str(tree), revision)
            assert added.returncode == 0, added.stderr
        else:
            tree.mkdir()
            with tarfile.open(ARCHIVE) as archive:
                archive.extractall(tree, filter="data")
        yield tree
    finally:
        if revision is not None:
            _git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(root, ignore_errors=True)


def _previous_revision() -> str | None:
    """The tag if this clone has it, else its commit if the history has that, else None."""
    for revision in (f"refs/tags/{PREVIOUS}", PREVIOUS_COMMIT):
        if _git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}").returncode == 0:
            return revision
    return None


def test_the_pinned_archive_is_the_tag() -> None:
    """The fallback archive holds exactly the release's files: compared with the tag
    where this clone has it, and pinned by its digest everywhere."""
    assert hashlib.sha256(ARCHIVE.read_bytes()).hexdigest() == ARCHIVE_SHA256
    revision = _previous_revision()
    if revision is None:
        return  # a shallow clone: the digest above is what a full clone checked
    assert _git("rev-parse", f"{revision}^{{commit}}").stdout.strip() == PREVIOUS_COMMIT
    listed = _git("ls-tree", "-r", "--format=%(objectname) %(path)", revision)
    expected: dict[str, str] = {}
    for line in listed.stdout.splitlines():
        blob, path = line.split(" ", 1)
        if path.startswith("src/") or path == "pyproject.toml":
            expected[path] = blob
    actual: dict[str, str] = {}
    with tarfile.open(ARCHIVE) as archive:
        for member in archive.getmembers():
            body = archive.extractfile(member) if member.isfile() else None
            if body is not None:
                actual[member.name] = _blob_id(body.read())
    assert actual == expected


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _version_of(source: Path) -> str:
    text = (source / "src" / "aether" / "__init__.py").read_text()
    return text.split('__version__ = "', 1)[1].split('"', 1)[0]


def _variant(tmp: Path, greeting: str) -> Path:
    app = tmp / greeting.replace(" ", "-")
    shutil.copytree(EXAMPLE, app)
    toml = (app / "aether.toml").read_text().replace("Hello from Aether", greeting)
    (app / "aether.toml").write_text(toml)
    return app


def _messages(cluster: Cluster, node: str) -> set[str]:
    url = f"{cluster.router(node)}/apps/hello-python/"
    return {str(httpx.get(url, timeout=5).json()["message"]) for _ in range(10)}


def test_previous_node_works_with_this_server(
    cluster: Cluster, tmp_path: Path, previous_release: Path
) -> None:
    assert _version_of(previous_release) != aether.__version__
    cluster.start_server()
    cluster.start_node("old", source=previous_release)  # joins: mTLS certificate issued
    data = tmp_path / "old"
    assert (data / "node.crt").exists() and (data / "cluster-ca.pem").exists()
    assert json.loads((data / "servers.json").read_text())[0].startswith("https://")

    first = cluster.cli_json("deploy", str(EXAMPLE), "--instances", "2")
    assert first["version"] == 1
    wait_for(lambda: len(cluster.active("hello-python")) == 2, 30, "2 ACTIVE on the old node")
    assert {i["node"] for i in cluster.active("hello-python")} == {"old"}
    assert _messages(cluster, "old") == {"Hello from Aether"}
    assert [n["version"] for n in cluster.api_get("/nodes")] == [None]  # 0.1.0 sends none

    cluster.cli_json("scale", "hello-python=3")
    wait_for(lambda: len(cluster.active("hello-python")) == 3, 30, "scaled to 3")

    second = cluster.cli_json("deploy", str(_variant(tmp_path, "Hello v2")))
    assert second["version"] == 2
    wait_for(
        lambda: {i["version"] for i in cluster.active("hello-python")} == {2},
        30,
        "only v2 serving",
    )
    assert _messages(cluster, "old") == {"Hello v2"}

    rolled = cluster.cli_json("rollback", "hello-python")
    assert rolled["rollback_of"] == 1
    wait_for(
        lambda: (
            {i["version"] for i in cluster.active("hello-python")} == {rolled["version"]}
            and len(cluster.active("hello-python")) == 3
        ),
        30,
        "the rolled-back version serving",
    )
    assert _messages(cluster, "old") == {"Hello from Aether"}
    log = (tmp_path / "old.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def test_this_node_warns_against_a_previous_server(
    cluster: Cluster, tmp_path: Path, previous_release: Path
) -> None:
    """Not supported (servers upgrade first): the new node still registers and serves
    with a 0.1.0 server (the messages only gained optional fields), and it says in its
    log that its server is older, naming the fix."""
    cluster.start_server(source=previous_release)
    cluster.start_node("new")
    wait_for(
        lambda: "servers upgrade first" in (tmp_path / "new.log").read_text(errors="replace"),
        15,
        "the node's warning about its older server",
    )
    log = (tmp_path / "new.log").read_text(errors="replace")
    assert f"this node is aether {aether.__version__}" in log
    assert "reports no version" in log
    cluster.cli_json("deploy", str(EXAMPLE), "--instances", "1")
    wait_for(lambda: len(cluster.active("hello-python")) == 1, 30, "1 ACTIVE on the new node")
    assert _messages(cluster, "new") == {"Hello from Aether"}


def test_this_node_is_quiet_with_this_server(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    cluster.cli_json("deploy", str(EXAMPLE), "--instances", "1")  # registered long ago
    log = (tmp_path / "n1.log").read_text(errors="replace")
    assert "servers upgrade first" not in log
    assert "upgrade this node" not in log


class _Probe(Probe):
    """A probe whose failures say when and where (the URL moves between routers)."""

    def run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self.stopping.is_set():
                url = self.url
                try:
                    response = http.get(url)
                    if response.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{time.time():.1f} {url} {response.status_code}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{time.time():.1f} {url} {exc!r}")
                time.sleep(0.02)


def _node_version(cluster: Cluster, name: str) -> str | None:
    return next((n["version"] for n in cluster.api_get("/nodes") if n["id"] == name), None)


def _nodes_of(cluster: Cluster) -> dict[str, int]:
    counts: dict[str, int] = {}
    for inst in cluster.active("hello-python"):
        counts[inst["node"]] = counts.get(inst["node"], 0) + 1
    return counts


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """A graceful stop, as a service manager does it (SIGTERM, then wait)."""
    Cluster.kill(proc, signal.SIGTERM)


def test_rolling_upgrade_of_an_ha_cluster_loses_no_request(
    tmp_path: Path, previous_release: Path, request: pytest.FixtureRequest
) -> None:
    """Three previous-release servers on etcd and two previous-release nodes, an app with
    two instances under steady traffic; the servers are replaced one at a time, then the
    nodes (drain, stop, start the new one with the same identity and data, undrain). The
    traffic goes to the router of the node that is not being replaced."""
    # the servers' default lease (3 s): a v0.1.0 server closes its state store before it
    # stops answering, so its nodes' heartbeats fail until they find another server
    ha = HaCluster(tmp_path, engines="shared-dir", lease_ttl=3.0)
    try:
        ha.start_servers(source=previous_release)
        ha.start_node("n1", source=previous_release)
        ha.start_node("n2", source=previous_release)
        deployed = ha.cli_json("deploy", str(EXAMPLE), "--instances", "2")
        wait_for(lambda: len(ha.active("hello-python")) == 2, 30, "2 ACTIVE")
        probe = _Probe(f"{ha.router('n2')}/apps/hello-python/")
        probe.start()
        try:
            for index in range(ha.servers):
                _stop(ha.server_procs.pop(index))
                ha.start_server_at(index)  # this checkout, same port and data
                wait_for(lambda: ha.leader_index() is not None, 20, "a leader")
            for node, other in (("n1", "n2"), ("n2", "n1")):
                probe.url = f"{ha.router(other)}/apps/hello-python/"
                print(f"{time.time():.1f} {node}: traffic to {other}", flush=True)
                ha.cli("drain", node, "--wait", "--timeout", "60")
                moved = {other: 2}
                wait_for(lambda: _nodes_of(ha) == moved, 60, f"both on {other}")  # noqa: B023
                print(f"{time.time():.1f} {node}: stopping", flush=True)
                _stop(ha.nodes.pop(node))
                # this checkout, same identity and data directory; it comes back draining
                ha.start_node(node, wait=False)
                # registered as the new version (the old process's record lives on until
                # its lease ends), then back in the "load balancer" only once its router
                # serves the app, as a load balancer's health check would have it
                wait_for(lambda: _node_version(ha, node) == aether.__version__, 30, node)  # noqa: B023
                ha.cli("undrain", node)
                wait_for(lambda: ha.node_state(node) == "ready", 30, f"{node} ready")  # noqa: B023
                app = f"{ha.router(node)}/apps/hello-python/"
                wait_for(lambda: httpx.get(app, timeout=5).status_code == 200, 30, "router")  # noqa: B023
        finally:
            time.sleep(0.5)
            probe.stop()
        assert probe.failures == [], probe.failures[:5]
        assert probe.ok > 50
        for node in ("n1", "n2"):
            log = (tmp_path / f"{node}.log").read_text(errors="replace")
            assert "servers upgrade first" not in log  # the servers were new by then
        # the app's history is intact: the same deployment, blueprint and version
        deployments = ha.cli_json("deployments", "hello-python")["deployments"]
        assert [(d["version"], d["status"]) for d in deployments] == [(1, "active")]
        assert deployments[0]["id"] == deployed["deployment_id"]
        assert ha.api_get("/blueprints/hello-python")["instances"] == 2
        versions = {n["id"]: n["version"] for n in ha.api_get("/nodes")}
        assert versions == {"n1": aether.__version__, "n2": aether.__version__}
        servers = ha.api_get("/status")["servers"]
        assert {s["version"] for s in servers} == {aether.__version__}
        assert len(servers) == 3
        wait_for(lambda: len(ha.active("hello-python")) == 2, 30, "2 ACTIVE at the end")
    finally:
        ha.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(ha.logs())
