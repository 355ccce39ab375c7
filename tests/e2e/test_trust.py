"""Node identities end to end, with real processes: a node joins with a single-use
token and from then on talks only mutual TLS; its short-lived certificate renews
while traffic flows; a CA rotation loses no request; a revoked node is cut off; a
replayed join token is refused."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import httpx

from aether.trust import ca
from tests.e2e.test_core_scenario import Probe
from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-python"


def _node_log(cluster: Cluster, name: str) -> str:
    return (cluster.root / f"{name}.log").read_text(errors="replace")


def _issuer(cluster: Cluster, name: str, authorities: list[str]) -> int:
    cert = ca.load_certificate((cluster.root / name / "node.crt").read_text())
    return next(i for i, a in enumerate(authorities) if ca.signed_by(cert, a))


def _authorities(cluster: Cluster) -> list[str]:
    trust = httpx.get(f"{cluster.api}/api/v1/cluster/trust", timeout=10).json()
    return list(trust["authorities"])


def test_a_node_joins_once_then_renews_over_mutual_tls(cluster: Cluster) -> None:
    cluster.env["AETHER_NODE_CERT_SECONDS"] = "6"  # renewed every 4 s
    cluster.start_server()
    token = cluster.cli("tokens", "join", "--ttl", "1h", "--uses", "1").stdout.strip()
    cluster.start_node("n1", token=token)
    cluster.cli_json("deploy", str(EXAMPLE), "--instances", "1")
    probe = Probe(f"{cluster.router('n1')}/apps/hello-python/")
    probe.start()
    try:
        seen: set[str] = set()

        def renewed_three_times() -> bool:
            seen.add((cluster.root / "n1" / "node.crt").read_text())
            return len(seen) >= 4

        wait_for(renewed_three_times, 30, "3 renewals", interval=0.2)
        samples = cluster.api_get("/metrics/nodes/n1?seconds=10")
        assert len(samples) >= 5, samples  # telemetry kept coming through the renewals
    finally:
        probe.stop()
    assert probe.ok > 50 and probe.failures == [], probe.failures
    log = _node_log(cluster, "n1")
    assert "lost its lease" not in log and "joining again" not in log, log[-2000:]
    assert cluster.node_state("n1") == "ready"

    # the same single-use token again: refused, and the second node says why and stops
    cluster.start_node("n2", token=token, wait=False)
    assert cluster.nodes["n2"].wait(timeout=30) != 0
    assert "join token is used up or revoked" in _node_log(cluster, "n2")

    # the server logged the node's refused plain-HTTP call on its node port
    node_url = httpx.get(f"{cluster.api}/api/v1/cluster/trust", timeout=10).json()["node_urls"][0]
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(node_url.replace("https://", "http://") + "/readyz", timeout=5)
    wait_for(
        lambda: "plain HTTP on the node port" in (cluster.root / "server.log").read_text(),
        10,
        "the refusal logged",
    )

    # revoked: the node's next call is refused and it stops trying to act
    cluster.cli("nodes", "revoke", "n1")
    wait_for(
        lambda: cluster.node_state("n1") is None or cluster.nodes["n1"].poll() is not None,
        30,
        "n1 cut off",
    )
    wait_for(lambda: "revoked" in _node_log(cluster, "n1"), 30, "the node says it was revoked")


def test_a_ca_rotation_loses_no_request(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    cluster.start_node("n2")
    cluster.cli_json("deploy", str(EXAMPLE), "--instances", "2")
    wait_for(lambda: len(cluster.active("hello-python")) == 2, 30, "2 ACTIVE")
    before = _authorities(cluster)
    assert len(before) == 1
    probes = [Probe(f"{cluster.router(n)}/apps/hello-python/") for n in ("n1", "n2")]
    for probe in probes:
        probe.start()
    try:
        rotated = cluster.cli_json("ca", "rotate", "--overlap", "8s")
        assert [a["issuing"] for a in rotated["authorities"]] == [False, True]
        both = _authorities(cluster)
        # each node renews from the new CA at its next heartbeat, well inside the overlap
        for name in ("n1", "n2"):

            def renewed(name: str = name) -> bool:
                return _issuer(cluster, name, both) == 1

            wait_for(renewed, 10, f"{name} renewed")
        # the overlap ends: servers sign with (and trust) the new CA only
        wait_for(lambda: len(_authorities(cluster)) == 1, 15, "the old CA retired")
        time.sleep(4)  # heartbeats, pushes and the assignment stream go on over it
        shown = cluster.cli_json("ca", "show")
        assert len(shown["authorities"]) == 1 and shown["authorities"][0]["issuing"]
    finally:
        for probe in probes:
            probe.stop()
    for probe in probes:
        assert probe.ok > 50 and probe.failures == [], probe.failures
    for name in ("n1", "n2"):
        assert cluster.node_state(name) == "ready"
        log = _node_log(cluster, name)
        assert "lost its lease" not in log and "joining again" not in log, log[-2000:]
    assert len(cluster.active("hello-python")) == 2
