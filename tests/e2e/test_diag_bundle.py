"""Issue 21: ``aether diag bundle`` writes one archive with the server's and the nodes'
parts, and no secret the cluster holds appears anywhere in it."""

from __future__ import annotations

import base64
import json
import tarfile
from pathlib import Path
from urllib.parse import quote

from tests.support.cluster import Cluster
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
        keys = [*cluster.server_dir.rglob("*.key"), *(cluster.root / "n1").rglob("*.key")]
        assert keys, "no TLS key to look for"
        for key in keys:
            for n, line in enumerate(_pem_body(key)):
                secrets[f"{key.name} line {n}"] = line
        whole = b"".join(files.values())
        for name, value in secrets.items():
            for form in _forms(value):
                for path, data in files.items():
                    assert form not in data, f"the {name} appears in {path}"
        assert b"PRIVATE KEY-----" not in whole

        alone = tmp_path / "alone.tar.gz"
        cluster.cli("diag", "bundle", "--nodes", "none", "--since", "5m", "-o", str(alone))
        assert not [name for name in _files(alone) if name.startswith("nodes/")]
        unknown = cluster.cli("diag", "bundle", "--nodes", "n1,nope", check=False)
        assert unknown.returncode != 0 and "no live node named nope" in unknown.stderr
