"""HA chaos against real processes: three servers on a three-member etcd cluster.

- ``kill -9`` the leader server during a deploy → a new leader within 5 s, the
  deploy completes, no blueprint or deployment is lost, apps keep serving;
- kill one etcd member → writes go on; bring it back → it catches up.
After each the cluster converges to exactly the desired counts.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_core_scenario import Probe
from tests.support.console import signed_in
from tests.support.ha import HaCluster, stopped_after
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-python"


@pytest.fixture(params=["shared-dir", "postgres-s3"])
def ha(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[HaCluster]:
    with stopped_after(HaCluster(tmp_path, engines=request.param), request) as cluster:
        yield cluster


def _start(ha: HaCluster) -> None:
    ha.start_servers()
    ha.start_node("n1")
    ha.start_node("n2")
    ha.cli_json("deploy", str(EXAMPLE), "--instances", "2")
    wait_for(lambda: len(ha.active("hello-python")) == 2, 30, "v1 ACTIVE")


def _versions(ha: HaCluster) -> list[int]:
    return sorted(i["version"] for i in ha.active("hello-python"))


def test_killing_the_leader_during_a_deploy_loses_nothing(ha: HaCluster, tmp_path: Path) -> None:
    _start(ha)
    old = wait_for(lambda: (i := ha.leader_index()) is not None and i + 1, 10, "a leader") - 1
    v2 = tmp_path / "v2"
    shutil.copytree(EXAMPLE, v2)
    toml = (v2 / "aether.toml").read_text().replace("Hello from Aether", "Hello v2")
    (v2 / "aether.toml").write_text(toml + "\n[rollout]\nmin_healthy_time = 2\n")

    probe = Probe(f"{ha.router('n2')}/apps/hello-python/")
    probe.start()
    deploy = subprocess.Popen(
        [sys.executable, "-m", "aether", "deploy", str(v2), "--format", "json"],
        env=ha.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # the deployment exists and its rollout runs: now the leader dies
        wait_for(
            lambda: [d["version"] for d in ha.api_get("/apps/hello-python/deployments")] == [2, 1],
            60,
            "v2 created",
        )
        ha.kill_server_at(old)
        killed = time.monotonic()
        new = (
            wait_for(
                lambda: (i := ha.leader_index()) is not None and i != old and i + 1,
                5,
                "a new leader",
            )
            - 1
        )
        took = time.monotonic() - killed
        out, err = deploy.communicate(timeout=120)
        assert deploy.returncode == 0, (out, err)
        assert json.loads(out)["status"] == "active"
        try:
            wait_for(lambda: _versions(ha) == [2, 2], 30, "exactly 2 instances of v2")
        except AssertionError as exc:  # say what the cluster holds instead
            instances = ha.api_get("/instances?app=hello-python")
            shown = [
                {k: i.get(k) for k in ("key", "version", "node", "command", "state", "message")}
                for i in instances
            ]
            events = [
                (
                    d["version"],
                    [
                        (e["type"], e["message"])
                        for e in ha.api_get(f"/deployments/{d['id']}/events")
                    ],
                )
                for d in ha.api_get("/apps/hello-python/deployments")
            ]
            raise AssertionError(f"{exc}; instances: {shown}; events: {events}") from None
        time.sleep(0.5)
    finally:
        probe.stop()
        if deploy.poll() is None:
            deploy.kill()
    assert new != old and took < 5.0
    assert probe.failures == [], probe.failures[:5]
    assert ha.api_get("/blueprints/hello-python")["version"] == 2
    deployments = ha.api_get("/apps/hello-python/deployments")
    assert [(d["version"], d["status"]) for d in deployments] == [(2, "active"), (1, "superseded")]
    instances = ha.api_get("/instances?app=hello-python")
    assert len(instances) == 2  # exactly the desired count

    ha.start_server_at(old)  # it comes back as a follower and serves the API
    assert ha.leader_index() == new
    assert len(ha.cli_json("apps")["apps"]) == 1

    # telemetry lives on the leader: pushes and reads that reach a follower are forwarded
    follower = next(i for i in range(3) if i != new)
    ha.env["AETHER_SERVER"] = ha.server_urls[follower]
    wait_for(
        lambda: (
            {
                name
                for name, node in (ha.cli_json("metrics")["sample"] or {"nodes": {}})[
                    "nodes"
                ].items()
                if not node["stale"]
            }
            == {"n1", "n2"}
        ),
        15,
        "both nodes' telemetry through a follower",
    )


def test_one_etcd_member_down_writes_go_on_and_it_catches_up(ha: HaCluster) -> None:
    _start(ha)
    victim = ha.etcd.leader()  # the raft leader: the hardest member to lose
    ha.etcd.kill(victim)
    ha.cli_json("scale", "hello-python=3")
    wait_for(lambda: len(ha.active("hello-python")) == 3, 30, "3 ACTIVE with a member down")

    ha.etcd.restart(victim)

    def blueprint_on_the_member() -> int:
        """The member's own copy (a serializable read is answered from its local data)."""
        member = ha.etcd.members[victim].client_url
        key = base64.b64encode(b"aether/blueprints/hello-python").decode()
        found = httpx.post(
            f"{member}/v3/kv/range", json={"key": key, "serializable": True}, timeout=2
        ).json()
        kvs = found.get("kvs") or []
        return int(json.loads(base64.b64decode(kvs[0]["value"]))["instances"]) if kvs else -1

    wait_for(lambda: blueprint_on_the_member() == 3, 20, "the member caught up")
    ha.cli_json("scale", "hello-python=2")
    wait_for(
        lambda: (
            len(ha.api_get("/instances?app=hello-python")) == 2
            and len(ha.active("hello-python")) == 2
        ),
        30,
        "exactly 2 again",
    )


