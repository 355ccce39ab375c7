"""`aether backup create|restore` against a real server: same apps, deployments, tokens, artifacts.

The backup is taken while the server runs (it holds the SQLite state store's
exclusive lock, so it makes that copy itself), restored into a new data directory,
and a new server started there must show what the first one had.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from aether.artifacts.digest import digest_hex
from aether.backup.archive import read_manifest
from aether.cli.main import main
from aether.cli.output import EXIT
from aether.client import ApiClient
from tests.support.api import deploy, upload_random
from tests.support.server import RunningServer, running_server


def _json(capsys: pytest.CaptureFixture[str]) -> Any:
    """The command's one JSON object (the in-process server prints its own lines too)."""
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


async def _populate(srv: RunningServer, app: str) -> dict[str, Any]:
    operator = srv.mint("operator")
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as http:
        digests = [await upload_random(http, srv.admin_token, 4096) for _ in range(2)]
        for i, digest in enumerate(digests):
            response = await deploy(http, srv.admin_token, app, digest, instances=2, key=f"k{i}")
            assert response.status_code == 201, response.text
    async with ApiClient(srv.base_url, srv.admin_token) as client:
        deployments = sorted(d.id for d in await client.deployments(app))
    return {"digests": digests, "deployments": deployments, "operator": operator}


async def _observe(srv: RunningServer, app: str, seen: dict[str, Any], tmp: Path) -> None:
    async with ApiClient(srv.base_url, srv.admin_token) as client:
        assert app in {a.name for a in await client.apps()}
        assert sorted(d.id for d in await client.deployments(app)) == seen["deployments"]
        for digest in seen["digests"]:
            assert await client.has_artifact(digest)
            await client.download_artifact(digest, tmp / "artifact")
            assert hashlib.sha256((tmp / "artifact").read_bytes()).hexdigest() == digest_hex(digest)
    # the operator token minted before the backup still works
    async with ApiClient(srv.base_url, seen["operator"]) as client:
        assert app in {a.name for a in await client.apps()}


async def _refused(srv: RunningServer, dest: Path) -> None:
    """The whole cluster's state is for the default tenant's admins only."""
    from aether.errors import ForbiddenError

    for token in (srv.new_tenant(), srv.token("operator")):
        async with ApiClient(srv.base_url, token) as client:
            with pytest.raises(ForbiddenError):
                await client.backup_state(dest)


def test_backup_of_a_running_server_restores_into_a_new_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = "backed-up"
    source, out = tmp_path / "source", tmp_path / "backup.tar.gz"
    with running_server(source) as srv:
        seen = asyncio.run(_populate(srv, app))
        code = main(
            [
                *("backup", "create", "--data-dir", str(source), "--server", srv.base_url),
                *("--out", str(out), "--format", "json"),
            ]
        )
        result = _json(capsys)
        assert code == 0, result
        blueprint = srv.run(srv.ctx.store.get(f"blueprints/{app}"))
        assert blueprint is not None
        asyncio.run(_refused(srv, tmp_path / "stolen.db"))
        sealed = srv.ctx.secrets.seal("sk-backed-up")  # as a model's API key is stored
    parts = result["manifest"]["parts"]
    assert parts["state"]["engine"] == "sqlite"
    assert parts["state"]["copied_by"] == "server"  # the running server holds the lock
    assert parts["records"]["engine"] == "sqlite" and parts["records"]["schema_revision"]
    assert parts["artifacts"]["engine"] == "local" and parts["artifacts"]["count"] == 2
    assert parts["secrets"]["files"] == ["admin.token", "join.token", "secrets.key"]
    assert read_manifest(out)["files"] == result["manifest"]["files"]

    target = tmp_path / "restored"
    code = main(["backup", "restore", str(out), "--data-dir", str(target), "--format", "json"])
    summary = _json(capsys)
    assert code == 0, summary
    assert summary["parts"]["state"]["path"] == str(target / "state.db")
    # a second restore into the now non-empty directory is refused, and --force allows it
    assert main(["backup", "restore", str(out), "--data-dir", str(target)]) == EXIT["io"]
    assert "not empty" in capsys.readouterr().err
    assert main(["backup", "restore", str(out), "--data-dir", str(target), "--force"]) == 0
    capsys.readouterr()

    with running_server(target) as restored:
        assert restored.admin_token == srv.admin_token
        assert restored.join_token == srv.join_token
        # the key of the stored secrets came back with the records that need it
        assert restored.ctx.secrets.unseal(sealed) == "sk-backed-up"
        asyncio.run(_observe(restored, app, seen, tmp_path))
        kv = restored.run(restored.ctx.store.get(f"blueprints/{app}"))
        assert kv is not None and kv.value == blueprint.value
        # restoring over the data dir of a running server is refused
        code = main(["backup", "restore", str(out), "--data-dir", str(target), "--force"])
        assert code == EXIT["io"]
        assert "in use by a running server" in capsys.readouterr().err

    # with the server stopped, the state store is copied straight from the file
    again = tmp_path / "again.tar.gz"
    assert main(["backup", "create", "--data-dir", str(source), "--out", str(again)]) == 0
    assert read_manifest(again)["parts"]["state"]["copied_by"] == "file"


