"""The node port: nodes call over mutual TLS with the certificate they got at join.

A real server (``node_auth`` mtls, the default) and real TLS clients: a node joins
with a single-use token, calls with its certificate and credential, renews; what
is not a node's own certificate (none, plain HTTP, another CA's, a self-signed
one, an expired one, one naming another node) is refused and logged.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aether.model.trust import issuing
from aether.trust import ca, tls
from tests.support.api import bearer, unique
from tests.support.server import RunningServer, running_server

CAPS = {"cpus": 1, "memory_mb": 512, "drivers": ["process"]}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("mtls"), node_auth="mtls") as running:
        yield running


class Node:
    """A node as far as its identity goes: key, credential, certificate, CAs, URL."""

    def __init__(self, srv: RunningServer, node: str, token: str | None = None) -> None:
        self.id = node
        self.key = ca.new_key()
        answer = httpx.post(
            f"{srv.base_url}/api/v1/nodes/join",
            json={"id": node, "csr": ca.new_request(self.key, node)},
            headers=bearer(token or srv.join_token),
            timeout=10,
        )
        assert answer.status_code == 201, answer.text
        joined = answer.json()
        self.credential: str = joined["credential"]
        self.certificate: str = joined["certificate"]
        self.authorities: list[str] = joined["authorities"]
        self.url: str = joined["node_urls"][0]

    def context(self, certificate: str | None = None) -> ssl.SSLContext:
        return tls.client_context(
            self.authorities, certificate or self.certificate, ca.key_pem(self.key)
        )

    def client(self, certificate: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            verify=self.context(certificate),
            headers=bearer(self.credential),
            timeout=10,
        )

    def register(self, http: httpx.Client) -> httpx.Response:
        return http.post(
            "/api/v1/nodes/register",
            json={"id": self.id, "capabilities": CAPS, "router_url": "http://127.0.0.1:1"},
        )


def _authority(srv: RunningServer) -> ca.Authority:
    trust = srv.ctx.trust
    assert trust.record is not None
    record = issuing(trust.record, time.time())
    return ca.Authority(record.cert, trust.secrets.unseal(record.key))


def _refused(node: Node, context: ssl.SSLContext) -> BaseException:
    refusals = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)
    with (
        httpx.Client(base_url=node.url, verify=context, timeout=10) as http,
        pytest.raises(refusals) as exc,
    ):
        node.register(http)
    return exc.value


def test_a_node_calls_with_its_certificate_and_credential(srv: RunningServer) -> None:
    node = Node(srv, unique("mtls"))
    cert = ca.load_certificate(node.certificate)
    who = ca.identity_of(cert)
    assert who == ca.Identity("aether", "node", node.id)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == dt.timedelta(hours=24)  # short-lived by default
    assert node.url.startswith("https://127.0.0.1:")
    with node.client() as http:
        registered = node.register(http)
        assert registered.status_code == 200, registered.text
        beat = http.post(
            f"/api/v1/nodes/{node.id}/heartbeat", json={"lease_id": registered.json()["lease_id"]}
        )
        assert beat.status_code == 200, beat.text
        assert beat.json()["authorities"] == [ca.fingerprint(a) for a in node.authorities]


def test_the_credential_alone_is_refused_on_the_api_port(srv: RunningServer) -> None:
    node = Node(srv, unique("mtls"))
    answer = httpx.post(
        f"{srv.base_url}/api/v1/nodes/register",
        json={"id": node.id, "capabilities": CAPS, "router_url": "http://127.0.0.1:1"},
        headers=bearer(node.credential),
        timeout=10,
    )
    assert answer.status_code == 401
    assert answer.json()["code"] == "node_identity"
    assert "mutual TLS" in answer.json()["message"]


def test_a_single_use_join_token_joins_once(srv: RunningServer) -> None:
    made = httpx.post(
        f"{srv.base_url}/api/v1/tokens",
        json={"role": "join", "name": "one node", "uses": 1, "expires_in": 3600},
        headers=bearer(srv.admin_token),
        timeout=10,
    )
    assert made.status_code == 201, made.text
    assert made.json()["uses_left"] == 1
    token = made.json()["token"]
    Node(srv, unique("once"), token)
    replayed = httpx.post(
        f"{srv.base_url}/api/v1/nodes/join",
        json={"id": unique("again"), "csr": ca.new_request(ca.new_key(), "again")},
        headers=bearer(token),
        timeout=10,
    )
    assert replayed.status_code == 401, replayed.text
    assert replayed.json()["code"] == "join_token_used"
    listed = httpx.get(
        f"{srv.base_url}/api/v1/tokens", headers=bearer(srv.admin_token), timeout=10
    ).json()
    (row,) = [t for t in listed if t["id"] == made.json()["id"]]
    assert row["uses_left"] == 0


def test_uses_are_for_join_tokens_only(srv: RunningServer) -> None:
    made = httpx.post(
        f"{srv.base_url}/api/v1/tokens",
        json={"role": "viewer", "name": "x", "uses": 1},
        headers=bearer(srv.admin_token),
        timeout=10,
    )
    assert made.status_code == 400
    assert "join token" in made.json()["message"]


def test_a_bad_csr_is_refused_and_the_token_keeps_its_use(srv: RunningServer) -> None:
    made = httpx.post(
        f"{srv.base_url}/api/v1/tokens",
        json={"role": "join", "name": "one node", "uses": 1},
        headers=bearer(srv.admin_token),
        timeout=10,
    ).json()
    bad = httpx.post(
        f"{srv.base_url}/api/v1/nodes/join",
        json={"id": unique("bad"), "csr": "-----BEGIN CERTIFICATE REQUEST-----\nnope\n"},
        headers=bearer(made["token"]),
        timeout=10,
    )
    assert bad.status_code == 400 and bad.json()["message"].startswith("csr:"), bad.text
    Node(srv, unique("good"), made["token"])  # the use was still there


def test_what_is_not_a_nodes_own_certificate_is_refused_and_logged(
    srv: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aether.server")
    node = Node(srv, unique("mtls"))
    # no client certificate at all
    _refused(node, tls.client_context(node.authorities))
    # another CA's certificate for the same identity
    other = ca.new_authority("aether", dt.datetime.now(dt.UTC))
    key = ca.new_key()
    forged = ca.issue(
        other,
        public_key=key.public_key(),
        uri=ca.spiffe_id("aether", "node", node.id),
        now=dt.datetime.now(dt.UTC),
        lifetime=dt.timedelta(hours=1),
    )
    _refused(node, tls.client_context(node.authorities, forged, ca.key_pem(key)))
    # a self-signed certificate (a CA of its own)
    _refused(node, tls.client_context(node.authorities, other.cert_pem, other.key_pem))
    # the cluster CA's, but expired
    expired = ca.issue(
        _authority(srv),
        public_key=node.key.public_key(),
        uri=ca.spiffe_id("aether", "node", node.id),
        now=dt.datetime.now(dt.UTC) - dt.timedelta(days=2),
        lifetime=dt.timedelta(hours=1),
    )
    _refused(node, node.context(expired))
    # plain HTTP on the node port
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(node.url.replace("https://", "http://") + "/readyz", timeout=10)
    deadline = time.monotonic() + 5
    wanted = [
        "no client certificate",
        "unable to get local issuer certificate",
        "self-signed certificate",
        "certificate has expired",
        "plain HTTP on the node port",
    ]
    while time.monotonic() < deadline and not all(w in caplog.text for w in wanted):
        time.sleep(0.05)
    for reason in wanted:
        assert reason in caplog.text, (reason, caplog.text)
    assert "node port: refused a connection from 127.0.0.1:" in caplog.text


def test_a_certificate_naming_another_node_is_refused(srv: RunningServer) -> None:
    mine, other = Node(srv, unique("mine")), Node(srv, unique("other"))
    # my credential over a connection with the other node's certificate
    with httpx.Client(
        base_url=mine.url,
        verify=other.context(),
        headers=bearer(mine.credential),
        timeout=10,
    ) as http:
        answer = mine.register(http)
    assert answer.status_code == 401
    assert f"names node {other.id!r}, not node {mine.id!r}" in answer.json()["message"]


def test_a_node_renews_its_certificate_and_goes_on(srv: RunningServer) -> None:
    node = Node(srv, unique("renew"))
    with node.client() as http:
        assert node.register(http).status_code == 200
        renewed = http.post(
            f"/api/v1/nodes/{node.id}/certificate",
            json={"csr": ca.new_request(node.key, node.id)},
        )
        assert renewed.status_code == 200, renewed.text
        body: dict[str, Any] = renewed.json()
        assert body["certificate"] != node.certificate
        assert body["renew_at"] < body["not_after"]
        # another node's certificate is not renewed by this one
        theirs = http.post(
            f"/api/v1/nodes/{unique('theirs')}/certificate",
            json={"csr": ca.new_request(node.key, node.id)},
        )
        assert theirs.status_code == 403
    with node.client(body["certificate"]) as http:
        assert node.register(http).status_code == 200


def test_a_revoked_node_is_cut_off(srv: RunningServer) -> None:
    node = Node(srv, unique("revoked"))
    with node.client() as http:
        assert node.register(http).status_code == 200
        revoked = httpx.post(
            f"{srv.base_url}/api/v1/nodes/{node.id}/revoke",
            headers=bearer(srv.admin_token),
            timeout=10,
        )
        assert revoked.status_code == 200, revoked.text
        assert node.register(http).status_code == 401  # its very next call


def test_a_ca_rotation_trusts_both_then_only_the_new(tmp_path: Path) -> None:
    with running_server(tmp_path / "rotating", node_auth="mtls") as srv:
        node = Node(srv, unique("rot"))
        old = ca.fingerprint(node.authorities[0])
        rotated = httpx.post(
            f"{srv.base_url}/api/v1/ca/rotate",
            json={"overlap_seconds": 3},
            headers=bearer(srv.admin_token),
            timeout=10,
        )
        assert rotated.status_code == 200, rotated.text
        shown = rotated.json()["authorities"]
        assert [a["fingerprint"] == old for a in shown] == [True, False]
        assert [(a["issuing"], a["serving"]) for a in shown] == [(False, True), (True, False)]
        with node.client() as http:  # the old certificate still works in the overlap
            registered = node.register(http)
            assert registered.status_code == 200, registered.text
            beat = http.post(
                f"/api/v1/nodes/{node.id}/heartbeat",
                json={"lease_id": registered.json()["lease_id"]},
            )
            assert len(beat.json()["authorities"]) == 2  # the node learns of the new CA
            renewed = http.post(
                f"/api/v1/nodes/{node.id}/certificate",
                json={"csr": ca.new_request(node.key, node.id)},
            ).json()
        node.authorities = renewed["authorities"]
        new_cert = renewed["certificate"]
        assert ca.signed_by(ca.load_certificate(new_cert), node.authorities[1])
        time.sleep(4.5)  # the overlap is over: servers sign with the new CA too
        with node.client(new_cert) as http:
            assert node.register(http).status_code == 200
        _refused(node, node.context())  # the old CA's certificate no longer
        trust = httpx.get(f"{srv.base_url}/api/v1/cluster/trust", timeout=10).json()
        assert old not in trust["fingerprints"] and len(trust["fingerprints"]) == 1


def test_node_port_connections_send_without_delay(srv: RunningServer) -> None:
    """Small answers go out at once (TCP_NODELAY): without it an answer written in two
    pieces waited for the client's delayed ACK, ~40 ms (found by bench.node_tls_bench)."""
    node = Node(srv, unique("nodelay"))
    with node.client() as http:
        assert node.register(http).status_code == 200
        connections = list(srv.app.state.node_port.server.server_state.connections)
        assert connections
        for protocol in connections:
            sock = protocol.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_the_ca_still_signs_after_the_secrets_key_is_rotated(tmp_path: Path) -> None:
    """The CA's key is sealed with the secrets key: a rotation of that key re-seals it
    too, so the CA signs on (and no longer needs the old key in secrets.key.old)."""
    with running_server(tmp_path / "kek", node_auth="mtls") as srv:
        rotated = httpx.post(
            f"{srv.base_url}/api/v1/secrets:rotate-key",
            headers=bearer(srv.admin_token),
            timeout=30,
        )
        assert rotated.status_code == 200, rotated.text
        assert rotated.json()["remaining"] == {}
        node = Node(srv, unique("after-kek"))
        with node.client() as http:
            assert node.register(http).status_code == 200
        again = httpx.post(
            f"{srv.base_url}/api/v1/ca/rotate", json={}, headers=bearer(srv.admin_token), timeout=30
        )
        assert again.status_code == 200, again.text
