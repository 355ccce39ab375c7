"""Issue 21: ``aether diag bundle`` writes one archive with the server's and the nodes'
parts, and no secret the cluster holds appears anywhere in it."""

from __future__ import annotations

import base64
import json
import re
import signal
import tarfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.support.cluster import Cluster
from tests.support.ha import HaCluster, stopped_after
from tests.support.postgres import PostgresServer

PG_PASSWORD = "pg-Pa55word-planted-7f3a"
S3_ACCESS_KEY = "AKIAPLANTEDACCESS0001"
S3_SECRET_KEY = "s3-secret-planted-Zx9Qw8Er7Ty6"
ADVISER_KEY = "sk-adviser-planted-0a1b2c3d4e5f"
TENANT_SECRET = "tenant-secret-planted-Lm4Nk5Jh6"

SERVER_FILES = (
    "server/log.txt",
    "server/config.toml",
    "server/versions.json",
    "server/doctor.txt",
    "server/metrics.txt",
    "cluster/nodes.json",
    "cluster/capabilities.json",
    "cluster/events.json",
    "cluster/decisions.json",
    "cluster/risk.json",
    "cluster/migrations.json",
    "cluster/snapshots.json",
)
NODE_FILES = ("log.txt", "config.toml", "capabilities.json", "versions.json", "doctor.txt")