def _first_event(
    url: str, token: str, match: Callable[[dict[str, Any]], bool], **params: str
) -> dict[str, Any]:
    """The first event that ``match``es in the stream of the server at ``url``."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.stream(
        "GET", f"{url}/api/v1/events", params=params, headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data:"):
                event: dict[str, Any] = json.loads(line.removeprefix("data:"))
                if event["type"] not in ("ready", "gap") and match(event):
                    return event
    raise AssertionError(f"the stream of {url} ended")


def _position(url: str, token: str) -> str:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.stream("GET", f"{url}/api/v1/events", headers=headers, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                ready: dict[str, Any] = json.loads(line.removeprefix("data:"))
                assert ready["type"] == "ready", ready
                return str(ready["id"])
    raise AssertionError(f"the stream of {url} ended")


def test_every_server_serves_the_same_event_stream(ha: HaCluster) -> None:
    """An event id from one server resumes on any other: the stream is derived from
    the shared state store and records, not from one server's memory."""
    _start(ha)
    first, second, third = ha.server_urls
    since = _position(first, ha.admin_token)
    ha.cli_json("scale", "hello-python=3")
    wait_for(lambda: len(ha.active("hello-python")) == 3, 30, "3 ACTIVE")
    seen = [
        _first_event(
            url,
            ha.admin_token,
            lambda e: e["instances"] == 3,
            type="blueprint_changed",
            target="hello-python",
            last_event_id=since,
        )
        for url in (second, third)
    ]
    # the same event from both. Its id is the whole cursor after it, and how far each
    # server had read the other sources (deployment events here) when it came may
    # differ, so only the store revision part must agree.
    assert {**seen[0], "id": ""} == {**seen[1], "id": "", "ts": seen[0]["ts"]}
    assert seen[0]["id"].split("-")[0] == seen[1]["id"].split("-")[0]
    # one server's id resumes on another after that event, without replaying it
    ha.cli_json("scale", "hello-python=2")
    replayed: list[dict[str, Any]] = []

    def scaled_to_two(event: dict[str, Any]) -> bool:
        if event["ts"] == seen[0]["ts"]:
            replayed.append(event)
        return bool(event["instances"] == 2)

    _first_event(
        third,
        ha.admin_token,
        scaled_to_two,
        type="blueprint_changed",
        target="hello-python",
        last_event_id=seen[0]["id"],
    )
    assert replayed == []
    # record rows too: replayed from the records database by another server
    step = _first_event(
        third,
        ha.admin_token,
        lambda e: e["step"] == "created",
        type="deployment",
        last_event_id=since.split("-")[0] + "-0-0-0",
    )
    assert (step["app"], step["version"]) == ("hello-python", 1)


def test_every_server_serves_the_console(ha: HaCluster) -> None:
    """A console session opened on one server works on every other (sessions live in the
    shared records); a follower's pages and charts read through the same API, which
    forwards telemetry to the leader."""
    _start(ha)
    with signed_in(ha.server_urls[0], ha.admin_token) as client:
        cookie = client.cookies["aether_session"]
    for url in ha.server_urls:
        with httpx.Client(base_url=url, cookies={"aether_session": cookie}, timeout=10) as c:
            page = c.get("/ui/")
            assert page.status_code == 200, page.text
            assert 'data-app="hello-python"' in page.text
            assert 'data-node="n1"' in page.text and 'data-node="n2"' in page.text
            for server in ha.server_urls:  # the overview lists every live server
                assert f"<li>{server}" in page.text

            def telemetry(c: httpx.Client = c) -> bool:
                answer = c.get("/api/v1/metrics/nodes/n1", params={"seconds": 60})
                return answer.status_code == 200 and len(answer.json()) > 0

            wait_for(telemetry, 20, f"n1's telemetry through {url}")
