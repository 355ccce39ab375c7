"""``aether backup create|restore``: one archive of the state store, the records and the artifacts.

A backup is a ``.tar.gz`` holding one file or directory per part and a
``manifest.json`` (format, versions, the engine of each part, the sha256 of every
file). Each part is taken by a small per-engine step:

=========  ===========  =====================================================
part       engine       how
=========  ===========  =====================================================
state      sqlite       SQLite's online backup API (through the running server,
                        which holds the file's exclusive lock, when it runs)
state      etcd         a logical dump of every key under Aether's prefix
                        (``state.jsonl``, through the StateStore interface; keys
                        bound to a lease are left out) and ``etcdctl snapshot
                        save`` (the whole keyspace, for rebuilding a lost etcd
                        cluster by hand: see docs/production.md)
records    sqlite       SQLite's online backup API (the server may be running)
records    postgresql   ``pg_dump --format=custom`` / ``pg_restore --clean``
artifacts  local        the content-addressed files under DATA/artifacts/sha256
artifacts  s3           every ``<prefix>sha256/…`` object, streamed into the
                        archive one at a time and checked against its digest
                        (``--no-artifacts`` leaves them out; the blobs of
                        incremental uploads, local or on S3, are a cache and
                        never copied)
secrets    local        DATA/admin.token, DATA/join.token, DATA/secrets.key (the
                        key of the secrets stored in the records) and secrets.key.old
                        (the previous keys during a key rotation), when present
=========  ===========  =====================================================

Order: state, then records, then artifacts, so every deployment a blueprint names
is in the records and every artifact a record names is in the archive.

Restore verifies every digest before it writes anything, refuses a non-empty data
directory unless ``force``, and refuses a data directory a running server holds.
The state store's keys go back through the StateStore interface, so a dump restores
into etcd or SQLite whichever engine it came from; an etcd target must hold no
Aether keys (``force`` replaces them) and no leader key (a running server).
Artifacts go back into whichever registry the target uses (S3 uploads verify each
digest again; a digest the bucket already holds is a duplicate, not an error).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from aether import __version__
from aether.artifacts.registry import file_chunks
from aether.errors import AetherError
from aether.server.settings import ServerSettings
from aether.store.base import Kv, Put, StateStore, StoreError
from aether.store.etcd import parse_etcd_url

if TYPE_CHECKING:
    from aether.artifacts.s3 import S3ArtifactRegistry

__all__ = [
    "FORMAT",
    "BackupError",
    "create_backup",
    "read_manifest",
    "restore_backup",
]

FORMAT = 1
MANIFEST = "manifest.json"
STATE_DUMP = "state.jsonl"
ETCD_SNAPSHOT = "state.etcd-snapshot.db"
LEADER_KEY = "leader"  # the election key (server/leader.py), bound to the leader's lease
_SECRETS = ("admin.token", "join.token", "secrets.key", "secrets.key.old")
_ARTIFACTS = "artifacts/sha256"  # in the archive, as in DATA: sha256/<2 hex>/<64 hex>
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_CHUNK = 1 << 20
# a restore writes keys in transactions of at most this many puts and bytes
# (etcd's defaults: --max-txn-ops 128, --max-request-bytes 1.5 MiB before base64)
_TXN_OPS = 64
_TXN_BYTES = 512 << 10

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


def _etcd_members(url: str) -> list[str]:
    """``etcd://h1:2379,h2:2379`` (``etcds://`` for TLS) → ``[http://h1:2379, http://h2:2379]``."""
    try:
        return parse_etcd_url(url).endpoints
    except ValueError as exc:
        raise BackupError(str(exc)) from None


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


def _etcdctl_env(settings: ServerSettings, url: str) -> dict[str, str]:
    """The server's etcd TLS files and credentials, as etcdctl's environment (not argv).

    Credentials come from the settings, else from the URL's ``user:password@``.
    """
    options = settings.etcd_options()
    parsed = parse_etcd_url(url)
    user, password = options.username, options.password
    if not user:
        user, password = parsed.username, parsed.password
    env = {
        "ETCDCTL_CACERT": options.ca_file,
        "ETCDCTL_CERT": options.cert_file,
        "ETCDCTL_KEY": options.key_file,
        "ETCDCTL_USER": f"{user}:{password}" if user else "",
    }
    return {name: value for name, value in env.items() if value}


