"""``aether backup create|restore``: one archive of the state store, the records and the artifacts.

A backup is a ``.tar.gz`` holding one file or directory per part and a
``manifest.json`` (format, versions, the engine of each part, the sha256 of every
file). Each part is taken by a small per-engine step:

=========  ===========  =====================================================
part       engine       how
=========  ===========  =====================================================
state      sqlite       SQLite's online backup API (through the running server,
                        which holds the file's exclusive lock, when it runs)
state      etcd         ``etcdctl snapshot save`` (restore: ``etcdctl snapshot
                        restore`` per member, see docs/production.md)
records    sqlite       SQLite's online backup API (the server may be running)
records    postgresql   ``pg_dump --format=custom`` / ``pg_restore --clean``
artifacts  local        the content-addressed files under DATA/artifacts/sha256
artifacts  s3           not copied: back the bucket up with its own tools
secrets    local        DATA/admin.token and DATA/join.token, when present
=========  ===========  =====================================================

Order: state, then records, then artifacts, so every deployment a blueprint names
is in the records and every artifact a record names is in the archive.

Restore verifies every digest before it writes anything, refuses a non-empty data
directory unless ``force``, and refuses a data directory a running server holds.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from aether import __version__
from aether.server.settings import ServerSettings

__all__ = [
    "FORMAT",
    "BackupError",
    "create_backup",
    "read_manifest",
    "restore_backup",
]

FORMAT = 1
MANIFEST = "manifest.json"
_SECRETS = ("admin.token", "join.token")

StateFetcher = Callable[[Path], Awaitable[None]]


class BackupError(Exception):
    """The backup or restore cannot go on; the message says why and what to do."""


# -- engines named by the settings ----------------------------------------------------


def _sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///…`` (or ``sqlite+aiosqlite:///…``) URL, else None."""
    if urlsplit(url).scheme.split("+")[0] != "sqlite":
        return None
    database = make_url(url).database
    if not database:
        raise BackupError(f"{url!r} names no SQLite file")
    return Path(database)


def _engine(url: str) -> str:
    scheme = urlsplit(url).scheme.split("+")[0]
    return {"postgres": "postgresql"}.get(scheme, scheme)


def _libpq_url(url: str) -> str:
    """``postgresql+psycopg://…`` → ``postgresql://…`` (what pg_dump and psql take)."""
    parts = urlsplit(url)
    return parts._replace(scheme="postgresql").geturl()


def _etcd_endpoints(url: str) -> str:
    """``etcd://h1:2379,h2:2379`` (or ``etcds://`` for TLS) → ``http://h1:2379,http://h2:2379``."""
    parts = urlsplit(url)
    scheme = "https" if parts.scheme in ("etcds", "etcd+https") else "http"
    hosts = [h for h in parts.netloc.rsplit("@", 1)[-1].split(",") if h]
    if not hosts:
        raise BackupError(f"no etcd endpoint in {url!r}")
    return ",".join(h if "://" in h else f"{scheme}://{h}" for h in hosts)


def _run(argv: list[str], what: str, env: dict[str, str] | None = None) -> None:
    tool = argv[0]
    if shutil.which(tool) is None:
        raise BackupError(f"{what} needs `{tool}` on PATH (Debian: apt-get install {_PKG[tool]})")
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        raise BackupError(
            f"{what} failed: `{' '.join(argv[:2])} …` exited {result.returncode}: {detail}"
        )


_PKG = {
    "pg_dump": "postgresql-client",
    "pg_restore": "postgresql-client",
    "etcdctl": "etcd-client",
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _sqlite_copy(source: Path, dest: Path, *, timeout: float) -> None:
    """A consistent copy of a live SQLite database (the online backup API, not a file copy)."""
    if not source.is_file():
        raise BackupError(f"no database at {source}")
    deadline = time.monotonic() + timeout

    def progress(status: int, _remaining: int, _total: int) -> None:
        # sqlite3's backup retries a locked source forever: give up after ``timeout``
        if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) and time.monotonic() > deadline:
            raise sqlite3.OperationalError(f"database is locked: {source}")

    src = sqlite3.connect(source, timeout=timeout)
    try:
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst, progress=progress, sleep=0.05)
        finally:
            dst.close()
    finally:
        src.close()


def _scalar(db: Path, sql: str) -> Any:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute(sql).fetchone()
        return None if row is None else row[0]
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def _check_sqlite(path: Path, what: str) -> None:
    conn = sqlite3.connect(path)
    try:
        result = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"the {what} copy is not a usable SQLite database: {exc}") from None
    finally:
        conn.close()
    if result != "ok":
        raise BackupError(f"the {what} copy failed SQLite's quick_check: {result}")


# -- create ---------------------------------------------------------------------------


