"""App instances are sandboxed: a hostile app learns no secret of the node or server.

The attack of issue 11: an app whose start command reads the server's tokens
through ``../``, greps every ``/proc/*/environ`` for the node's tokens, lists
the other instances' folders and prints its uid, then serves as if nothing
happened. Its logs (through ``aether logs``) must show none of it working.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

ATTACK = """\
echo "uid=$(id -u)"
cat ../../../../server/admin.token
cat ../../../../server/join.token
for f in /proc/*/environ; do
  tr '\\0' '\\n' < "$f" 2>/dev/null | grep -E 'AETHER_(JOIN_)?TOKEN'
done
echo "listing: $(ls ../../ ../../../ 2>&1 | tr '\\n' ' ')"
echo "env: $(env | tr '\\n' ' ')"
echo "attack done"
exec python3 -m http.server "$PORT"
"""


def _app(root: Path, name: str, start: str, files: dict[str, str]) -> Path:
    root.mkdir()
    (root / "aether.toml").write_text(f'name = "{name}"\nstart = "{start}"\nhealth = "/"\n')
    for path, text in files.items():
        (root / path).write_text(text)
    return root


def _need_bwrap() -> None:
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is needed for this test: apt-get install bubblewrap")


def test_hostile_app_reads_no_token_and_runs_unprivileged(cluster: Cluster, tmp_path: Path) -> None:
    _need_bwrap()
    cluster.start_server()
    # the node holds both tokens in its environment, as an operator's unit file might
    cluster.env["AETHER_JOIN_TOKEN"] = cluster.join_token
    cluster.start_node("n1")
    victim = _app(tmp_path / "victim", "victim", "python3 -m http.server $PORT", {})
    cluster.cli_json("deploy", str(victim))
    hostile = _app(tmp_path / "hostile", "hostile", "sh attack.sh", {"attack.sh": ATTACK})
    deployed = cluster.cli_json("deploy", str(hostile))
    assert deployed["status"] == "active"
    assert httpx.get(deployed["url"], timeout=5).status_code == 200  # it serves, via the router
    assert cluster.active("hostile")

    def attack_logged() -> str | None:
        out = cluster.cli("logs", "hostile").stdout
        return out if "attack done" in out else None

    logs = wait_for(attack_logged, 30, "the hostile app's logs")
    assert cluster.admin_token not in logs
    assert cluster.join_token not in logs
    assert "AETHER_JOIN_TOKEN" not in logs and "AETHER_TOKEN" not in logs
    assert "victim@" not in logs  # another instance's folder
    assert "server" not in logs.split("listing:")[1].split("\n")[0]
    uid = int(logs.split("uid=")[1].split()[0])
    assert uid != 0


def test_status_warns_when_a_node_runs_instances_unsandboxed(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.env["AETHER_NODE_ISOLATION"] = "none"
    cluster.start_node("trusted")
    status = cluster.cli("status").stdout
    assert "WARNING: node trusted runs app instances UNSANDBOXED" in status
    nodes = cluster.cli_json("nodes")["nodes"]
    assert nodes[0]["capabilities"]["isolation"] == "none"


def test_nodes_sandbox_by_default_and_say_what_they_enforce(cluster: Cluster) -> None:
    _need_bwrap()
    cluster.start_server()
    cluster.start_node("n1")
    assert "WARNING" not in cluster.cli("status").stdout
    caps = cluster.cli_json("nodes")["nodes"][0]["capabilities"]
    assert caps["isolation"] == "bwrap"
    assert caps["limits"]["cpu"] == "not enforced"
    assert "RLIMIT_DATA" in caps["limits"]["memory"]
    assert "ISOLATION" in cluster.cli("nodes").stdout