def _files(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        out = {}
        for member in tar.getmembers():
            handle = tar.extractfile(member)
            assert handle is not None, member.name
            out[member.name.removeprefix("aether-diag/")] = handle.read()
        return out


def _forms(secret: str) -> set[bytes]:
    raw = secret.encode()
    return {
        raw,
        quote(secret, safe="").encode(),
        base64.b64encode(raw),
        base64.b64encode(raw).rstrip(b"="),
        base64.urlsafe_b64encode(raw).rstrip(b"="),
    }


def _pem_body(path: Path) -> list[str]:
    """The base64 lines of a PEM key: any one of them in the bundle is a leak."""
    return [line for line in path.read_text().splitlines() if line and "-----" not in line]


def _key_lines(dirs: list[Path]) -> dict[str, str]:
    """Every line of every private key under ``dirs``, as secrets to look for."""
    keys = [key for d in dirs for key in d.rglob("*.key")]
    assert keys, "no TLS key to look for"
    return {f"{key} line {n}": line for key in keys for n, line in enumerate(_pem_body(key))}


def _assert_no_secret(files: dict[str, bytes], secrets: dict[str, str]) -> None:
    for name, value in secrets.items():
        for form in _forms(value):
            for path, data in files.items():
                assert form not in data, f"the {name} appears in {path}"
    assert b"PRIVATE KEY-----" not in b"".join(files.values())


def test_bundle_holds_every_part_and_no_secret(cluster: Cluster, tmp_path: Path) -> None:
    with PostgresServer.launched() as pg:
        records = f"postgresql+psycopg://aether:{PG_PASSWORD}@127.0.0.1:{pg.port}/postgres"
        cluster.env.update(
            {
                "AETHER_RECORDS_URL": records,
                "AETHER_S3_ACCESS_KEY": S3_ACCESS_KEY,
                "AETHER_S3_SECRET_KEY": S3_SECRET_KEY,
                "AETHER_ADVISER_TACTICAL_API_KEY": ADVISER_KEY,
                "AETHER_LOG_LEVEL": "info",
            }
        )
        cluster.start_server()
        cluster.start_node("n1")
        (tmp_path / "tenant-secret").write_text(TENANT_SECRET)
        cluster.cli("secrets", "set", "planted", "--from-file", str(tmp_path / "tenant-secret"))

        out = tmp_path / "bundle.tar.gz"
        shown = cluster.cli("diag", "bundle", "--since", "1h", "--nodes", "all", "-o", str(out))
        assert "nodes/n1/log.txt" in shown.stdout, shown.stdout
        assert out.stat().st_mode & 0o077 == 0  # the file is the operator's alone
        files = _files(out)

        manifest = json.loads(files["manifest.json"])
        assert manifest["missing"] == {}, manifest
        for name in SERVER_FILES:
            assert name in files, (name, sorted(files))
        for name in NODE_FILES:
            assert f"nodes/n1/{name}" in files, (name, sorted(files))
        for name in (
            "server/log.txt",
            "server/config.toml",
            "server/doctor.txt",
            "server/metrics.txt",
            "nodes/n1/config.toml",
            "nodes/n1/doctor.txt",
            "nodes/n1/log.txt",
        ):
            assert files[name].strip(), f"{name} is empty"
        nodes = json.loads(files["cluster/nodes.json"])
        assert [n["id"] for n in nodes] == ["n1"]
        assert json.loads(files["cluster/capabilities.json"])["n1"]["cpus"] > 0
        assert json.loads(files["nodes/n1/capabilities.json"])["cpus"] > 0
        versions = json.loads(files["server/versions.json"])
        assert versions["aether"] and versions["python"] and "engines" in versions
        events = json.loads(files["cluster/events.json"])
        assert any("secrets" in str(e.get("action", "")) for e in events), events[:5]
        assert b"aether_" in files["server/metrics.txt"]
        config = files["server/config.toml"].decode()
        assert "s3_secret_key = " in config and "<redacted>" in config
        assert "records_url = " in config
        assert b"join_token = '<redacted>'" in files["nodes/n1/config.toml"]

        secrets = {
            "admin token": cluster.admin_token,
            "join token": cluster.join_token,
            "node credential": (cluster.root / "n1" / "node.credential").read_text().strip(),
            "postgres password": PG_PASSWORD,
            "s3 access key": S3_ACCESS_KEY,
            "s3 secret key": S3_SECRET_KEY,
            "adviser api key": ADVISER_KEY,
            "tenant secret": TENANT_SECRET,
        }
        secrets.update(_key_lines([cluster.server_dir, cluster.root / "n1"]))
        _assert_no_secret(files, secrets)

        alone = tmp_path / "alone.tar.gz"
        cluster.cli("diag", "bundle", "--nodes", "none", "--since", "5m", "-o", str(alone))
        assert not [name for name in _files(alone) if name.startswith("nodes/")]
        unknown = cluster.cli("diag", "bundle", "--nodes", "n1,nope", check=False)
        assert unknown.returncode != 0 and "no live node named nope" in unknown.stderr


@pytest.fixture
def ha(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[HaCluster]:
    # a 5 s lease: a node stopped just before a bundle request is still live for it
    with stopped_after(HaCluster(tmp_path, lease_ttl=5.0), request) as cluster:
        yield cluster


def _logged_url(log: Path, pattern: str) -> str:
    found = re.search(pattern, log.read_text())
    assert found, f"{pattern!r} not in {log}"
    return found.group(1)


def test_in_ha_every_node_sends_its_part_whichever_server_it_calls(ha: HaCluster) -> None:
    """Three servers on etcd; n1 calls server 0, n2 server 1; the bundle is asked of
    server 2, which no node calls: both nodes' parts are in it, and no secret is."""
    ha.env["AETHER_LOG_LEVEL"] = "info"  # the nodes log which server they call
    ha.start_servers()
    everyone = ha.api
    for index, name in ((0, "n1"), (1, "n2")):
        ha.api = ha.server_urls[index]  # the node knows only this server's API URL
        ha.start_node(name)
    ha.api = everyone
    node_ports = [
        _logged_url(ha.root / f"server{i}.log", r"nodes call (https://\S+) \(mutual TLS\)")
        for i in range(3)
    ]
    for index, name in ((0, "n1"), (1, "n2")):  # the node port it calls first is its server's
        called = _logged_url(ha.root / f"{name}.log", r"; calling (https://[^,\s]+)")
        assert called == node_ports[index], (name, called, node_ports)

    out = ha.root / "bundle.tar.gz"
    ha.env["AETHER_SERVER"] = ha.server_urls[2]
    shown = ha.cli("diag", "bundle", "--since", "1h", "--nodes", "all", "-o", str(out))
    files = _files(out)
    manifest = json.loads(files["manifest.json"])
    assert manifest["missing"] == {}, (manifest, shown.stdout)
    versions = json.loads(files["server/versions.json"])
    assert versions["server_id"] == ha.server_urls[2]
    for node in ("n1", "n2"):
        for name in NODE_FILES:
            assert f"nodes/{node}/{name}" in files, (node, name, sorted(files))
        assert files[f"nodes/{node}/log.txt"].strip(), f"{node}'s log is empty"
        assert f"node_id = '{node}'".encode() in files[f"nodes/{node}/config.toml"]
        assert b"join_token = '<redacted>'" in files[f"nodes/{node}/config.toml"]

    secrets = {
        "admin token": ha.admin_token,
        "join token": ha.join_token,
        **{
            f"{node} credential": (ha.root / node / "node.credential").read_text().strip()
            for node in ("n1", "n2")
        },
        **_key_lines([ha.server_dir, ha.root / "n1", ha.root / "n2"]),
    }
    _assert_no_secret(files, secrets)

    # a node that does not answer in time is listed as missing, with the reason
    # (asked at once: n2's 5 s lease, renewed at most a third of it ago, still holds)
    ha.kill(ha.nodes["n2"], signal.SIGSTOP)
    try:
        answer = httpx.post(
            f"{ha.server_urls[2]}/api/v1/diag/bundle",
            params={"nodes": "n1,n2", "wait": 3},
            headers={"Authorization": f"Bearer {ha.admin_token}"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        late = ha.root / "late.tar.gz"
        late.write_bytes(answer.content)
        files = _files(late)
        missing = json.loads(files["manifest.json"])["missing"]
        assert list(missing) == ["nodes/n2/"], missing
        assert "did not send its part within 3 s" in missing["nodes/n2/"]
        assert "nodes/n1/log.txt" in files
    finally:
        ha.kill(ha.nodes["n2"], signal.SIGCONT)