def _etcd_snapshot(settings: ServerSettings, url: str, dest: Path) -> None:
    """``etcdctl snapshot save`` from the first member that answers (it takes exactly one)."""
    members = _etcd_members(url)  # checks the URL
    env = {**os.environ, "ETCDCTL_API": "3", **_etcdctl_env(settings, url)}
    for n, member in enumerate(members, 1):
        try:
            _run(
                ["etcdctl", f"--endpoints={member}", "snapshot", "save", str(dest)],
                "the etcd snapshot",
                env,
            )
            return
        except BackupError:
            if n == len(members):
                raise


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


# -- the state store's logical dump (engine-neutral) -------------------------------------


def _kept(kvs: list[Kv]) -> tuple[list[tuple[str, bytes]], int]:
    """The keys a restore brings back, and how many were left out.

    Keys bound to a lease (a node's registration and its endpoints, the leader key)
    describe live processes: a restored cluster has none, its nodes register again
    and its servers elect a leader. Only ``Kv.lease`` says which they are, so the
    rule holds for every lease-bound key, present and future.
    """
    kept = [(kv.key, kv.value) for kv in kvs if not kv.lease]
    return kept, sum(1 for kv in kvs if kv.lease)


async def _dump_state(store: StateStore, dest: Path) -> dict[str, Any]:
    """Every key under the store's prefix, one JSON object a line (read at one revision)."""
    kvs, revision = await store.range("")
    kept, skipped = _kept(kvs)
    with dest.open("x", encoding="utf-8") as fh:
        for key, value in kept:
            fh.write(json.dumps({"key": key, "value": base64.b64encode(value).decode()}) + "\n")
    return {"revision": revision, "keys": len(kept), "skipped_leased": skipped}


def _read_dump(path: Path) -> list[tuple[str, bytes]]:
    items: list[tuple[str, bytes]] = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key, value = row["key"], base64.b64decode(row["value"], validate=True)
            except (ValueError, KeyError, TypeError) as exc:
                raise BackupError(f"{path.name} line {number} is not a key: {exc}") from None
            if not isinstance(key, str) or not key:
                raise BackupError(f"{path.name} line {number} has no key")
            items.append((key, value))
    return items


async def _sqlite_items(db: Path) -> list[tuple[str, bytes]]:
    """The keys of a SQLite state store file (a backup's ``state.db``), leases left out."""
    from aether.store.sqlite import SqliteStateStore

    store = await SqliteStateStore.open(db)
    try:
        kvs, _ = await store.range("")
    finally:
        await store.close()
    return _kept(kvs)[0]