@dataclass
class _Archive:
    """Files staged for the tar: archive name → local path."""

    files: dict[str, Path] = field(default_factory=dict)
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, name: str, path: Path) -> None:
        self.files[name] = path


async def _state_part(
    settings: ServerSettings, stage: Path, archive: _Archive, fetch_state: StateFetcher | None
) -> None:
    url = settings.resolved_state_url()
    engine = _engine(url)
    if engine == "sqlite":
        path = _sqlite_path(url)
        assert path is not None
        dest = stage / "state.db"
        via = "file"
        try:
            _sqlite_copy(path, dest, timeout=1.0)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise BackupError(f"cannot copy the state store {path}: {exc}") from None
            if fetch_state is None:
                raise BackupError(
                    f"the state store {path} is held by a running server; give its URL and an "
                    "admin token (--server, --token) so it makes the copy, or stop it"
                ) from None
            dest.unlink(missing_ok=True)
            await fetch_state(dest)
            via = "server"
        _check_sqlite(dest, "state store")
        archive.add("state.db", dest)
        archive.parts["state"] = {
            "engine": "sqlite",
            "files": ["state.db"],
            "revision": _scalar(dest, "SELECT revision FROM meta"),
            "copied_by": via,
        }
    elif engine in ("etcd", "etcds"):
        dest = stage / "state.etcd-snapshot.db"
        env = {**os.environ, "ETCDCTL_API": "3"}
        _run(
            ["etcdctl", f"--endpoints={_etcd_endpoints(url)}", "snapshot", "save", str(dest)],
            "the etcd snapshot",
            env,
        )
        archive.add("state.etcd-snapshot.db", dest)
        archive.parts["state"] = {"engine": "etcd", "files": ["state.etcd-snapshot.db"]}
    else:
        raise BackupError(f"no backup step for the state store engine {engine!r} ({url})")


def _records_part(settings: ServerSettings, stage: Path, archive: _Archive) -> None:
    url = settings.resolved_records_url()
    engine = _engine(url)
    if engine == "sqlite":
        path = _sqlite_path(url)
        assert path is not None
        dest = stage / "records.db"
        try:
            _sqlite_copy(path, dest, timeout=30.0)
        except sqlite3.Error as exc:
            raise BackupError(f"cannot copy the records {path}: {exc}") from None
        _check_sqlite(dest, "records")
        archive.add("records.db", dest)
        archive.parts["records"] = {
            "engine": "sqlite",
            "files": ["records.db"],
            "schema_revision": _scalar(dest, "SELECT version_num FROM alembic_version"),
        }
    elif engine == "postgresql":
        dest = stage / "records.pgdump"
        _run(
            ["pg_dump", "--format=custom", "--no-owner", f"--file={dest}", _libpq_url(url)],
            "the PostgreSQL dump",
        )
        archive.add("records.pgdump", dest)
        archive.parts["records"] = {"engine": "postgresql", "files": ["records.pgdump"]}
    else:
        raise BackupError(f"no backup step for the records engine {engine!r}")


def _tree(root: Path, prefix: str, archive: _Archive) -> tuple[list[str], int]:
    names, size = [], 0
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                name = f"{prefix}/{path.relative_to(root).as_posix()}"
                archive.add(name, path)
                names.append(name)
                size += path.stat().st_size
    return names, size


def _artifacts_part(settings: ServerSettings, archive: _Archive) -> None:
    data_dir = settings.data_dir.resolve()
    artifacts_url = getattr(settings, "artifacts_url", "")
    if artifacts_url:
        archive.parts["artifacts"] = {
            "engine": "s3",
            "url": artifacts_url,
            "files": [],
            "included": False,
            "note": "back the bucket up with its own tools (versioning, replication, rclone sync)",
        }
    else:
        # only published objects: tmp/ holds unfinished uploads
        names, size = _tree(data_dir / "artifacts" / "sha256", "artifacts/sha256", archive)
        archive.parts["artifacts"] = {
            "engine": "local",
            "files": names,
            "count": len(names),
            "bytes": size,
        }
    blobs, size = _tree(data_dir / "blobs", "blobs", archive)
    archive.parts["blobs"] = {"engine": "local", "files": blobs, "bytes": size}
    secrets = []
    for name in _SECRETS:
        if (data_dir / name).is_file():
            archive.add(name, data_dir / name)
            secrets.append(name)
    archive.parts["secrets"] = {"engine": "local", "files": secrets}


