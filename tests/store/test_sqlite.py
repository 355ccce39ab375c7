"""What only the embedded backend promises: persistence, restart grace, bounded history."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aether.store import (
    CompactedError,
    Compare,
    Event,
    EventType,
    Kv,
    Put,
    SqliteStateStore,
    StoreError,
    open_state_store,
)


async def take(events: AsyncIterator[Event], n: int, timeout: float = 5.0) -> list[Event]:
    got: list[Event] = []
    async with asyncio.timeout(timeout):
        while len(got) < n:
            got.append(await anext(events))
    return got


@contextlib.asynccontextmanager
async def watching(
    store: SqliteStateStore, prefix: str, from_revision: int
) -> AsyncIterator[AsyncIterator[Event]]:
    events = store.watch(prefix, from_revision)
    try:
        yield events
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def leases_on_disk(path: Path) -> dict[int, tuple[float, float]]:
    """The persisted leases (read only while no store has the file open)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {row[0]: (row[1], row[2]) for row in conn.execute("SELECT * FROM leases")}


async def test_a_new_store_is_empty_at_revision_zero(tmp_path: Path) -> None:
    async with await SqliteStateStore.open(tmp_path / "new" / "state.db") as store:
        assert await store.revision() == 0
        assert await store.range("") == ([], 0)
        assert await store.put("k", b"v") == 1


async def test_data_and_history_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with await SqliteStateStore.open(path) as store:
        r1 = await store.put("a", b"1")
        r2 = await store.put("b", b"2")
        await store.put("b", b"3")
        await store.delete("a")
        last = await store.revision()
        # writes that change nothing must not advance the persisted revision either
        await store.delete("missing")
        await store.txn([Compare("b", "value", "==", b"wrong")], [Put("b", b"x")])
    async with await SqliteStateStore.open(path) as store:
        assert await store.revision() == last
        assert await store.get("a") is None
        assert await store.get("b") == Kv("b", b"3", r2, last - 1, 2, 0)
        async with watching(store, "", r1) as events:
            got = await take(events, 4)
        assert [(e.type, e.kv.key, e.kv.mod_revision) for e in got] == [
            (EventType.PUT, "a", r1),
            (EventType.PUT, "b", r2),
            (EventType.PUT, "b", last - 1),
            (EventType.DELETE, "a", last),
        ]
        assert await store.put("c", b"4") == last + 1


async def test_leases_get_a_fresh_ttl_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    ttl = 0.4
    async with await SqliteStateStore.open(path) as store:
        granted_at = time.time()
        idle = await store.lease_grant(ttl)
        kept = await store.lease_grant(ttl)
        await store.put("nodes/idle", b"", lease=idle)
        await store.put("nodes/kept", b"", lease=kept)
    assert leases_on_disk(path)[idle][1] == pytest.approx(granted_at + ttl, abs=0.1)
    await asyncio.sleep(ttl + 0.1)  # both leases are past their deadline while "down"

    reopened_at = time.time()
    async with await SqliteStateStore.open(path, sweep_interval=0.02) as store:
        started = time.monotonic()
        assert await store.get("nodes/idle") is not None
        assert await store.get("nodes/kept") is not None
        assert await store.lease_keepalive(kept) == pytest.approx(ttl)

        async def keep_alive() -> None:
            while True:
                await asyncio.sleep(ttl / 4)
                await store.lease_keepalive(kept)

        keeper = asyncio.create_task(keep_alive())
        try:
            async with watching(store, "nodes/", await store.revision() + 1) as events:
                (gone,) = await take(events, 1, timeout=ttl * 5)
            assert (gone.type, gone.kv.key) == (EventType.DELETE, "nodes/idle")
            assert time.monotonic() - started >= ttl * 0.9  # a full TTL of grace, not zero
            assert await store.get("nodes/kept") is not None
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
    assert leases_on_disk(path)[kept][1] >= reopened_at + ttl


async def test_history_is_trimmed_to_history_limit(tmp_path: Path) -> None:
    async with await SqliteStateStore.open(tmp_path / "s.db", history_limit=5) as store:
        revisions = [await store.put("k", str(i).encode()) for i in range(10)]
        with pytest.raises(CompactedError) as info:
            async with watching(store, "", revisions[4]) as events:
                await take(events, 1)
        assert info.value.compact_revision == revisions[5]
        async with watching(store, "", revisions[5]) as events:
            got = await take(events, 5)
        assert [e.kv.value for e in got] == [str(i).encode() for i in range(5, 10)]


async def test_a_lower_history_limit_applies_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with await SqliteStateStore.open(path) as store:
        for i in range(10):
            await store.put("k", str(i).encode())
    async with await SqliteStateStore.open(path, history_limit=3) as store:
        with pytest.raises(CompactedError) as info:
            async with watching(store, "", 1) as events:
                await take(events, 1)
        assert info.value.compact_revision == 8


async def test_a_live_watch_that_falls_behind_compaction_is_told(tmp_path: Path) -> None:
    store = await SqliteStateStore.open(tmp_path / "s.db", history_limit=3)
    async with store, watching(store, "", 1) as events:
        await store.put("k", b"0")
        assert len(await take(events, 1)) == 1
        for i in range(5):  # the watcher does not read while these happen
            await store.put("k", str(i).encode())
        with pytest.raises(CompactedError):
            await take(events, 1)


async def test_compacting_to_a_future_revision_is_refused(tmp_path: Path) -> None:
    async with await SqliteStateStore.open(tmp_path / "s.db") as store:
        await store.put("k", b"v")
        with pytest.raises(ValueError):
            await store.compact(5)
        await store.compact(1)
        await store.compact(1)  # idempotent


async def test_only_one_process_may_own_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SqliteStateStore, "_LOCK_TIMEOUT", 0.05)
    path = tmp_path / "s.db"
    async with await SqliteStateStore.open(path):
        with pytest.raises(StoreError, match="in use"):
            await SqliteStateStore.open(path)
    async with await SqliteStateStore.open(path) as store:
        assert await store.revision() == 0


async def test_a_closed_store_refuses_calls(tmp_path: Path) -> None:
    store = await SqliteStateStore.open(tmp_path / "s.db")
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError):
        await store.put("k", b"v")
    with pytest.raises(StoreError):
        await store.get("k")


async def test_open_state_store_from_url(tmp_path: Path) -> None:
    store = await open_state_store(f"sqlite://{tmp_path}/url.db")
    try:
        assert isinstance(store, SqliteStateStore)
        assert store.path == tmp_path / "url.db"
    finally:
        await store.close()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://relative.db",
        "sqlite://host/abs.db",
        "sqlite:relative.db",
        "sqlite:///abs.db?mode=ro",
        "etcd+https://localhost:2379",  # etcd:// is the etcd backend (tests/store/test_etcd.py)
        "postgresql://localhost/db",
        "/plain/path.db",
    ],
)
async def test_open_state_store_rejects_other_urls(url: str) -> None:
    with pytest.raises(ValueError, match=re.escape("sqlite:///absolute/path.db")):
        await open_state_store(url)


async def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"definitely not an SQLite database" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        await SqliteStateStore.open(path)
