"""Deploying an agent on a real two-node cluster, as a user does: ``aether agents
deploy --replicas 2`` places one replica on each node and both routers serve the
agent; with one replica, draining its node moves it to the other (``aether
decisions`` says why); disabling it withdraws it from the routers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.support.cluster import Cluster
from tests.support.waiting import wait_for


def _agent(cluster: Cluster) -> dict[str, Any]:
    agent: dict[str, Any] = cluster.cli_json("agents", "get", "helper")
    return agent


def _placed_on(cluster: Cluster) -> list[str]:
    deployment = _agent(cluster)["deployment"]
    return [] if deployment is None else sorted(deployment["nodes"])


def _through(cluster: Cluster, node: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {cluster.admin_token}"}
    return httpx.get(f"{cluster.router(node)}/agents/helper", headers=headers, timeout=10)


def _serves(cluster: Cluster, node: str) -> Callable[[], bool]:
    return lambda: _through(cluster, node).status_code == 200


def test_deploy_places_a_replica_per_node_and_a_drained_node_s_replica_moves(
    cluster: Cluster,
) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    cluster.start_node("n2")
    cluster.cli("models", "add", "local", "--base-url", "http://127.0.0.1:9/v1", "--model-id", "m")
    made = cluster.cli_json("agents", "create", "helper", "--model", "model://local")
    assert made["status"] == "created" and made["deployment"] is None

    deployed = cluster.cli_json("agents", "deploy", "helper", "--replicas", "2")
    assert deployed["status"] == "deployed" and deployed["deployment"]["replicas"] == 2
    wait_for(lambda: _placed_on(cluster) == ["n1", "n2"], 30, "a replica on each node")
    assert _agent(cluster)["deployment"]["status"] == "running"
    for node in ("n1", "n2"):  # each node's router learns the placement from its stream
        wait_for(_serves(cluster, node), 30, f"{node} serves it")
        assert _through(cluster, node).json()["id"] == made["id"]

    cluster.cli_json("agents", "deploy", "helper", "--replicas", "1")
    wait_for(lambda: len(_placed_on(cluster)) == 1, 30, "one replica left")
    (first,) = _placed_on(cluster)
    other = "n2" if first == "n1" else "n1"
    cluster.cli("drain", first)
    wait_for(lambda: _placed_on(cluster) == [other], 30, "the replica to leave the drained node")
    decisions = cluster.cli_json("decisions", "--kind", "agent")["decisions"]
    move = decisions[0]
    assert move["target"] == "helper" and move["reason"] == f"node {first} is draining"
    assert move["action"]["from"] == first and move["action"]["to"] == other
    text = cluster.cli("decisions", "--kind", "agent").stdout
    assert f"node {first} is draining" in text

    cluster.cli("agents", "disable", "helper")
    assert _agent(cluster)["deployment"] is None
    wait_for(lambda: _through(cluster, other).status_code == 404, 30, "the router to drop it")
    assert _through(cluster, other).json()["code"] == "not_found"