def _rewrite(archive: Path, out: Path, change: dict[str, bytes | None]) -> None:
    """A copy of ``archive`` with members replaced (bytes) or dropped (None)."""
    with tarfile.open(archive, "r:gz") as src, tarfile.open(out, "w:gz") as dst:
        for member in src:
            data = src.extractfile(member)
            body = data.read() if data else b""
            if member.name in change:
                replacement = change[member.name]
                if replacement is None:
                    continue
                body = replacement
                member.size = len(body)
            dst.addfile(member, io.BytesIO(body))


def _member(archive: Path, name: str) -> bytes:
    with tarfile.open(archive, "r:gz") as tar:
        body = tar.extractfile(name)
        assert body is not None
        return body.read()


def test_restore_verifies_digests_and_writes_nothing_on_a_bad_archive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = tmp_path / "source", tmp_path / "backup.tar.gz"
    with running_server(source) as srv:
        asyncio.run(_populate(srv, "tampered"))
    assert main(["backup", "create", "--data-dir", str(source), "--out", str(out)]) == 0
    capsys.readouterr()
    artifact = next(n for n in read_manifest(out)["files"] if n.startswith("artifacts/"))

    bad = tmp_path / "bad.tar.gz"
    _rewrite(out, bad, {artifact: b"not the artifact"})
    target = tmp_path / "target"
    assert main(["backup", "restore", str(bad), "--data-dir", str(target)]) == EXIT["io"]
    err = capsys.readouterr().err
    assert "does not match its manifest" in err and artifact in err
    assert not target.exists() or not any(target.iterdir())

    _rewrite(out, bad, {"records.db": None})
    assert main(["backup", "restore", str(bad), "--data-dir", str(target)]) == EXIT["io"]
    assert "records.db: missing" in capsys.readouterr().err

    _rewrite(out, bad, {"manifest.json": None})
    assert main(["backup", "restore", str(bad), "--data-dir", str(target)]) == EXIT["io"]
    assert "no manifest.json" in capsys.readouterr().err

    # a manifest naming secret files outside the data directory, or files no backup holds
    victim = tmp_path / "victim"
    victim.write_text("not aether's")
    victim.chmod(0o644)
    manifest = json.loads(_member(out, "manifest.json"))
    for files, expected in (
        (["../victim"], "does not hold: '../victim'"),
        (["records.db"], "a backup never holds: 'records.db'"),
    ):
        manifest["parts"]["secrets"]["files"] = files
        _rewrite(out, bad, {"manifest.json": json.dumps(manifest).encode()})
        assert main(["backup", "restore", str(bad), "--data-dir", str(target)]) == EXIT["io"]
        assert expected in capsys.readouterr().err
        assert victim.stat().st_mode & 0o777 == 0o644 and victim.read_text() == "not aether's"
        assert not target.exists() or not any(target.iterdir())

    (tmp_path / "junk.tar.gz").write_bytes(b"junk")
    code = main(["backup", "restore", str(tmp_path / "junk.tar.gz"), "--data-dir", str(target)])
    assert code == EXIT["io"]
    assert "not a backup archive" in capsys.readouterr().err
    assert not target.exists() or not any(target.iterdir())