async def create_backup(
    settings: ServerSettings,
    out: Path,
    *,
    fetch_state: StateFetcher | None = None,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """Write the backup archive ``out``; its manifest is returned.

    ``fetch_state(dest)`` asks the running server for a copy of the SQLite state
    store when the file is locked (the server owns it exclusively).
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".aether-backup-", dir=out.parent) as tmp:
        stage = Path(tmp)
        archive = _Archive()
        await _state_part(settings, stage, archive, fetch_state)
        _records_part(settings, stage, archive)
        _artifacts_part(settings, archive)
        files = {name: _sha256(path) for name, path in archive.files.items()}
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "aether_version": __version__,
            "sqlite_version": sqlite3.sqlite_version,
            "created_at": (now or datetime.datetime.now(datetime.UTC)).isoformat(),
            "parts": archive.parts,
            "files": files,
        }
        partial = stage / "backup.tar.gz"
        with tarfile.open(partial, "w:gz") as tar:
            for name, path in archive.files.items():
                info = tar.gettarinfo(str(path), arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o600
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
            body = json.dumps(manifest, indent=2, sort_keys=True).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode = len(body), 0o600
            tar.addfile(info, io.BytesIO(body))
        # the digests were taken before tarring: the artifact files are immutable, the
        # staged copies private; check again so a file changed under us is caught now
        for name, path in archive.files.items():
            if _sha256(path) != files[name]:
                raise BackupError(f"{name} changed while it was being backed up; run it again")
        os.chmod(partial, 0o600)
        os.replace(partial, out)
    return manifest


# -- restore --------------------------------------------------------------------------


def _safe_name(name: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts or name.startswith("./"):
        raise BackupError(f"unsafe path in the archive: {name!r}")
    return path.as_posix()


def _extract(archive: Path, stage: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Every member into ``stage`` (regular files only), hashing as it goes."""
    digests: dict[str, str] = {}
    manifest: dict[str, Any] | None = None
    try:
        tar = tarfile.open(archive, "r:gz")  # noqa: SIM115 (closed by the with below)
    except (OSError, tarfile.TarError) as exc:
        raise BackupError(f"{archive} is not a backup archive (.tar.gz): {exc}") from None
    with tar:
        try:
            for member in tar:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise BackupError(f"unexpected entry in the archive: {member.name!r}")
                name = _safe_name(member.name)
                if name in digests or (name == MANIFEST and manifest is not None):
                    raise BackupError(f"{name!r} appears twice in the archive")
                source = tar.extractfile(member)
                assert source is not None
                if name == MANIFEST:
                    try:
                        manifest = json.loads(source.read(16 << 20))
                    except ValueError as exc:
                        raise BackupError(f"the manifest is not JSON: {exc}") from None
                    continue
                target = stage / name
                target.parent.mkdir(parents=True, exist_ok=True)
                h = hashlib.sha256()
                with target.open("xb") as fh:
                    while chunk := source.read(1 << 20):
                        h.update(chunk)
                        fh.write(chunk)
                digests[name] = "sha256:" + h.hexdigest()
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise BackupError(f"{archive} is damaged: {exc}") from None
    if not isinstance(manifest, dict):
        raise BackupError(f"{archive} has no {MANIFEST}: not an aether backup")
    return manifest, digests


def _verify(manifest: dict[str, Any], digests: dict[str, str]) -> None:
    if manifest.get("format") != FORMAT:
        raise BackupError(
            f"backup format {manifest.get('format')!r} is not {FORMAT}: "
            f"restore it with aether {manifest.get('aether_version', '?')}"
        )
    expected = manifest.get("files")
    if not isinstance(expected, dict):
        raise BackupError("the manifest lists no files")
    problems = []
    for name, digest in sorted(expected.items()):
        if name not in digests:
            problems.append(f"{name}: missing")
        elif digests[name] != digest:
            problems.append(f"{name}: digest {digests[name]} is not {digest}")
    problems += [f"{name}: not in the manifest" for name in sorted(set(digests) - set(expected))]
    if problems:
        raise BackupError("the archive does not match its manifest:\n  " + "\n  ".join(problems))


def read_manifest(archive: Path) -> dict[str, Any]:
    """The verified manifest of ``archive`` (every digest checked)."""
    with tempfile.TemporaryDirectory(prefix=".aether-verify-") as tmp:
        manifest, digests = _extract(archive, Path(tmp))
        _verify(manifest, digests)
    return manifest


def _in_use(db: Path) -> bool:
    """Whether a running server holds ``db`` (the state store's lock is exclusive)."""
    if not db.exists():
        return False
    try:
        conn = sqlite3.connect(db, timeout=0.2)
    except sqlite3.Error:
        return True
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()


def _remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def restore_backup(
    archive: Path,
    settings: ServerSettings,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Restore ``archive`` into the stores ``settings`` name; a summary is returned.

    SQLite parts become files in the data directory (or the paths the URLs name);
    a PostgreSQL dump is restored into ``records_url`` with ``pg_restore --clean``;
    an etcd snapshot is left in the data directory with the command to restore it.
    """
    data_dir = settings.data_dir.resolve()
    if data_dir.exists() and not data_dir.is_dir():
        raise BackupError(f"{data_dir} is not a directory")
    present = sorted(p.name for p in data_dir.iterdir()) if data_dir.is_dir() else []
    if present and not force:
        raise BackupError(
            f"{data_dir} is not empty ({', '.join(present[:5])}"
            f"{', …' if len(present) > 5 else ''}): restore into a new directory, "
            "or pass --force to replace its state, records and artifacts"
        )
    state_url, records_url = settings.resolved_state_url(), settings.resolved_records_url()
    state_db, records_db = _sqlite_path(state_url), _sqlite_path(records_url)
    for db in (state_db, records_db):
        if db is not None and _in_use(db):
            raise BackupError(f"{db} is in use by a running server: stop it before restoring")
    data_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".aether-restore-", dir=data_dir.parent))
    try:
        manifest, digests = _extract(archive, stage)
        _verify(manifest, digests)
        parts: dict[str, Any] = manifest.get("parts", {})
        state_engine = parts.get("state", {}).get("engine")
        records_engine = parts.get("records", {}).get("engine")
        # check every engine pairing before changing anything
        if state_engine == "sqlite" and state_db is None:
            raise BackupError(f"the backup's state store is SQLite; the target is {state_url}")
        if records_engine == "sqlite" and records_db is None:
            raise BackupError(f"the backup's records are SQLite; the target is {records_url}")
        if records_engine == "postgresql" and _engine(records_url) != "postgresql":
            raise BackupError(
                "the backup's records are a PostgreSQL dump: give a config whose records_url "
                f"is the PostgreSQL database to restore into (now: {records_url})"
            )
        artifacts_url = getattr(settings, "artifacts_url", "")
        has_local_artifacts = parts.get("artifacts", {}).get("engine") == "local"
        if has_local_artifacts and artifacts_url and parts["artifacts"]["files"]:
            raise BackupError(
                f"the backup's artifacts are local files; the target stores them in "
                f"{artifacts_url}: restore with a local artifact directory, then copy them"
            )
        summary: dict[str, Any] = {
            "data_dir": str(data_dir),
            "backup_created_at": manifest.get("created_at"),
            "aether_version": manifest.get("aether_version"),
            "parts": {},
            "next_steps": [],
        }
        restored: dict[str, Any] = summary["parts"]
        if state_engine == "sqlite":
            assert state_db is not None
            state_db.parent.mkdir(parents=True, exist_ok=True)
            _remove_db(state_db)
            os.replace(stage / "state.db", state_db)
            restored["state"] = {"engine": "sqlite", "path": str(state_db)}
        elif state_engine == "etcd":
            snapshot = data_dir / "state.etcd-snapshot.db"
            os.replace(stage / "state.etcd-snapshot.db", snapshot)
            restored["state"] = {"engine": "etcd", "snapshot": str(snapshot)}
            summary["next_steps"].append(
                f"restore etcd from {snapshot} on every member (`etcdctl snapshot restore`, "
                "see docs/production.md), start etcd, then the servers"
            )
        if records_engine == "sqlite":
            assert records_db is not None
            records_db.parent.mkdir(parents=True, exist_ok=True)
            _remove_db(records_db)
            os.replace(stage / "records.db", records_db)
            restored["records"] = {"engine": "sqlite", "path": str(records_db)}
        elif records_engine == "postgresql":
            _run(
                [
                    "pg_restore",
                    "--clean",
                    "--if-exists",
                    "--no-owner",
                    "--single-transaction",
                    f"--dbname={_libpq_url(records_url)}",
                    str(stage / "records.pgdump"),
                ],
                "the PostgreSQL restore",
            )
            restored["records"] = {"engine": "postgresql"}
        for part, directory in (("artifacts", "artifacts"), ("blobs", "blobs")):
            info = parts.get(part, {})
            if info.get("engine") != "local":
                if info.get("engine") == "s3":
                    summary["next_steps"].append(
                        f"artifacts live in {info.get('url')}: restore the bucket with its tools"
                    )
                continue
            target = data_dir / directory
            if target.exists():
                shutil.rmtree(target)
            if (stage / directory).is_dir():
                os.replace(stage / directory, target)
            else:
                target.mkdir()
            restored[part] = {"engine": "local", "files": len(info.get("files", []))}
        for name in parts.get("secrets", {}).get("files", []):
            (data_dir / name).unlink(missing_ok=True)
            os.replace(stage / name, data_dir / name)
            os.chmod(data_dir / name, 0o600)
        restored["secrets"] = {"files": parts.get("secrets", {}).get("files", [])}
        return summary
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(stage)
