"""etcd-specific behaviour of EtcdStateStore, on real etcd clusters.

The generic StateStore contract runs against etcd in test_contract.py; this
covers what only a distributed backend has: URLs naming several members, key
prefixes, compaction recovery by relisting, and losing and regaining a member.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from aether.ports import free_port
from aether.store import (
    CompactedError,
    Event,
    EventType,
    StateStore,
    StoreUnavailableError,
    open_state_store,
)
from aether.store.etcd import EtcdStateStore, parse_etcd_url
from tests.support.etcd import EtcdCluster, etcd_binary
from tests.support.server import running_server

T = TypeVar("T")


@pytest.fixture
def fresh_cluster() -> Iterator[EtcdCluster]:
    """A cluster of its own, for tests that kill members."""
    try:
        etcd_binary()
    except RuntimeError as e:
        pytest.fail(str(e))
    cluster = EtcdCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[StateStore]:
    store = await open_state_store(url)
    try:
        yield store
    finally:
        await store.close()


async def until_available(call: Callable[[], Awaitable[T]], within: float = 15.0) -> T:
    """Retry ``call`` while the store is unavailable (e.g. during a raft election)."""
    async with asyncio.timeout(within):
        while True:
            try:
                return await call()
            except StoreUnavailableError:
                await asyncio.sleep(0.05)


# -- URLs and prefixes ----------------------------------------------------------


def test_parse_etcd_url() -> None:
    assert parse_etcd_url("etcd://10.0.0.1:2379") == (["http://10.0.0.1:2379"], "", "", "")
    assert parse_etcd_url("etcd://a:1,b:2/aether")[:2] == (["http://a:1", "http://b:2"], "aether/")
    assert parse_etcd_url("etcd://a:1/x/y/").prefix == "x/y/"
    tls = parse_etcd_url("etcds://a:1,b:2/p")
    assert tls.endpoints == ["https://a:1", "https://b:2"] and tls.prefix == "p/"
    auth = parse_etcd_url("etcds://root:p%40ss%2Fw@a:1,b:2/p")
    assert (auth.username, auth.password) == ("root", "p@ss/w")
    assert auth.endpoints == ["https://a:1", "https://b:2"]
    for bad in [
        "etcd://",
        "etcd://a",
        "etcd://a:b",
        "etcd://a:1,",
        "http://a:1",
        "etcd://a:1?x=1",
        "etcd+https://a:1",
        "etcd://root@a:1",  # a user without a password
    ]:
        with pytest.raises(ValueError):
            parse_etcd_url(bad)
    with pytest.raises(ValueError) as info:
        parse_etcd_url("etcd://root:secret@a:b")
    assert "secret" not in str(info.value)


async def test_open_state_store_accepts_etcd_urls_and_prefixes_isolate(
    etcd_cluster: EtcdCluster,
) -> None:
    async with (
        opened(etcd_cluster.url + "/iso-a") as a,
        opened(etcd_cluster.url + "/iso-b") as b,
    ):
        assert isinstance(a, EtcdStateStore) and len(a.endpoints) == 3
        await a.put("k", b"from a")
        await b.put("k", b"from b")
        a_kv, b_kv = await a.get("k"), await b.get("k")
        assert a_kv is not None and a_kv.value == b"from a" and a_kv.key == "k"
        assert b_kv is not None and b_kv.value == b"from b"
        assert [kv.key for kv in (await a.range(""))[0]] == ["k"]
        assert await a.delete("", prefix=True) == 1
        assert await b.get("k") is not None
        await b.delete("", prefix=True)


async def test_no_reachable_member_is_unavailable() -> None:
    dead = f"etcd://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    with pytest.raises(StoreUnavailableError):
        await open_state_store(dead)
    store = EtcdStateStore(parse_etcd_url(dead)[0])
    try:
        with pytest.raises(StoreUnavailableError):
            await store.get("k")
        with pytest.raises(StoreUnavailableError):
            await store.put("k", b"v")
    finally:
        await store.close()


# -- compaction ----------------------------------------------------------------


async def test_compaction_is_recovered_by_relisting(etcd_cluster: EtcdCluster) -> None:
    """The caller's loop: list, watch from the list's revision; on CompactedError, relist."""
    async with opened(etcd_cluster.url + "/compaction") as store:
        first = await store.put("c/a", b"1")
        await store.put("c/b", b"1")
        await store.put("c/a", b"2")
        await store.delete("c/b")
        await store.put("c/c", b"1")
        await store.compact(await store.revision())

        view: dict[str, bytes] = {}
        watched_from = first  # a stale cursor, as after a long disconnect
        with pytest.raises(CompactedError) as info:
            async for _ in store.watch("c/", watched_from):
                pass
        assert info.value.compact_revision == await store.revision()
        assert info.value.requested == first

        kvs, revision = await store.range("c/")  # relist
        view = {kv.key: kv.value for kv in kvs}
        assert view == {"c/a": b"2", "c/c": b"1"}
        events = store.watch("c/", revision + 1)
        try:
            await store.put("c/d", b"new")
            await store.delete("c/a")
            async with asyncio.timeout(5):
                for _ in range(2):
                    event: Event = await anext(events)
                    if event.type is EventType.PUT:
                        view[event.kv.key] = event.kv.value
                    else:
                        del view[event.kv.key]
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        assert view == {"c/c": b"1", "c/d": b"new"}
        assert view == {kv.key: kv.value for kv in (await store.range("c/"))[0]}
        await store.delete("", prefix=True)


async def test_compacting_twice_or_to_the_future(etcd_cluster: EtcdCluster) -> None:
    async with opened(etcd_cluster.url + "/compact-edges") as store:
        revision = await store.put("k", b"v")
        await store.compact(revision)
        await store.compact(revision)  # already compacted: nothing to do
        with pytest.raises(ValueError):
            await store.compact(revision + 1000)
        await store.delete("k")


# -- losing a member -----------------------------------------------------------


async def test_writes_go_on_without_one_member_and_it_catches_up(
    fresh_cluster: EtcdCluster,
) -> None:
    leader = fresh_cluster.leader()
    # Talk to the leader first, so losing it also exercises client failover.
    endpoints = fresh_cluster.endpoints
    endpoints = endpoints[leader:] + endpoints[:leader]
    store = await EtcdStateStore.open(endpoints, timeout=2.0)
    try:
        before = await store.put("chaos/before", b"1")
        await asyncio.to_thread(fresh_cluster.kill, leader)

        written = [
            await until_available(lambda i=i: store.put(f"chaos/{i:02d}", str(i).encode()))  # type: ignore[misc]
            for i in range(20)
        ]
        assert written == sorted(written) and written[0] > before
        kvs, revision = await store.range("chaos/")
        assert len(kvs) == 21
        lease = await store.lease_grant(30)
        await store.put("chaos/leased", b"x", lease=lease)
        assert await store.lease_keepalive(lease) > 0

        await asyncio.to_thread(fresh_cluster.restart, leader)
        # Ask only the member that was down: it must have caught up.
        back = EtcdStateStore([fresh_cluster.endpoints[leader]])
        try:
            caught_up = await until_available(lambda: back.range("chaos/"))
            assert [kv.key for kv in caught_up[0]] == [kv.key for kv in kvs] + ["chaos/leased"]
            assert caught_up[1] >= revision + 1
            leased = await back.get("chaos/leased")
            assert leased is not None and leased.lease == lease
            # and it serves writes again
            await until_available(lambda: back.put("chaos/after", b"1"))
            assert await store.get("chaos/after") is not None
        finally:
            await back.close()
    finally:
        await store.close()


async def test_a_watch_survives_losing_its_member(fresh_cluster: EtcdCluster) -> None:
    store = await EtcdStateStore.open(fresh_cluster.endpoints, timeout=2.0)
    try:
        start = await store.revision() + 1
        events = store.watch("w/", start)
        got: list[Event] = []

        async def collect(n: int) -> None:
            async with asyncio.timeout(15):
                while len(got) < n:
                    got.append(await anext(events))

        try:
            for i in range(5):
                await store.put(f"w/{i}", b"before")
            await collect(5)
            # The watch streams from the member the store last used: kill that one.
            await asyncio.to_thread(fresh_cluster.kill, store._current)
            for i in range(5, 10):
                await until_available(lambda i=i: store.put(f"w/{i}", b"after"))  # type: ignore[misc]
            await collect(10)
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        assert [e.kv.key for e in got] == [f"w/{i}" for i in range(10)]
        revisions = [e.kv.mod_revision for e in got]
        assert revisions == sorted(set(revisions))
    finally:
        await store.close()


async def test_a_watch_leaves_a_frozen_member(fresh_cluster: EtcdCluster) -> None:
    """SIGSTOP the watch's member: its stream neither ends nor errors, yet the watch
    delivers a write made through another member, and requests fail over too."""
    store = await EtcdStateStore.open(fresh_cluster.endpoints, timeout=1.0, watch_idle_timeout=0.5)
    frozen = store._current  # the watch streams from the member the store last used
    others = [e for i, e in enumerate(fresh_cluster.endpoints) if i != frozen]
    writer = await EtcdStateStore.open(others, timeout=2.0)
    try:
        start = await store.revision() + 1
        events = store.watch("frozen/", start)
        try:
            await writer.put("frozen/before", b"1")
            async with asyncio.timeout(15):
                first: Event = await anext(events)
            assert first.kv.key == "frozen/before"

            fresh_cluster.freeze(frozen)
            try:
                await until_available(lambda: writer.put("frozen/after", b"2"), within=20)
                async with asyncio.timeout(30):
                    second: Event = await anext(events)
                assert second.kv.key == "frozen/after" and second.kv.value == b"2"
                assert second.kv.mod_revision > first.kv.mod_revision

                # the store's own requests leave the frozen member as well: a read
                # moves on, a write in flight there is reported and the next one lands
                kv = await until_available(lambda: store.get("frozen/after"), within=20)
                assert kv is not None and kv.value == b"2"
                assert store._current != frozen
                await until_available(lambda: store.put("frozen/again", b"3"), within=20)
                assert await store.put("frozen/last", b"4") > second.kv.mod_revision
                third = [e.kv.key for e in [await anext(events), await anext(events)]]
                assert third == ["frozen/again", "frozen/last"]
            finally:
                fresh_cluster.thaw(frozen)
        finally:
            await events.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()
        await writer.close()


async def test_a_lease_outlives_a_frozen_member(fresh_cluster: EtcdCluster) -> None:
    """SIGSTOP the (follower) member a lease's keepalives go to: with the store's
    default 5 s deadline a keepalive would wait there past the 3 s TTL and the lease
    (a leader's, a node's) would expire; keepalives get a third of the TTL per
    member instead, so they move on and the lease lives."""
    leader = fresh_cluster.leader()
    follower = (leader + 1) % len(fresh_cluster.endpoints)
    ordered = fresh_cluster.endpoints[follower:] + fresh_cluster.endpoints[:follower]
    store = await EtcdStateStore.open(ordered)  # the default timeout (5 s)
    try:
        lease = await store.lease_grant(3)
        await store.put("frozen-lease/key", b"held", lease=lease)
        assert store._current == 0  # the follower
        fresh_cluster.freeze(follower)
        try:
            for _ in range(6):  # like the leader's keepalive loop: every ttl/3
                assert await store.lease_keepalive(lease) > 0
                await asyncio.sleep(1)
            kv = await store.get("frozen-lease/key")
            assert kv is not None and kv.lease == lease
        finally:
            fresh_cluster.thaw(follower)
    finally:
        await store.close()


# -- the server on etcd ------------------------------------------------------------


def test_server_runs_on_etcd_and_answers_unavailable_while_it_is_down(
    fresh_cluster: EtcdCluster, tmp_path: Path
) -> None:
    url = fresh_cluster.url + "/aether"
    with running_server(tmp_path, state_url=url) as server:
        auth = {"Authorization": f"Bearer {server.admin_token}"}
        assert httpx.get(f"{server.base_url}/api/v1/nodes", headers=auth).status_code == 200
        # the server's keys (its leader key among them) live in etcd under the prefix
        raw = httpx.post(
            fresh_cluster.endpoints[0] + "/v3/kv/range",
            json={"key": base64.b64encode(b"aether/").decode(), "range_end": "YWV0aGVyMA=="},
        ).json()
        assert raw.get("kvs"), "the server wrote nothing to etcd"

        for index in range(3):
            fresh_cluster.kill(index)
        down = httpx.get(f"{server.base_url}/api/v1/nodes", headers=auth, timeout=30)
        assert down.status_code == 503
        assert down.json()["code"] == "service_unavailable"
        assert httpx.get(f"{server.base_url}/readyz", timeout=30).status_code == 503

        for index in range(3):
            fresh_cluster.restart(index, wait=False)
        fresh_cluster.wait_healthy()
        deadline = time.monotonic() + 15
        while True:
            back = httpx.get(f"{server.base_url}/api/v1/nodes", headers=auth, timeout=30)
            if back.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert back.status_code == 200
