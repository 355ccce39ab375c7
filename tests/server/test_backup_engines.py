"""`aether backup create|restore` on the HA engines: state on etcd, artifacts on S3.

One real etcd and one real S3 server (``rclone serve s3``) for the module; each
test uses its own etcd key prefixes and buckets, so "wiping" is taking fresh ones.
The servers are real in-process servers; the backups go through the CLI.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aether.artifacts.digest import digest_hex
from aether.artifacts.s3 import S3ArtifactRegistry, S3Config
from aether.backup.archive import LEADER_KEY, read_manifest
from aether.cli.main import main
from aether.cli.output import EXIT
from aether.client import ApiClient
from aether.store import open_state_store
from tests.support.api import deploy, unique, upload_random
from tests.support.etcd import EtcdCluster
from tests.support.s3 import S3Server, s3_server_process
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    with EtcdCluster(size=1) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server_process(tmp_path_factory.mktemp("s3") / "root") as server:
        yield server


def _engines(etcd: EtcdCluster, s3: S3Server, prefix: str, bucket: str) -> dict[str, Any]:
    return {
        "state_url": f"{etcd.url}/{prefix}",
        "artifacts_url": f"s3://{bucket}/art",
        "s3_endpoint_url": s3.endpoint_url,
        "s3_access_key": s3.access_key,
        "s3_secret_key": s3.secret_key,
        "s3_region": s3.region,
    }


def _config(path: Path, data_dir: Path, **settings: Any) -> Path:
    lines = [f"data_dir = {json.dumps(str(data_dir))}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _json(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


async def _keys(url: str) -> dict[str, bytes]:
    store = await open_state_store(url)
    try:
        kvs, _ = await store.range("")
    finally:
        await store.close()
    return {kv.key: kv.value for kv in kvs}


async def _bucket(s3: S3Server, bucket: str) -> list[str]:
    config = S3Config.from_url(
        f"s3://{bucket}/art",
        endpoint_url=s3.endpoint_url,
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        region=s3.region,
    )
    async with S3ArtifactRegistry(config) as registry:
        return await registry.list_digests()


async def _populate(srv: RunningServer, app: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as http:
        digests = [await upload_random(http, srv.admin_token, 4096) for _ in range(2)]
        for i, digest in enumerate(digests):
            response = await deploy(http, srv.admin_token, app, digest, instances=1, key=f"k{i}")
            assert response.status_code == 201, response.text
    async with ApiClient(srv.base_url, srv.admin_token) as client:
        deployments = sorted(d.id for d in await client.deployments(app))
    return {"digests": digests, "deployments": deployments}


async def _observe(srv: RunningServer, app: str, seen: dict[str, Any], tmp: Path) -> None:
    async with ApiClient(srv.base_url, srv.admin_token) as client:
        assert app in {a.name for a in await client.apps()}
        assert sorted(d.id for d in await client.deployments(app)) == seen["deployments"]
        for digest in seen["digests"]:
            await client.download_artifact(digest, tmp / "artifact")
            assert hashlib.sha256((tmp / "artifact").read_bytes()).hexdigest() == digest_hex(digest)


def test_etcd_and_s3_backup_restores_into_a_wiped_cluster(
    etcd: EtcdCluster, s3: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = unique("ha-backup")
    source_bucket, target_bucket = s3.make_bucket(unique("src")), s3.make_bucket(unique("dst"))
    source = _engines(etcd, s3, unique("src"), source_bucket)
    out = tmp_path / "backup.tar.gz"
    config = _config(tmp_path / "source.toml", tmp_path / "source", **source)
    with running_server(tmp_path / "source", **source) as srv:
        seen = asyncio.run(_populate(srv, app))
        before = asyncio.run(_keys(source["state_url"]))
        assert f"blueprints/{app}" in before and LEADER_KEY in before
        code = main(
            ["backup", "create", "--config", str(config), "--out", str(out), "--format", "json"]
        )
        result = _json(capsys)
        assert code == 0, result
        # a restore into the state store a server runs on is refused, even with --force
        code = main(["backup", "restore", str(out), "--config", str(config), "--force"])
        assert code == EXIT["io"]
        assert "stop every server" in capsys.readouterr().err

    parts = result["manifest"]["parts"]
    assert parts["state"]["engine"] == "etcd"
    assert parts["state"]["skipped_leased"] >= 1  # the leader key, at least
    assert parts["artifacts"]["engine"] == "s3" and parts["artifacts"]["count"] == 2
    files = read_manifest(out)["files"]
    assert {"state.jsonl", "state.etcd-snapshot.db"} <= set(files)
    for digest in seen["digests"]:
        hex_ = digest_hex(digest)
        assert files[f"artifacts/sha256/{hex_[:2]}/{hex_}"] == digest
    assert not any(name.startswith("blobs/") for name in files)  # a cache: never copied

    # a wiped cluster: a fresh etcd prefix, a fresh bucket, a new data directory
    target = _engines(etcd, s3, unique("dst"), target_bucket)
    config = _config(tmp_path / "target.toml", tmp_path / "target", **target)
    code = main(["backup", "restore", str(out), "--config", str(config), "--format", "json"])
    summary = _json(capsys)
    assert code == 0, summary
    assert summary["parts"]["state"]["keys"] == parts["state"]["keys"]
    assert summary["parts"]["artifacts"]["uploaded"] == 2
    after = asyncio.run(_keys(target["state_url"]))
    assert LEADER_KEY not in after  # leases are not restored
    assert after == {k: v for k, v in before.items() if k in after}
    assert after[f"blueprints/{app}"] == before[f"blueprints/{app}"]
    assert sorted(asyncio.run(_bucket(s3, target_bucket))) == sorted(seen["digests"])

    with running_server(tmp_path / "target", **target) as restored:
        assert restored.admin_token == srv.admin_token
        asyncio.run(_observe(restored, app, seen, tmp_path))
    # the prefix holds Aether keys now: refused, unless --force; the bucket's digests
    # are duplicates, not errors
    assert main(["backup", "restore", str(out), "--config", str(config)]) == EXIT["io"]
    assert "not empty" in capsys.readouterr().err
    # with an empty data directory, the etcd prefix is what refuses
    config = _config(tmp_path / "again.toml", tmp_path / "again", **target)
    assert main(["backup", "restore", str(out), "--config", str(config)]) == EXIT["io"]
    assert "already holds" in capsys.readouterr().err
    code = main(
        ["backup", "restore", str(out), "--config", str(config), "--force", "--format", "json"]
    )
    summary = _json(capsys)
    assert code == 0, summary
    assert summary["parts"]["artifacts"]["duplicates"] == 2
    assert summary["parts"]["state"]["replaced"] > 0

    # the dump is engine-neutral: the same backup into the embedded SQLite store and a
    # local artifact directory
    embedded = tmp_path / "embedded"
    assert main(["backup", "restore", str(out), "--data-dir", str(embedded)]) == 0
    capsys.readouterr()
    with running_server(embedded) as restored:
        asyncio.run(_observe(restored, app, seen, tmp_path))
        kv = restored.run(restored.ctx.store.get(f"blueprints/{app}"))
        assert kv is not None and kv.value == before[f"blueprints/{app}"]


def test_sqlite_backup_restores_into_etcd_and_s3(
    etcd: EtcdCluster, s3: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other way round: an embedded server's backup onto etcd and a bucket."""
    app = unique("embedded")
    out = tmp_path / "backup.tar.gz"
    with running_server(tmp_path / "source") as srv:
        seen = asyncio.run(_populate(srv, app))
        blueprint = srv.run(srv.ctx.store.get(f"blueprints/{app}"))
        assert blueprint is not None
        code = main(
            [
                *("backup", "create", "--data-dir", str(tmp_path / "source")),
                *("--server", srv.base_url, "--out", str(out)),
            ]
        )
        assert code == 0
    capsys.readouterr()
    target = _engines(etcd, s3, unique("dst"), s3.make_bucket(unique("dst")))
    config = _config(tmp_path / "target.toml", tmp_path / "target", **target)
    code = main(["backup", "restore", str(out), "--config", str(config), "--format", "json"])
    summary = _json(capsys)
    assert code == 0, summary
    assert summary["parts"]["state"]["from"] == "sqlite"
    assert asyncio.run(_keys(target["state_url"]))[f"blueprints/{app}"] == blueprint.value
    with running_server(tmp_path / "target", **target) as restored:
        asyncio.run(_observe(restored, app, seen, tmp_path))


