"""The embedded state store: one SQLite file, owned by one server process.

All SQLite calls are synchronous and sub-millisecond, so they run directly on the
event loop thread: no await ever separates a read from the write that depends on
it, which makes every method atomic with respect to the others without locks.

The file is opened with an exclusive lock so a second server cannot open it and
fork the revision sequence. History for watches lives in the ``events`` table
(one row per changed key, ``prev_*`` columns for the previous value) and is
trimmed to ``history_limit`` revisions. Lease deadlines are kept on the
monotonic clock in memory (immune to wall-clock steps) and persisted as
wall-clock ``expires_at``; reopening a file gives every lease its full TTL again,
as etcd does after a restart, so nodes are not evicted by a server restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from aether.store.base import (
    CompactedError,
    Compare,
    Delete,
    Event,
    EventType,
    Kv,
    LeaseNotFoundError,
    Op,
    Put,
    StoreError,
    TxnResult,
    check_compare,
    check_ops,
    compare_holds,
)

__all__ = ["SqliteStateStore"]

log = logging.getLogger(__name__)

_SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meta (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        revision INTEGER NOT NULL,
        compact_revision INTEGER NOT NULL
    )""",
    "INSERT OR IGNORE INTO meta (id, revision, compact_revision) VALUES (0, 0, 0)",
    """CREATE TABLE IF NOT EXISTS kv (
        key TEXT PRIMARY KEY,
        value BLOB NOT NULL,
        create_revision INTEGER NOT NULL,
        mod_revision INTEGER NOT NULL,
        version INTEGER NOT NULL,
        lease INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS kv_lease ON kv (lease) WHERE lease != 0",
    """CREATE TABLE IF NOT EXISTS events (
        revision INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        create_revision INTEGER NOT NULL,
        version INTEGER NOT NULL,
        lease INTEGER NOT NULL,
        prev_value BLOB,
        prev_create_revision INTEGER,
        prev_mod_revision INTEGER,
        prev_version INTEGER,
        prev_lease INTEGER,
        PRIMARY KEY (revision, seq)
    )""",
    """CREATE TABLE IF NOT EXISTS leases (
        id INTEGER PRIMARY KEY,
        ttl REAL NOT NULL,
        expires_at REAL NOT NULL
    )""",
)

_KV_COLUMNS = "key, value, create_revision, mod_revision, version, lease"
_EVENT_COLUMNS = (
    "revision, type, key, value, create_revision, version, lease,"
    " prev_value, prev_create_revision, prev_mod_revision, prev_version, prev_lease"
)


@dataclass(slots=True)
class _Lease:
    ttl: float
    deadline: float  # time.monotonic()


@dataclass(slots=True)
class _Batch:
    """The changes of one revision, collected inside one SQLite transaction."""

    revision: int
    seq: int = 0
    compact_revision: int | None = None


def _prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix``.

    SQLite compares TEXT as UTF-8 bytes, which orders like code points, so
    ``prefix <= key < end`` is an indexable prefix match. None means unbounded.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code <= 0x10FFFF:
            if 0xD800 <= code <= 0xDFFF:  # surrogates cannot be stored; skip them
                code = 0xE000
            return "".join(chars) + chr(code)
    return None


def _range_clause(key: str, prefix: bool) -> tuple[str, tuple[str, ...]]:
    if not prefix:
        return "key = ?", (key,)
    end = _prefix_end(key)
    if end is None:
        return "key >= ?", (key,)
    return "key >= ? AND key < ?", (key, end)


def _kv(row: Sequence[Any]) -> Kv:
    return Kv(row[0], bytes(row[1]), row[2], row[3], row[4], row[5])


def _event(row: Sequence[Any]) -> Event:
    revision, type_, key, value, create, version, lease = row[:7]
    kv = Kv(key, bytes(value), create, revision, version, lease)
    prev = None
    if row[8] is not None:
        prev = Kv(key, bytes(row[7]), row[8], row[9], row[10], row[11])
    return Event(EventType(type_), kv, prev)


class SqliteStateStore:
    """``StateStore`` on a local SQLite file; see the module docstring."""

    _WATCH_BATCH = 256  # revisions read per history query of a watch
    # no engine limit (each op is one statement); this bounds one write's time on the loop
    max_txn_ops = 1024
    _LOCK_TIMEOUT = 1.0  # seconds to wait for a previous owner to release the file

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        history_limit: int,
        sweep_interval: float,
    ) -> None:
        """Use :meth:`open`; this only wires up an already prepared connection."""
        self.path = path
        self._conn = conn
        self._history_limit = history_limit
        self._sweep_interval = sweep_interval
        revision, compact_revision = conn.execute(
            "SELECT revision, compact_revision FROM meta"
        ).fetchone()
        self._revision: int = revision
        self._compact_revision: int = compact_revision
        now = time.monotonic()
        self._leases: dict[int, _Lease] = {
            lease: _Lease(ttl, now + ttl)
            for lease, ttl in conn.execute("SELECT id, ttl FROM leases")
        }
        self._closed = False
        self._changed = asyncio.Event()  # replaced after each commit; wakes watchers
        self._sweep_wake = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        path: Path | str,
        *,
        history_limit: int = 100_000,
        sweep_interval: float = 0.2,
    ) -> SqliteStateStore:
        """Open (creating if needed) the store at ``path`` and start the lease sweeper."""
        if history_limit < 1:
            raise ValueError("history_limit must be at least 1")
        if not sweep_interval > 0:
            raise ValueError("sweep_interval must be positive")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, isolation_level=None, timeout=cls._LOCK_TIMEOUT)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open state store {path}: {e}") from e
        try:
            cls._prepare(conn, history_limit)
            store = cls(conn, path, history_limit=history_limit, sweep_interval=sweep_interval)
        except sqlite3.Error as e:
            conn.close()
            if e.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                raise StoreError(f"state store {path} is in use by another process") from e
            raise StoreError(f"cannot open state store {path}: {e}") from e
        except BaseException:
            conn.close()
            raise
        store._sweeper = asyncio.create_task(store._sweep(), name=f"lease sweeper {path}")
        return store

    @staticmethod
    def _prepare(conn: sqlite3.Connection, history_limit: int) -> None:
        # EXCLUSIVE before the first WAL access: the lock is held for the life of
        # the connection and no shared-memory index is needed.
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot enable WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = NORMAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise StoreError(f"state store schema {version} is newer than this aether")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            # Restart grace: every surviving lease gets its full TTL again.
            conn.execute("UPDATE leases SET expires_at = ? + ttl", (time.time(),))
            revision, compact = conn.execute(
                "SELECT revision, compact_revision FROM meta"
            ).fetchone()
            floor = revision - history_limit + 1
            if floor > compact:
                conn.execute("DELETE FROM events WHERE revision < ?", (floor,))
                conn.execute("UPDATE meta SET compact_revision = ?", (floor,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def __aenter__(self) -> SqliteStateStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- reads ---------------------------------------------------------------

    async def get(self, key: str) -> Kv | None:
        self._check_open()
        with self._errors():
            return self._get(key)

    async def range(self, prefix: str) -> tuple[list[Kv], int]:
        self._check_open()
        with self._errors():
            return self._range(prefix, prefix=True), self._revision

    async def revision(self) -> int:
        self._check_open()
        return self._revision

    def _get(self, key: str) -> Kv | None:
        row = self._conn.execute(f"SELECT {_KV_COLUMNS} FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else _kv(row)

    def _range(self, key: str, *, prefix: bool) -> list[Kv]:
        where, args = _range_clause(key, prefix)
        rows = self._conn.execute(
            f"SELECT {_KV_COLUMNS} FROM kv WHERE {where} ORDER BY key", args
        ).fetchall()
        return [_kv(row) for row in rows]

    # -- writes --------------------------------------------------------------

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        self._check_open()
        self._check_lease(lease)
        with self._write() as batch:
            self._put(batch, key, value, lease)
        return batch.revision

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        self._check_open()
        with self._write() as batch:
            return self._delete(batch, key, prefix)

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        self._check_open()
        for c in compare:
            check_compare(c)
        check_ops(success)
        check_ops(failure)
        with self._write() as batch:
            succeeded = all(self._holds(c) for c in compare)
            ops = success if succeeded else failure
            for op in ops:
                if isinstance(op, Put):
                    self._check_lease(op.lease)
            responses: list[list[Kv] | int | None] = []
            for op in ops:
                if isinstance(op, Put):
                    self._put(batch, op.key, op.value, op.lease)
                    responses.append(None)
                elif isinstance(op, Delete):
                    responses.append(self._delete(batch, op.key, op.prefix))
                else:
                    responses.append(self._range(op.key, prefix=op.prefix))
        return TxnResult(succeeded, self._revision, responses)

    async def compact(self, revision: int) -> None:
        self._check_open()
        if revision > self._revision:
            raise ValueError(f"cannot compact to {revision}: store revision is {self._revision}")
        if revision <= self._compact_revision:
            return
        with self._transaction():
            self._conn.execute("DELETE FROM events WHERE revision < ?", (revision,))
            self._conn.execute("UPDATE meta SET compact_revision = ?", (revision,))
        self._compact_revision = revision

    def _holds(self, c: Compare) -> bool:
        return compare_holds(c, self._get(c.key))

    def _put(self, batch: _Batch, key: str, value: bytes, lease: int) -> None:
        if not key:
            raise ValueError("key must not be empty")
        value = bytes(value)
        prev = self._get(key)
        if prev is None:
            kv = Kv(key, value, batch.revision, batch.revision, 1, lease)
        else:
            kv = Kv(key, value, prev.create_revision, batch.revision, prev.version + 1, lease)
        self._conn.execute(
            f"INSERT OR REPLACE INTO kv ({_KV_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease),
        )
        self._record(batch, Event(EventType.PUT, kv, prev))

    def _delete(self, batch: _Batch, key: str, prefix: bool) -> int:
        gone = self._range(key, prefix=prefix)
        if gone:
            where, args = _range_clause(key, prefix)
            self._conn.execute(f"DELETE FROM kv WHERE {where}", args)
            self._record_deletes(batch, gone)
        return len(gone)

    def _record_deletes(self, batch: _Batch, gone: list[Kv]) -> None:
        for prev in gone:
            self._record(
                batch, Event(EventType.DELETE, Kv(prev.key, b"", 0, batch.revision, 0), prev)
            )

    def _record(self, batch: _Batch, event: Event) -> None:
        kv, prev = event.kv, event.prev
        self._conn.execute(
            f"INSERT INTO events (seq, {_EVENT_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                batch.seq,
                batch.revision,
                event.type.value,
                kv.key,
                kv.value,
                kv.create_revision,
                kv.version,
                kv.lease,
                None if prev is None else prev.value,
                None if prev is None else prev.create_revision,
                None if prev is None else prev.mod_revision,
                None if prev is None else prev.version,
                None if prev is None else prev.lease,
            ),
        )
        batch.seq += 1

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _write(self) -> Iterator[_Batch]:
        """One revision: commits it (bumping the revision only if something changed)."""
        batch = _Batch(self._revision + 1)
        with self._transaction():
            yield batch
            if batch.seq:
                self._conn.execute("UPDATE meta SET revision = ?", (batch.revision,))
                floor = batch.revision - self._history_limit + 1
                if floor > self._compact_revision:
                    self._conn.execute("DELETE FROM events WHERE revision < ?", (floor,))
                    self._conn.execute("UPDATE meta SET compact_revision = ?", (floor,))
                    batch.compact_revision = floor
        if batch.seq:
            self._revision = batch.revision
            if batch.compact_revision is not None:
                self._compact_revision = batch.compact_revision
            self._notify()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise StoreError(f"state store {self.path}: {e}") from e

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"state store {self.path} is closed")

    # -- watch ---------------------------------------------------------------

    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[Event]:
        """Replay history from the events table, then follow new commits.

        The cursor is a revision, so replay and live phases are the same query:
        nothing is missed or repeated however writes interleave with reading.
        """
        next_revision = max(from_revision, 1)
        where, args = _range_clause(prefix, True)
        while not self._closed:
            if next_revision < self._compact_revision:
                raise CompactedError(next_revision, self._compact_revision)
            if next_revision > self._revision:
                changed = self._changed
                await changed.wait()
                continue
            last = min(self._revision, next_revision + self._WATCH_BATCH - 1)
            with self._errors():
                rows = self._conn.execute(
                    f"SELECT {_EVENT_COLUMNS} FROM events"
                    f" WHERE revision BETWEEN ? AND ? AND {where} ORDER BY revision, seq",
                    (next_revision, last, *args),
                ).fetchall()
            next_revision = last + 1
            for row in rows:
                yield _event(row)

    # -- leases --------------------------------------------------------------

    async def lease_grant(self, ttl: float) -> int:
        self._check_open()
        if not ttl > 0:
            raise ValueError("lease TTL must be positive")
        lease = 0
        while lease == 0 or lease in self._leases:
            lease = secrets.randbits(63)
        with self._errors():
            self._conn.execute(
                "INSERT INTO leases (id, ttl, expires_at) VALUES (?, ?, ?)",
                (lease, ttl, time.time() + ttl),
            )
        self._leases[lease] = _Lease(ttl, time.monotonic() + ttl)
        self._sweep_wake.set()
        return lease

    async def lease_keepalive(self, lease: int) -> float:
        self._check_open()
        self._check_lease(lease)
        state = self._leases[lease]
        with self._errors():
            self._conn.execute(
                "UPDATE leases SET expires_at = ? WHERE id = ?", (time.time() + state.ttl, lease)
            )
        state.deadline = time.monotonic() + state.ttl
        return state.ttl

    async def lease_revoke(self, lease: int) -> None:
        self._check_open()
        if lease in self._leases:
            self._expire(lease)

    def _check_lease(self, lease: int) -> None:
        if lease == 0:
            return
        state = self._leases.get(lease)
        if state is None:
            raise LeaseNotFoundError(f"lease {lease} not found")
        if state.deadline <= time.monotonic():
            raise LeaseNotFoundError(f"lease {lease} has expired")

    def _expire(self, lease: int) -> None:
        """Delete the lease and its keys, all in one revision."""
        with self._write() as batch:
            gone = [
                _kv(row)
                for row in self._conn.execute(
                    f"SELECT {_KV_COLUMNS} FROM kv WHERE lease = ? ORDER BY key", (lease,)
                )
            ]
            self._conn.execute("DELETE FROM kv WHERE lease = ?", (lease,))
            self._conn.execute("DELETE FROM leases WHERE id = ?", (lease,))
            self._record_deletes(batch, gone)
        self._leases.pop(lease, None)

    async def _sweep(self) -> None:
        """Expire leases as their deadlines pass, one revision per lease."""
        while not self._closed:
            delay = self._sweep_interval
            now = time.monotonic()
            for deadline, lease in sorted(
                (state.deadline, lease) for lease, state in self._leases.items()
            ):
                if deadline > now:
                    delay = min(delay, deadline - now)
                    break
                try:
                    self._expire(lease)
                except Exception:
                    log.exception("cannot expire lease %d; retrying", lease)
                    break
            self._sweep_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(delay, 0.001)):
                    await self._sweep_wake.wait()

    # -- lifecycle -----------------------------------------------------------

    def backup(self, dest: Path | str) -> None:
        """Write a consistent copy of the store to ``dest`` (SQLite's online backup API).

        The file is locked exclusively while the server runs, so only its owner can
        copy it; synchronous like every other call, so no write interleaves.
        """
        if self._closed:
            raise StoreError("the state store is closed")
        target = sqlite3.connect(dest)
        try:
            self._conn.backup(target)
        finally:
            target.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._notify()  # pending watches see _closed and finish
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        self._conn.close()
