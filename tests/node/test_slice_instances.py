"""Slices on a real node: built, started in the node's sandbox, described, routed to,
told about each other — against the stand-in host (``tests.support.slice_host``), copied
into each app as its start command, as the real host will be started by the build's.

Real processes: a server, a node (bwrap isolation), the CLI's build and deploy.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

STANDIN = Path(__file__).resolve().parents[1] / "support" / "slice_host.py"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "cluster")
    try:
        yield c
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop()


def _slice_app(root: Path, name: str, *, instances: int = 1, extra: str = "") -> Path:
    root.mkdir(parents=True)
    (root / "aether.toml").write_text(
        f'name = "{name}"\nruntime = "slice"\nslice = "standin:Demo"\n'
        f'start = "python3 standin.py"\ninstances = {instances}\nhealth_timeout = 20\n{extra}'
    )
    shutil.copyfile(STANDIN, root / "standin.py")
    return root


def _call(cluster: Cluster, slice_: str, entry: str, body: Any = None) -> httpx.Response:
    return httpx.post(
        f"{cluster.router('n1')}/slices/{slice_}/{entry}",
        content=json.dumps(body if body is not None else {}),
        timeout=10,
    )


def _pushed(cluster: Cluster, slice_: str) -> dict[str, Any]:
    """The newest ``$endpoints`` table one instance of ``slice_`` was pushed."""
    tables = _call(cluster, slice_, "tables").json()
    return tables[-1] if tables else {}


def _entries_of(table: dict[str, Any], slice_: str) -> dict[str, int]:
    return {entry: len(points) for entry, points in table.get(slice_, {}).items()}


def test_a_slice_is_described_routed_and_told_about_the_others(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    demo = _slice_app(tmp_path / "demo", "demo", instances=2)
    assert cluster.cli_json("deploy", str(demo))["status"] == "active"

    # one endpoint per entry point and instance: the router reaches both instances
    seen = {_call(cluster, "demo", "whoami").json() for _ in range(6)}
    assert seen == {"demo@1/0", "demo@1/1"}
    assert _call(cluster, "demo", "price", {"sku": "tea"}).json() == 3
    bad = _call(cluster, "demo", "price", {"sku": 7})
    assert bad.status_code == 400 and bad.json()["details"][0]["loc"] == ["sku"]
    assert _call(cluster, "demo", "nope").status_code == 404
    assert _call(cluster, "absent", "price").status_code == 404

    # each instance was pushed its tenant's table once ACTIVE
    def demo_table_complete() -> bool:
        pushed = _pushed(cluster, "demo")
        return pushed.get("node") == "n1" and _entries_of(pushed["table"], "demo") == {
            e: 2 for e in ("boom", "charge", "price", "slow", "tables", "whoami")
        }

    wait_for(demo_table_complete, 20, "demo's table pushed to it")
    table = _pushed(cluster, "demo")["table"]["demo"]
    point = table["price"][0]
    assert set(point) == {"url", "node", "n", "idempotent"} and point["node"] == "n1"
    # handles retry an idempotent entry's call on another instance: the table says which
    assert point["idempotent"] is True and table["charge"][0]["idempotent"] is False

    # another slice appears: the pushed table changes with it; it goes: so does the table
    other = _slice_app(tmp_path / "other", "other")
    assert cluster.cli_json("deploy", str(other))["status"] == "active"
    wait_for(
        lambda: _entries_of(_pushed(cluster, "demo")["table"], "other").get("whoami") == 1,
        20,
        "the new slice in demo's table",
    )
    assert _call(cluster, "other", "whoami").json() == "other@1/0"
    cluster.cli("apps", "rm", "other")
    wait_for(
        lambda: "other" not in _pushed(cluster, "demo")["table"], 30, "other gone from the table"
    )
    wait_for(
        lambda: _call(cluster, "other", "whoami").status_code in (404, 503),
        30,
        "other's endpoints withdrawn",
    )


def test_a_slice_whose_import_fails_is_failed_with_the_traceback_s_last_line(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    broken = _slice_app(tmp_path / "broken", "broken", extra='env = { STANDIN_FAIL = "1" }\n')
    began = time.monotonic()
    result = cluster.cli("deploy", str(broken), "--format", "json", check=False, timeout=300)
    assert result.returncode == 40, result.stdout + result.stderr
    error = json.loads(result.stdout)["error"]
    message = error["message"]
    assert "exited with code 1 before it was healthy" in message
    assert message.endswith("ImportError: No module named 'standin:Demo' (stand-in)"), message
    assert time.monotonic() - began < 120
    # the failed deployment keeps the cause, as `aether events broken@1` shows it
    events = cluster.api_get(f"/deployments/{error['details']['deployment_id']}")["events"]
    failed = [e["message"] for e in events if e["type"] == "instance_failed"]
    assert failed and failed[0].endswith("(stand-in)"), failed
    # and `aether status` says why the app has no instance: the traceback's last line
    status = cluster.cli("status").stdout
    assert "broken: ImportError: No module named 'standin:Demo' (stand-in)" in status, status