def test_backup_needs_a_data_dir_or_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backup", "create", "--out", str(tmp_path / "x.tar.gz")]) == EXIT["usage"]
    assert "--data-dir" in capsys.readouterr().err
    config = tmp_path / "server.toml"
    config.write_text('data_dir = "nowhere"\nrecords_url = "sqlite:///nope.db"\n')
    code = main(["backup", "create", "--config", str(config), "--out", str(tmp_path / "x.tgz")])
    assert code == EXIT["io"]
    assert "no database at" in capsys.readouterr().err


async def _tenants(url: str) -> set[str]:
    from sqlalchemy import text

    from aether.store.records import open_records

    engine, sessions = open_records(url)
    try:
        async with sessions() as session:
            rows = await session.execute(text("SELECT name FROM tenants"))
            return {str(r[0]) for r in rows}
    finally:
        await engine.dispose()


async def _add_tenant(url: str, name: str) -> None:
    from aether.store.records import Records, open_records

    engine, sessions = open_records(url)
    try:
        await Records(sessions).ensure_tenant(name)
    finally:
        await engine.dispose()


def test_postgresql_and_etcd_parts_use_their_own_tools(tmp_path: Path) -> None:
    """pg_dump/pg_restore and etcdctl snapshot save, against a real PostgreSQL and etcd."""
    import subprocess

    from aether.backup.archive import create_backup, restore_backup
    from aether.server.settings import ServerSettings
    from aether.store.etcd_local import EtcdCluster
    from aether.store.records import upgrade_schema
    from tests.support.postgres import PostgresServer

    for tool in ("pg_dump", "pg_restore", "etcdctl"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            pytest.fail(f"{tool} is needed: apt-get install postgresql-client etcd-client")
    with PostgresServer.launched() as pg, EtcdCluster(size=1) as etcd:
        source = pg.create_database("source")
        upgrade_schema(source)
        asyncio.run(_add_tenant(source, "kept-tenant"))
        put = subprocess.run(
            ["etcdctl", f"--endpoints={etcd.endpoints[0]}", "put", "blueprints/x", "v1"],
            capture_output=True,
            text=True,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        )
        assert put.returncode == 0, put.stderr
        settings = ServerSettings(
            data_dir=tmp_path / "data", records_url=source, state_url=etcd.url
        )
        out = tmp_path / "ha.tar.gz"
        manifest = asyncio.run(create_backup(settings, out))
        assert manifest["parts"]["state"]["engine"] == "etcd"
        assert manifest["parts"]["records"]["engine"] == "postgresql"
        assert set(read_manifest(out)["files"]) >= {"records.pgdump", "state.etcd-snapshot.db"}

        target = pg.create_database("target")
        # the etcd keys go back automatically: here under a fresh key prefix of the same etcd
        restored = ServerSettings(
            data_dir=tmp_path / "restored", records_url=target, state_url=f"{etcd.url}/restored"
        )
        summary = asyncio.run(restore_backup(out, restored))
        assert "kept-tenant" in asyncio.run(_tenants(target))
        assert summary["parts"]["state"]["keys"] == 1 and summary["next_steps"] == []
        got = subprocess.run(
            ["etcdctl", f"--endpoints={etcd.endpoints[0]}", "get", "restored/blueprints/x"],
            capture_output=True,
            text=True,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        )
        assert got.stdout.split() == ["restored/blueprints/x", "v1"], got.stderr
        # the raw snapshot stays in the archive, for rebuilding a lost etcd cluster by hand
        snapshot = tmp_path / "snapshot.db"
        with tarfile.open(out) as tar:
            member = tar.extractfile("state.etcd-snapshot.db")
            assert member is not None
            snapshot.write_bytes(member.read())
        status = subprocess.run(
            ["etcdctl", "snapshot", "status", str(snapshot), "-w", "json"],
            capture_output=True,
            text=True,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        )
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["totalKey"] >= 1
        # a SQLite target cannot take a PostgreSQL dump
        from aether.backup.archive import BackupError

        with pytest.raises(BackupError, match="PostgreSQL dump"):
            asyncio.run(restore_backup(out, ServerSettings(data_dir=tmp_path / "sqlite-target")))
