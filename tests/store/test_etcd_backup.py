"""`aether backup create|restore` against real etcd clusters: three members, and secured.

``etcdctl snapshot save`` takes exactly one member, so a backup of a three-member
cluster must pick one; on a secured member the server's TLS files and
credentials must reach etcdctl. Both round trips restore into a fresh prefix.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from aether.backup.archive import read_manifest
from aether.cli.main import main
from tests.store.conftest import SECURE_PASSWORD
from tests.support.api import deploy, upload_random
from tests.support.etcd import EtcdCluster
from tests.support.server import running_server


def _secure(cluster: EtcdCluster) -> dict[str, Any]:
    pki = cluster.pki
    assert pki is not None
    return {
        "etcd_ca_file": str(pki.ca_file),
        "etcd_cert_file": str(pki.client_cert_file),
        "etcd_key_file": str(pki.client_key_file),
        "etcd_username": "root",
        "etcd_password": SECURE_PASSWORD,
    }


def _config(path: Path, data_dir: Path, settings: dict[str, Any]) -> Path:
    lines = [f"data_dir = {json.dumps(str(data_dir))}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


async def _blueprint(base_url: str, token: str, app: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        digest = await upload_random(http, token, 2048)
        response = await deploy(http, token, app, digest, instances=1, key="k1")
        assert response.status_code == 201, response.text


def _round_trip(
    cluster: EtcdCluster, settings: dict[str, Any], tmp_path: Path, capsys: Any
) -> None:
    tag = uuid.uuid4().hex[:8]
    app = f"backed-up-{tag}"
    source = {"state_url": f"{cluster.url}/src-{tag}", **settings}
    out = tmp_path / "backup.tar.gz"
    with running_server(tmp_path / "source", **source) as server:
        asyncio.run(_blueprint(server.base_url, server.admin_token, app))
    config = _config(tmp_path / "source.toml", tmp_path / "source", source)
    assert main(["backup", "create", "--config", str(config), "--out", str(out)]) == 0
    capsys.readouterr()
    state = read_manifest(out)["parts"]["state"]
    assert state["engine"] == "etcd"
    assert "state.etcd-snapshot.db" in state["files"]

    target = {"state_url": f"{cluster.url}/dst-{tag}", **settings}
    config = _config(tmp_path / "target.toml", tmp_path / "target", target)
    assert main(["backup", "restore", str(out), "--config", str(config)]) == 0, capsys.readouterr()
    restored = cluster.etcdctl("get", "--print-value-only", f"dst-{tag}/blueprints/{app}")
    assert app in json.loads(restored).values()
    for prefix in (f"src-{tag}/", f"dst-{tag}/"):
        cluster.etcdctl("del", "--prefix", prefix)


def test_backup_of_a_three_member_cluster(
    etcd_cluster: EtcdCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert len(etcd_cluster.endpoints) == 3
    _round_trip(etcd_cluster, {}, tmp_path, capsys)


def test_backup_of_a_secured_member(
    etcd_secure_cluster: EtcdCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _round_trip(etcd_secure_cluster, _secure(etcd_secure_cluster), tmp_path, capsys)