def _batches(items: list[tuple[str, bytes]]) -> Iterable[list[Put]]:
    batch: list[Put] = []
    size = 0
    for key, value in items:
        if batch and (len(batch) >= _TXN_OPS or size + len(key) + len(value) > _TXN_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(Put(key, value))
        size += len(key) + len(value)
    if batch:
        yield batch


async def _load_state(store: StateStore, items: list[tuple[str, bytes]]) -> int:
    """Replace every key under the store's prefix with ``items``; returns the new revision."""
    revision = 0
    existing, _ = await store.range("")
    if existing:
        await store.delete("", prefix=True)
    for batch in _batches(items):
        result = await store.txn([], batch)
        revision = result.revision
    return revision


async def _preflight_state(store: StateStore, url: str, *, force: bool) -> int:
    """Refuse a state store a server runs on, or one holding Aether keys unless ``force``."""
    kvs, _ = await store.range("")
    for kv in kvs:
        if kv.key == LEADER_KEY and kv.lease:
            raise BackupError(
                f"a server leads the state store {url} ({kv.value.decode(errors='replace')} "
                "holds the leader key): stop every server before restoring (a killed server's "
                "leader key expires after lease_ttl seconds)"
            )
    if kvs and not force:
        raise BackupError(
            f"the state store {url} already holds {len(kvs)} Aether keys: restore into an "
            "empty etcd (or a new key prefix), or pass --force to replace them"
        )
    return len(kvs)


# -- artifacts on S3 ----------------------------------------------------------------


@contextlib.contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    try:
        yield
    except AetherError as exc:
        raise BackupError(f"{what}: {exc}") from None


def _tar_add(tar: tarfile.TarFile, name: str, path: Path) -> None:
    info = tar.gettarinfo(str(path), arcname=name)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o600
    with path.open("rb") as fh:
        tar.addfile(info, fh)


async def _s3_artifacts_into(
    settings: ServerSettings, tar: tarfile.TarFile, stage: Path, files: dict[str, str]
) -> dict[str, Any]:
    """Copy every artifact of the bucket into ``tar``, one at a time, each checked.

    An object is streamed to one staged file while it is hashed (never whole in
    memory), checked against the digest its key names, added and removed again, so
    the backup needs disk for the archive plus the largest artifact.
    """
    from aether.artifacts.digest import digest_hex
    from aether.errors import NotFoundError

    names: list[str] = []
    size = 0
    staged = stage / "artifact.part"
    where = f"copying the artifacts of {settings.artifacts_url}"
    with _s3_errors(where):
        async with settings.s3_registry() as registry:
            for digest in await registry.list_digests():
                h = hashlib.sha256()
                try:
                    chunks = await registry.open_chunks(digest, _CHUNK)
                except NotFoundError:
                    continue  # garbage-collected since the listing: no longer retained
                with staged.open("wb") as fh:
                    async for chunk in chunks:
                        h.update(chunk)
                        fh.write(chunk)
                actual = "sha256:" + h.hexdigest()
                if actual != digest:
                    raise BackupError(
                        f"the bucket's object for {digest} holds bytes of digest {actual}: "
                        "it is corrupt there; delete it and upload the artifact again"
                    )
                hex_ = digest_hex(digest)
                name = f"{_ARTIFACTS}/{hex_[:2]}/{hex_}"  # the local directory's layout
                _tar_add(tar, name, staged)
                files[name] = digest
                names.append(name)
                size += staged.stat().st_size
                staged.unlink()
    return {
        "engine": "s3",
        "url": settings.artifacts_url,
        "included": True,
        "files": names,
        "count": len(names),
        "bytes": size,
    }


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
        from aether.store import open_state_store

        # the logical dump first (what `backup restore` writes back), then the raw
        # snapshot of the whole keyspace (for rebuilding a lost etcd cluster by hand)
        dump = stage / STATE_DUMP
        try:
            store = await open_state_store(url, etcd=settings.etcd_options())
            try:
                info = {"prefix": getattr(store, "prefix", ""), **await _dump_state(store, dump)}
            finally:
                await store.close()
        except (StoreError, ValueError) as exc:
            raise BackupError(f"cannot read the state store {url}: {exc}") from exc
        dest = stage / ETCD_SNAPSHOT
        _etcd_snapshot(settings, url, dest)
        archive.add(STATE_DUMP, dump)
        archive.add(ETCD_SNAPSHOT, dest)
        archive.parts["state"] = {
            "engine": "etcd",
            "files": [STATE_DUMP, ETCD_SNAPSHOT],
            "dump": STATE_DUMP,
            "snapshot": ETCD_SNAPSHOT,
            **info,
        }
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


def _artifacts_part(settings: ServerSettings, archive: _Archive, *, artifacts: bool) -> None:
    """Local artifacts, blobs and secrets (S3 artifacts are streamed into the tar later)."""
    data_dir = settings.data_dir.resolve()
    if not artifacts:
        archive.parts["artifacts"] = {
            "engine": "s3" if settings.artifacts_url else "local",
            **({"url": settings.artifacts_url} if settings.artifacts_url else {}),
            "included": False,
            "files": [],
            "note": "left out (--no-artifacts): back them up with the store's own tools",
        }
    elif not settings.artifacts_url:
        # only published objects: tmp/ holds unfinished uploads
        names, size = _tree(data_dir / "artifacts" / "sha256", _ARTIFACTS, archive)
        archive.parts["artifacts"] = {
            "engine": "local",
            "included": True,
            "files": names,
            "count": len(names),
            "bytes": size,
        }
    # the per-file blobs of incremental uploads are a cache (an assembled artifact is
    # stored whole): never copied; a client just sends those files again
    archive.parts["blobs"] = {"engine": "cache", "files": [], "included": False}
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
    artifacts: bool = True,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """Write the backup archive ``out``; its manifest is returned.

    ``fetch_state(dest)`` asks the running server for a copy of the SQLite state
    store when the file is locked (the server owns it exclusively). ``artifacts=False``
    leaves the artifacts out (back them up with the store's own tools).
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".aether-backup-", dir=out.parent) as tmp:
        stage = Path(tmp)
        archive = _Archive()
        await _state_part(settings, stage, archive, fetch_state)
        _records_part(settings, stage, archive)
        _artifacts_part(settings, archive, artifacts=artifacts)
        files = {name: _sha256(path) for name, path in archive.files.items()}
        partial = stage / "backup.tar.gz"
        with tarfile.open(partial, "w:gz") as tar:
            for name, path in archive.files.items():
                _tar_add(tar, name, path)
            if artifacts and settings.artifacts_url:
                archive.parts["artifacts"] = await _s3_artifacts_into(settings, tar, stage, files)
            manifest: dict[str, Any] = {
                "format": FORMAT,
                "aether_version": __version__,
                "sqlite_version": sqlite3.sqlite_version,
                "created_at": (now or datetime.datetime.now(datetime.UTC)).isoformat(),
                "parts": archive.parts,
                "files": files,
            }
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


def _listed(parts: dict[str, Any], part: str, digests: dict[str, str]) -> list[str]:
    """The files a manifest's ``part`` names, each one of the archive's verified members."""
    files = parts.get(part, {}).get("files", [])
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        raise BackupError(f"the manifest's {part} part is not a list of file names")
    missing = sorted(set(files) - set(digests))
    if missing:
        raise BackupError(
            f"the manifest's {part} part names files the archive does not hold: "
            f"{', '.join(map(repr, missing[:5]))}"
        )
    return list(files)


def _secret_files(parts: dict[str, Any], digests: dict[str, str]) -> list[str]:
    """The secret files a manifest lists: only the data directory's own, by name."""
    files = _listed(parts, "secrets", digests)
    unknown = sorted(set(files) - set(_SECRETS))
    if unknown:
        raise BackupError(
            f"the manifest lists secret files a backup never holds: {', '.join(map(repr, unknown))}"
        )
    return files


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


def _replace_dir(staged: Path, target: Path) -> None:
    """Put ``staged`` (or an empty directory, if the backup had none) in ``target``'s place."""
    if target.exists():
        shutil.rmtree(target)
    if staged.is_dir():
        os.replace(staged, target)
    else:
        target.mkdir()


def _remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def _restore_s3_artifacts(
    registry: S3ArtifactRegistry, settings: ServerSettings, stage: Path, art_files: list[str]
) -> dict[str, Any]:
    """Upload the backup's artifacts into the bucket, each verified; existing ones are kept."""
    uploaded = duplicates = 0
    with _s3_errors(f"restoring the artifacts into {settings.artifacts_url}"):
        for name in art_files:
            digest = f"sha256:{PurePosixPath(name).name}"
            if _DIGEST_RE.fullmatch(digest) is None:
                continue  # not an artifact (a stray file of a local directory)
            result = await registry.write_stream(file_chunks(stage / name), digest)
            duplicates += result.duplicate
            uploaded += not result.duplicate
    return {
        "engine": "s3",
        "url": settings.artifacts_url,
        "files": len(art_files),
        "uploaded": uploaded,
        "duplicates": duplicates,
    }


def _restore_records(
    engine: str, records_url: str, records_db: Path | None, stage: Path
) -> dict[str, Any]:
    """The records: the SQLite file into place, or ``pg_restore`` into ``records_url``."""
    if engine == "sqlite":
        assert records_db is not None
        records_db.parent.mkdir(parents=True, exist_ok=True)
        _remove_db(records_db)
        os.replace(stage / "records.db", records_db)
        return {"engine": "sqlite", "path": str(records_db)}
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
    return {"engine": "postgresql"}


async def restore_backup(
    archive: Path,
    settings: ServerSettings,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Restore ``archive`` into the stores ``settings`` name; a summary is returned.

    SQLite parts become files in the data directory (or the paths the URLs name);
    a PostgreSQL dump is restored into ``records_url`` with ``pg_restore --clean``;
    the state store's keys are written back through the StateStore interface (into
    etcd, or into SQLite from an etcd backup); artifacts go into the registry the
    target uses (the local directory, or the S3 bucket).

    Everything is checked before anything is written: every digest, the engine
    pairings, that no server runs on the target (the SQLite lock, etcd's leader
    key), that the targets are empty (or ``force``), and that the bucket answers.
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
    async with contextlib.AsyncExitStack() as exits:
        exits.callback(shutil.rmtree, stage, ignore_errors=True)
        manifest, digests = _extract(archive, stage)
        _verify(manifest, digests)
        parts: dict[str, Any] = manifest.get("parts", {})
        state_info: dict[str, Any] = parts.get("state", {})
        state_engine = state_info.get("engine")
        records_engine = parts.get("records", {}).get("engine")
        art_info: dict[str, Any] = parts.get("artifacts", {})
        art_files = _listed(parts, "artifacts", digests)
        secret_files = _secret_files(parts, digests)
        # the keys of the state store, when they go back through the StateStore interface
        items: list[tuple[str, bytes]] | None = None
        if state_engine == "etcd" and state_info.get("dump"):
            items = _read_dump(stage / state_info["dump"])
        elif state_engine == "sqlite" and state_db is None:
            items = await _sqlite_items(stage / "state.db")
        # check every engine pairing and target before changing anything
        if state_engine not in ("sqlite", "etcd"):
            raise BackupError(f"no restore step for the state store engine {state_engine!r}")
        if records_engine == "sqlite" and records_db is None:
            raise BackupError(f"the backup's records are SQLite; the target is {records_url}")
        if records_engine == "postgresql" and _engine(records_url) != "postgresql":
            raise BackupError(
                "the backup's records are a PostgreSQL dump: give a config whose records_url "
                f"is the PostgreSQL database to restore into (now: {records_url})"
            )
        target_store: StateStore | None = None
        if items is not None and state_db is None:
            from aether.store import open_state_store

            try:
                target_store = await open_state_store(state_url, etcd=settings.etcd_options())
                exits.push_async_callback(target_store.close)
                replaced = await _preflight_state(target_store, state_url, force=force)
            except (StoreError, ValueError) as exc:
                raise BackupError(f"cannot reach the state store {state_url}: {exc}") from None
        registry: S3ArtifactRegistry | None = None
        if art_files and settings.artifacts_url:
            registry = settings.s3_registry()
            with _s3_errors(f"cannot reach the artifact bucket {settings.artifacts_url}"):
                await registry.open()
            exits.push_async_callback(registry.aclose)
        summary: dict[str, Any] = {
            "data_dir": str(data_dir),
            "backup_created_at": manifest.get("created_at"),
            "aether_version": manifest.get("aether_version"),
            "parts": {},
            "next_steps": [],
        }
        restored: dict[str, Any] = summary["parts"]
        # artifacts first: a bucket that fails half-way leaves state and records untouched,
        # and running it again only finds duplicates
        if registry is not None:
            restored["artifacts"] = await _restore_s3_artifacts(
                registry, settings, stage, art_files
            )
        elif art_info.get("included", art_info.get("engine") == "local"):
            _replace_dir(stage / "artifacts", data_dir / "artifacts")
            restored["artifacts"] = {"engine": "local", "files": len(art_files)}
        elif art_info:
            where = art_info.get("url") or data_dir / "artifacts"
            summary["next_steps"].append(
                f"the backup holds no artifacts: restore {where} with the store's own tools"
            )
        # state
        if items is None:
            if state_engine == "sqlite":
                assert state_db is not None
                state_db.parent.mkdir(parents=True, exist_ok=True)
                _remove_db(state_db)
                os.replace(stage / "state.db", state_db)
                restored["state"] = {"engine": "sqlite", "path": str(state_db)}
            else:  # an etcd backup of an older aether: its snapshot only
                snapshot = data_dir / ETCD_SNAPSHOT
                os.replace(stage / ETCD_SNAPSHOT, snapshot)
                restored["state"] = {"engine": "etcd", "snapshot": str(snapshot)}
                summary["next_steps"].append(
                    f"restore etcd from {snapshot} on every member (`etcdctl snapshot restore`, "
                    "see docs/production.md), start etcd, then the servers"
                )
        elif target_store is not None:
            try:
                revision = await _load_state(target_store, items)
            except StoreError as exc:
                raise BackupError(f"writing the keys into {state_url} failed: {exc}") from None
            restored["state"] = {
                "engine": _engine(state_url),
                "url": state_url,
                "keys": len(items),
                "replaced": replaced,
                "revision": revision,
                "from": state_engine,
            }
        else:  # an etcd dump into the embedded SQLite store
            from aether.store.sqlite import SqliteStateStore

            assert state_db is not None
            _remove_db(state_db)
            sqlite_store = await SqliteStateStore.open(state_db)
            try:
                revision = await _load_state(sqlite_store, items)
            finally:
                await sqlite_store.close()
            restored["state"] = {
                "engine": "sqlite",
                "path": str(state_db),
                "keys": len(items),
                "revision": revision,
                "from": state_engine,
            }
        # records
        if records_engine in ("sqlite", "postgresql"):
            restored["records"] = _restore_records(records_engine, records_url, records_db, stage)
        info = parts.get("blobs", {})
        if info.get("engine") == "local":
            _replace_dir(stage / "blobs", data_dir / "blobs")
            restored["blobs"] = {"engine": "local", "files": len(info.get("files", []))}
        for name in secret_files:
            (data_dir / name).unlink(missing_ok=True)
            os.replace(stage / name, data_dir / name)
            os.chmod(data_dir / name, 0o600)
        restored["secrets"] = {"files": secret_files}
        return summary
    raise AssertionError("unreachable")  # pragma: no cover - the with block returns