def _rewrite(archive: Path, out: Path, change: dict[str, bytes]) -> None:
    with tarfile.open(archive, "r:gz") as src, tarfile.open(out, "w:gz") as dst:
        for member in src:
            data = src.extractfile(member)
            body = data.read() if data else b""
            if member.name in change:
                body = change[member.name]
                member.size = len(body)
            dst.addfile(member, io.BytesIO(body))


def test_corrupt_artifacts_are_refused_before_anything_is_written(
    etcd: EtcdCluster, s3: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = s3.make_bucket(unique("src"))
    source = _engines(etcd, s3, unique("src"), bucket)
    config = _config(tmp_path / "source.toml", tmp_path / "source", **source)
    out = tmp_path / "backup.tar.gz"
    with running_server(tmp_path / "source", **source) as srv:
        seen = asyncio.run(_populate(srv, unique("corrupt")))
    assert main(["backup", "create", "--config", str(config), "--out", str(out)]) == 0
    capsys.readouterr()

    # a damaged artifact in the archive: nothing reaches etcd, the bucket or the data dir
    hex_ = digest_hex(seen["digests"][0])
    name = f"artifacts/sha256/{hex_[:2]}/{hex_}"
    bad = tmp_path / "bad.tar.gz"
    _rewrite(out, bad, {name: b"not the artifact"})
    target = _engines(etcd, s3, unique("dst"), s3.make_bucket(unique("dst")))
    target_config = _config(tmp_path / "target.toml", tmp_path / "target", **target)
    assert main(["backup", "restore", str(bad), "--config", str(target_config)]) == EXIT["io"]
    err = capsys.readouterr().err
    assert "does not match its manifest" in err and name in err
    assert asyncio.run(_keys(target["state_url"])) == {}
    assert asyncio.run(_bucket(s3, target["artifacts_url"][5:].split("/")[0])) == []
    assert not any((tmp_path / "target").iterdir())

    # an object corrupted in the bucket itself is refused when the backup is taken
    stored = s3.root / bucket / "art" / "sha256" / digest_hex(seen["digests"][1])
    assert stored.is_file()
    stored.write_bytes(b"bit rot")
    again = tmp_path / "again.tar.gz"
    assert main(["backup", "create", "--config", str(config), "--out", str(again)]) == EXIT["io"]
    assert "corrupt" in capsys.readouterr().err
    assert not again.exists()
    # --no-artifacts leaves the bucket to its own tools
    code = main(
        [
            *("backup", "create", "--config", str(config), "--out", str(again)),
            *("--no-artifacts", "--format", "json"),
        ]
    )
    result = _json(capsys)
    assert code == 0, result
    assert result["manifest"]["parts"]["artifacts"]["included"] is False
    assert not any(n.startswith("artifacts/") for n in read_manifest(again)["files"])
