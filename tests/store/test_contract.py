"""The StateStore contract (see aether.store.base), run against every backend."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aether.store import (
    CompactedError,
    Compare,
    Delete,
    Event,
    EventType,
    Get,
    Kv,
    LeaderElection,
    Leadership,
    LeaseNotFoundError,
    Put,
    StateStore,
    current_leader,
)
from aether.store.base import CompareTarget
from tests.support.waiting import eventually

# -- helpers ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def watching(store: StateStore, prefix: str, from_revision: int) -> AsyncIterator[Any]:
    """A watch that is closed when the block ends, even if the test fails."""
    events = store.watch(prefix, from_revision)
    try:
        yield events
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


async def take(events: AsyncIterator[Event], n: int, timeout: float = 5.0) -> list[Event]:
    """The next ``n`` events, failing the test if they take longer than ``timeout``."""
    got: list[Event] = []
    async with asyncio.timeout(timeout):
        while len(got) < n:
            got.append(await anext(events))
    return got


async def nothing_more(events: AsyncIterator[Event], within: float = 0.1) -> None:
    """Assert the watch yields nothing else for a moment (no duplicates, no strays)."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(within):
            extra = await anext(events)
            pytest.fail(f"unexpected event {extra}")


def keys(kvs: list[Kv]) -> list[str]:
    return [kv.key for kv in kvs]


# -- get / put / delete / range ----------------------------------------------


async def test_get_missing_key_is_none(store: StateStore) -> None:
    assert await store.get("missing") is None


async def test_put_creates_a_key_at_a_new_revision(store: StateStore) -> None:
    before = await store.revision()
    revision = await store.put("k", b"v1")
    assert revision == before + 1 == await store.revision()
    assert await store.get("k") == Kv("k", b"v1", revision, revision, 1, 0)


async def test_overwrite_keeps_create_revision_and_bumps_version(store: StateStore) -> None:
    first = await store.put("k", b"v1")
    second = await store.put("k", b"v2")
    third = await store.put("k", b"v3")
    assert (first, second, third) == (first, first + 1, first + 2)
    assert await store.get("k") == Kv("k", b"v3", first, third, 3, 0)


async def test_recreated_key_starts_a_new_life(store: StateStore) -> None:
    await store.put("k", b"old")
    await store.put("k", b"old2")
    await store.delete("k")
    revision = await store.put("k", b"new")
    assert await store.get("k") == Kv("k", b"new", revision, revision, 1, 0)


async def test_every_write_bumps_the_revision_by_one_and_reads_do_not(store: StateStore) -> None:
    start = await store.revision()
    await store.put("a", b"1")
    await store.put("b", b"2")
    assert await store.delete("a") == 1
    assert await store.revision() == start + 3
    await store.get("b")
    await store.range("")
    await store.txn([], [Get("b")])
    assert await store.revision() == start + 3


async def test_deleting_nothing_is_not_a_write(store: StateStore) -> None:
    await store.put("a", b"1")
    start = await store.revision()
    assert await store.delete("missing") == 0
    assert await store.delete("nothing/", prefix=True) == 0
    assert await store.revision() == start


async def test_empty_key_is_rejected(store: StateStore) -> None:
    with pytest.raises(ValueError):
        await store.put("", b"v")


async def test_range_is_sorted_and_respects_prefix_boundaries(store: StateStore) -> None:
    for key in ["a/2", "ab/1", "a/1", "b/1", "a", "a/10", "a0"]:
        await store.put(key, key.encode())
    kvs, revision = await store.range("a/")
    assert keys(kvs) == ["a/1", "a/10", "a/2"]
    assert [kv.value for kv in kvs] == [b"a/1", b"a/10", b"a/2"]
    assert revision == await store.revision()
    assert keys((await store.range("ab/"))[0]) == ["ab/1"]
    assert keys((await store.range("a"))[0]) == ["a", "a/1", "a/10", "a/2", "a0", "ab/1"]
    assert keys((await store.range(""))[0]) == ["a", "a/1", "a/10", "a/2", "a0", "ab/1", "b/1"]
    assert (await store.range("c"))[0] == []


async def test_range_handles_non_ascii_and_maximal_code_points(store: StateStore) -> None:
    top = "\U0010ffff"
    below_surrogates = "\ud7ff"  # the next code point up is a surrogate
    for key in [f"z{top}", f"z{top}a", "z", "{", "é/1", "é/2", "ê", below_surrogates, "\ue000"]:
        await store.put(key, b"")
    assert keys((await store.range(below_surrogates))[0]) == [below_surrogates]
    assert keys((await store.range(f"z{top}"))[0]) == [f"z{top}", f"z{top}a"]
    assert keys((await store.range("z"))[0]) == ["z", f"z{top}", f"z{top}a"]
    assert keys((await store.range("é/"))[0]) == ["é/1", "é/2"]


async def test_delete_prefix_removes_only_that_prefix_in_one_revision(store: StateStore) -> None:
    for key in ["a", "a/1", "a/2", "ab/1"]:
        await store.put(key, b"x")
    start = await store.revision()
    assert await store.delete("a/", prefix=True) == 2
    assert await store.revision() == start + 1
    assert keys((await store.range(""))[0]) == ["a", "ab/1"]
    async with watching(store, "", start + 1) as events:
        deleted = await take(events, 2)
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in deleted] == [
        (EventType.DELETE, "a/1", start + 1),
        (EventType.DELETE, "a/2", start + 1),
    ]


# -- transactions ------------------------------------------------------------


_TARGETS: list[CompareTarget] = ["value", "version", "create_revision", "mod_revision"]


@pytest.mark.parametrize("target", _TARGETS)
async def test_compare_and_swap(store: StateStore, target: CompareTarget) -> None:
    created = await store.put("k", b"v1")
    current = await store.get("k")
    assert current is not None
    expected: bytes | int = getattr(current, target)
    stale = b"v0" if isinstance(expected, bytes) else expected + 100

    failed = await store.txn(
        [Compare("k", target, "==", stale)],
        [Put("k", b"wrong")],
        [Get("k")],
    )
    assert not failed.succeeded
    assert failed.revision == created == await store.revision()
    assert failed.responses == [[current]]

    swapped = await store.txn(
        [Compare("k", target, "==", expected)],
        [Put("k", b"v2"), Get("k")],
        [Get("k")],
    )
    assert swapped.succeeded
    assert swapped.revision == created + 1 == await store.revision()
    assert swapped.responses == [None, [Kv("k", b"v2", created, created + 1, 2, 0)]]


async def test_compares_on_a_missing_key(store: StateStore) -> None:
    async def holds(c: Compare) -> bool:
        return (await store.txn([c], [])).succeeded

    assert await holds(Compare("nope", "create_revision", "==", 0))
    assert await holds(Compare("nope", "mod_revision", "==", 0))
    assert await holds(Compare("nope", "version", "==", 0))
    assert await holds(Compare("nope", "lease", "==", 0))
    # a value compare on a missing key never holds, whatever the operator
    assert not await holds(Compare("nope", "value", "==", b""))
    assert not await holds(Compare("nope", "value", "!=", b"x"))


async def test_compare_operators(store: StateStore) -> None:
    await store.put("k", b"m")
    await store.put("k", b"m")  # version 2

    async def holds(c: Compare) -> bool:
        return (await store.txn([c], [])).succeeded

    assert await holds(Compare("k", "version", ">", 1))
    assert not await holds(Compare("k", "version", ">", 2))
    assert await holds(Compare("k", "version", "<", 3))
    assert not await holds(Compare("k", "version", "<", 2))
    assert await holds(Compare("k", "version", "!=", 1))
    assert not await holds(Compare("k", "version", "!=", 2))
    assert await holds(Compare("k", "value", "<", b"n"))
    assert await holds(Compare("k", "value", ">", b"l"))
    assert not await holds(Compare("k", "value", ">", b"m"))
    assert await holds(Compare("k", "value", "!=", b"x"))


async def test_create_if_absent(store: StateStore) -> None:
    absent = Compare("lock", "create_revision", "==", 0)
    first = await store.txn([absent], [Put("lock", b"a")], [Get("lock")])
    second = await store.txn([absent], [Put("lock", b"b")], [Get("lock")])
    assert first.succeeded
    assert not second.succeeded
    response = second.responses[0]
    assert isinstance(response, list)
    assert [kv.value for kv in response] == [b"a"]


async def test_txn_applies_all_ops_in_one_revision(store: StateStore) -> None:
    await store.put("c", b"old")
    await store.put("d/1", b"old")
    await store.put("d/2", b"old")
    start = await store.revision()
    result = await store.txn(
        [Compare("c", "value", "==", b"old")],
        [Put("a", b"1"), Put("b", b"2"), Delete("c"), Delete("d/", prefix=True), Get("d/", True)],
    )
    assert result.succeeded
    assert result.revision == start + 1 == await store.revision()
    assert result.responses == [None, None, 1, 2, []]
    kvs, _ = await store.range("")
    assert [(kv.key, kv.mod_revision) for kv in kvs] == [("a", start + 1), ("b", start + 1)]
    async with watching(store, "", start + 1) as events:
        got = await take(events, 5)
    assert {e.kv.mod_revision for e in got} == {start + 1}
    assert [(e.type, e.kv.key) for e in got] == [
        (EventType.PUT, "a"),
        (EventType.PUT, "b"),
        (EventType.DELETE, "c"),
        (EventType.DELETE, "d/1"),
        (EventType.DELETE, "d/2"),
    ]


async def test_failed_txn_applies_the_failure_branch_only(store: StateStore) -> None:
    await store.put("flag", b"no")
    result = await store.txn(
        [Compare("flag", "value", "==", b"yes")],
        [Put("success", b"1")],
        [Put("failure", b"1"), Get("flag")],
    )
    assert not result.succeeded
    assert await store.get("success") is None
    assert await store.get("failure") is not None


async def test_all_compares_must_hold(store: StateStore) -> None:
    await store.put("a", b"1")
    await store.put("b", b"2")
    result = await store.txn(
        [Compare("a", "value", "==", b"1"), Compare("b", "value", "==", b"wrong")],
        [Put("c", b"3")],
    )
    assert not result.succeeded
    assert await store.get("c") is None


async def test_txn_is_all_or_nothing_when_an_op_fails(store: StateStore) -> None:
    start = await store.revision()
    with pytest.raises(LeaseNotFoundError):
        await store.txn([], [Put("a", b"1"), Put("b", b"2", lease=123456789)])
    assert await store.get("a") is None
    assert await store.revision() == start


async def test_txn_rejects_writing_one_key_twice(store: StateStore) -> None:
    with pytest.raises(ValueError):
        await store.txn([], [Put("a", b"1"), Put("a", b"2")])
    with pytest.raises(ValueError):
        await store.txn([], [Put("a/x", b"1"), Delete("a/", prefix=True)])
    assert await store.get("a") is None


async def test_a_txn_of_max_txn_ops_compares_and_ops_is_accepted(store: StateStore) -> None:
    n = store.max_txn_ops
    result = await store.txn(
        [Compare(f"k{i:04d}", "create_revision", "==", 0) for i in range(n)],
        [Put(f"k{i:04d}", b"v") for i in range(n)],
    )
    assert result.succeeded
    assert len((await store.range("k"))[0]) == n


# -- watch -------------------------------------------------------------------


async def test_watch_replays_history_in_order(store: StateStore) -> None:
    r1 = await store.put("w/a", b"1")
    r2 = await store.put("w/a", b"2")
    r3 = await store.put("w/b", b"3")
    await store.delete("w/a")
    r4 = await store.revision()
    async with watching(store, "w/", r1) as events:
        got = await take(events, 4)
        await nothing_more(events)
    assert got == [
        Event(EventType.PUT, Kv("w/a", b"1", r1, r1, 1, 0), None),
        Event(EventType.PUT, Kv("w/a", b"2", r1, r2, 2, 0), Kv("w/a", b"1", r1, r1, 1, 0)),
        Event(EventType.PUT, Kv("w/b", b"3", r3, r3, 1, 0), None),
        Event(EventType.DELETE, Kv("w/a", b"", 0, r4, 0, 0), Kv("w/a", b"2", r1, r2, 2, 0)),
    ]


async def test_watch_from_the_middle_of_history(store: StateStore) -> None:
    revisions = [await store.put("w/k", str(i).encode()) for i in range(5)]
    async with watching(store, "w/", revisions[3]) as events:
        got = await take(events, 2)
    assert [e.kv.value for e in got] == [b"3", b"4"]


async def test_watch_delivers_live_events(store: StateStore) -> None:
    start = await store.revision() + 1
    async with watching(store, "w/", start) as events:
        pending = asyncio.create_task(take(events, 3))
        await asyncio.sleep(0.01)  # let the watch start waiting first
        assert not pending.done()
        r1 = await store.put("w/a", b"1")
        r2 = await store.put("w/a", b"2")
        await store.delete("w/a")
        r3 = await store.revision()
        got = await pending
    assert [(e.type, e.kv.mod_revision) for e in got] == [
        (EventType.PUT, r1),
        (EventType.PUT, r2),
        (EventType.DELETE, r3),
    ]


async def test_watch_filters_by_prefix(store: StateStore) -> None:
    start = await store.revision() + 1
    for key in ["a/1", "ab/1", "a", "b/1", "a/2"]:
        await store.put(key, b"")
    await store.delete("ab/1")
    await store.delete("a/1")
    async with watching(store, "a/", start) as events:
        got = await take(events, 3)
        await store.put("ab/2", b"")
        await nothing_more(events)
    assert [(e.type, e.kv.key) for e in got] == [
        (EventType.PUT, "a/1"),
        (EventType.PUT, "a/2"),
        (EventType.DELETE, "a/1"),
    ]


async def test_concurrent_watchers_see_the_same_events(store: StateStore) -> None:
    start = await store.revision() + 1
    async with watching(store, "", start) as first, watching(store, "", start) as second:
        tasks = [asyncio.create_task(take(w, 20)) for w in (first, second)]
        for i in range(20):
            await store.put(f"k/{i % 3}", str(i).encode())
        a, b = await asyncio.gather(*tasks)
    assert a == b
    assert [e.kv.mod_revision for e in a] == list(range(start, start + 20))


async def test_watch_misses_and_repeats_nothing_when_writes_race_the_replay(
    store: StateStore,
) -> None:
    start = await store.revision() + 1
    for i in range(600):  # enough history that replay takes several reads
        await store.put(f"r/{i:04d}", str(i).encode())

    async def writer() -> None:
        for i in range(600, 900):
            await store.put(f"r/{i:04d}", str(i).encode())
            await store.put(f"other/{i}", b"noise")
            await asyncio.sleep(0)

    async with watching(store, "r/", start) as events:
        task = asyncio.create_task(writer())
        got: list[Event] = []
        async with asyncio.timeout(20):
            while len(got) < 900:
                got.append(await anext(events))
                await asyncio.sleep(0)  # give the writer a turn mid-replay
        await task
        await nothing_more(events)
    assert [e.kv.key for e in got] == [f"r/{i:04d}" for i in range(900)]
    revisions = [e.kv.mod_revision for e in got]
    assert revisions == sorted(set(revisions))


async def test_watch_from_a_compacted_revision_raises(store: StateStore) -> None:
    revisions = [await store.put("c/k", str(i).encode()) for i in range(5)]
    await store.compact(revisions[2])
    with pytest.raises(CompactedError) as info:
        async with watching(store, "c/", revisions[0]) as events:
            await take(events, 1)
    assert info.value.compact_revision == revisions[2]
    async with watching(store, "c/", revisions[2]) as events:
        got = await take(events, 3)
    assert [e.kv.value for e in got] == [b"2", b"3", b"4"]
    # compaction keeps the current state
    assert (await store.get("c/k")) == Kv("c/k", b"4", revisions[0], revisions[4], 5, 0)


async def test_close_ends_pending_watches(store: StateStore) -> None:
    start = await store.revision() + 1
    events = store.watch("", start)
    drained = asyncio.create_task(take(events, 1_000_000, timeout=5))
    await store.put("k", b"v")
    await asyncio.sleep(0.01)
    await store.close()
    with pytest.raises(StopAsyncIteration):
        await drained


# -- leases ------------------------------------------------------------------


async def test_leased_keys_vanish_after_the_ttl_with_delete_events(
    store: StateStore, ttl: float
) -> None:
    granted = time.monotonic()
    lease = await store.lease_grant(ttl)
    assert lease > 0
    await store.put("l/a", b"1", lease=lease)
    await store.put("l/b", b"2", lease=lease)
    await store.put("l/keep", b"3")
    kv = await store.get("l/a")
    assert kv is not None and kv.lease == lease
    async with watching(store, "l/", await store.revision() + 1) as events:
        got = await take(events, 2, timeout=ttl * 5 + 2)
    assert time.monotonic() - granted >= ttl * 0.9
    assert [(e.type, e.kv.key) for e in got] == [
        (EventType.DELETE, "l/a"),
        (EventType.DELETE, "l/b"),
    ]
    assert got[0].kv.mod_revision == got[1].kv.mod_revision  # one revision per expiry
    assert [e.prev.value for e in got if e.prev] == [b"1", b"2"]
    assert keys((await store.range("l/"))[0]) == ["l/keep"]
    with pytest.raises(LeaseNotFoundError):
        await store.lease_keepalive(lease)
    with pytest.raises(LeaseNotFoundError):
        await store.put("l/late", b"x", lease=lease)


async def test_keepalive_extends_the_lease(store: StateStore, ttl: float) -> None:
    lease = await store.lease_grant(ttl)
    await store.put("k", b"v", lease=lease)
    until = time.monotonic() + ttl * 2.5
    while time.monotonic() < until:
        await asyncio.sleep(ttl / 4)
        assert await store.lease_keepalive(lease) > 0
        assert await store.get("k") is not None
    async with watching(store, "k", await store.revision() + 1) as events:
        (gone,) = await take(events, 1, timeout=ttl * 5 + 2)
    assert gone.type is EventType.DELETE


async def test_revoke_deletes_keys_immediately(store: StateStore, ttl: float) -> None:
    lease = await store.lease_grant(ttl * 10)
    await store.put("r/a", b"", lease=lease)
    await store.put("r/b", b"", lease=lease)
    start = await store.revision()
    await store.lease_revoke(lease)
    assert await store.revision() == start + 1
    assert (await store.range("r/"))[0] == []
    async with watching(store, "r/", start + 1) as events:
        got = await take(events, 2)
    assert [(e.type, e.kv.mod_revision) for e in got] == [(EventType.DELETE, start + 1)] * 2
    await store.lease_revoke(lease)  # unknown leases are ignored
    with pytest.raises(LeaseNotFoundError):
        await store.lease_keepalive(lease)


async def test_put_without_lease_detaches_key_from_its_lease(store: StateStore, ttl: float) -> None:
    lease = await store.lease_grant(ttl * 10)
    await store.put("k", b"leased", lease=lease)
    await store.put("k", b"free")
    await store.lease_revoke(lease)
    kv = await store.get("k")
    assert kv is not None and kv.value == b"free" and kv.lease == 0


async def test_unknown_leases_are_rejected(store: StateStore) -> None:
    with pytest.raises(LeaseNotFoundError):
        await store.lease_keepalive(987654321)
    with pytest.raises(LeaseNotFoundError):
        await store.put("k", b"v", lease=987654321)
    assert await store.get("k") is None


async def test_lease_ids_are_distinct_and_positive(store: StateStore, ttl: float) -> None:
    leases = [await store.lease_grant(ttl * 10) for _ in range(20)]
    assert len(set(leases)) == 20
    assert all(0 < lease < 2**63 for lease in leases)


async def test_granting_a_lease_is_not_a_write(store: StateStore, ttl: float) -> None:
    start = await store.revision()
    lease = await store.lease_grant(ttl * 10)
    await store.lease_keepalive(lease)
    await store.lease_revoke(lease)  # no keys: nothing to delete
    assert await store.revision() == start


# -- model check ---------------------------------------------------------------

_KEYS = ["a", "a/1", "a/2", "ab", "b"]
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(_KEYS), st.binary(max_size=3)),
        st.tuples(st.just("delete"), st.sampled_from(_KEYS), st.booleans()),
        st.tuples(st.just("cas"), st.sampled_from(_KEYS), st.integers(0, 3)),
    ),
    max_size=25,
)
_example = itertools.count()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_ops)
async def test_store_behaves_like_a_revisioned_dict(
    store: StateStore, ops: list[tuple[str, str, Any]]
) -> None:
    """Random writes against a model; replaying the watch must rebuild the same state."""
    root = f"model/{next(_example)}/"
    model: dict[str, Kv] = {}
    start = revision = await store.revision()
    changes = 0  # events the watch must replay
    for kind, name, arg in ops:
        key = root + name
        if kind == "put":
            revision = await store.put(key, arg)
            old = model.get(key)
            create, version = (old.create_revision, old.version + 1) if old else (revision, 1)
            model[key] = Kv(key, arg, create, revision, version)
            changes += 1
        elif kind == "delete":
            gone = [k for k in model if k == key or (arg and k.startswith(key))]
            assert await store.delete(key, prefix=arg) == len(gone)
            for k in gone:
                del model[k]
            changes += len(gone)
            revision += bool(gone)
        else:
            old = model.get(key)
            result = await store.txn(
                [Compare(key, "version", "==", arg)], [Put(key, b"cas")], [Get(key)]
            )
            assert result.succeeded == ((old.version if old else 0) == arg)
            if result.succeeded:
                revision += 1
                create, version = (old.create_revision, old.version + 1) if old else (revision, 1)
                model[key] = Kv(key, b"cas", create, revision, version)
                changes += 1
            else:
                assert result.responses == [[old] if old else []]
        assert await store.revision() == revision
    kvs, _ = await store.range(root)
    assert kvs == sorted(model.values(), key=lambda kv: kv.key)

    replayed: dict[str, Kv] = {}
    async with watching(store, root, start + 1) as events:
        for event in await take(events, changes):
            if event.type is EventType.PUT:
                replayed[event.kv.key] = event.kv
            else:
                del replayed[event.kv.key]
        await nothing_more(events, within=0.01)
    assert replayed == model


# -- election ----------------------------------------------------------------

ElectionFactory = Callable[..., LeaderElection]


@pytest.fixture
async def elect(store: StateStore, ttl: float) -> AsyncIterator[ElectionFactory]:
    made: list[LeaderElection] = []

    def make(candidate: str, key: str = "elect/leader") -> LeaderElection:
        election = LeaderElection(store, key, candidate=candidate, ttl=ttl)
        made.append(election)
        return election

    yield make
    for election in made:
        await election.resign()


async def blocked(task: asyncio.Task[Leadership], within: float) -> bool:
    """True if ``task`` is still waiting after ``within`` seconds."""
    done, _ = await asyncio.wait({task}, timeout=within)
    return not done


async def test_only_one_candidate_leads(
    store: StateStore, ttl: float, elect: ElectionFactory
) -> None:
    a, b = elect("a"), elect("b")
    term = await asyncio.wait_for(a.campaign(), 5)
    assert term.candidate == "a"
    assert await current_leader(store, "elect/leader") == "a"
    contender = asyncio.create_task(b.campaign())
    try:
        # Longer than a TTL: only the keepalive can keep a in office this long.
        assert await blocked(contender, ttl * 2)
        assert await current_leader(store, "elect/leader") == "a"
        assert not term.lost.is_set()
        assert a.leadership is term
        assert b.leadership is None
    finally:
        contender.cancel()
        await asyncio.gather(contender, return_exceptions=True)


async def test_the_next_candidate_takes_over_on_resign(
    store: StateStore, elect: ElectionFactory
) -> None:
    a, b = elect("a"), elect("b")
    first = await asyncio.wait_for(a.campaign(), 5)
    contender = asyncio.create_task(b.campaign())
    assert await blocked(contender, 0.05)
    await a.resign()
    assert first.lost.is_set()
    second = await asyncio.wait_for(contender, 5)
    assert second.candidate == "b"
    assert second.epoch > first.epoch
    assert (first.previous, second.previous) == (None, "a")  # what the failover log names
    assert await current_leader(store, "elect/leader") == "b"


async def test_the_next_candidate_takes_over_when_the_leader_lease_expires(
    store: StateStore, ttl: float, elect: ElectionFactory
) -> None:
    # A leader that crashed: its key and lease remain, nobody keeps the lease alive.
    lease = await store.lease_grant(ttl)
    crashed = await store.txn(
        [Compare("elect/leader", "create_revision", "==", 0)],
        [Put("elect/leader", b"crashed", lease=lease)],
    )
    assert crashed.succeeded
    b = elect("b")
    term = await asyncio.wait_for(b.campaign(), ttl * 5 + 2)
    assert term.epoch > crashed.revision
    assert term.previous == "crashed"
    assert await current_leader(store, "elect/leader") == "b"


async def test_epochs_increase_across_terms(elect: ElectionFactory) -> None:
    a, b = elect("a"), elect("b")
    epochs = []
    for candidate in (a, b, a):
        term = await asyncio.wait_for(candidate.campaign(), 5)
        epochs.append(term.epoch)
        await candidate.resign()
    assert epochs == sorted(set(epochs))


async def test_fence_fails_once_leadership_changes(
    store: StateStore, elect: ElectionFactory
) -> None:
    a, b = elect("a"), elect("b")
    first = await asyncio.wait_for(a.campaign(), 5)
    assert (await store.txn([first.fence()], [Put("elect/data", b"a")])).succeeded
    await a.resign()
    second = await asyncio.wait_for(b.campaign(), 5)
    stale = await store.txn([first.fence()], [Put("elect/data", b"late write from a")])
    assert not stale.succeeded
    data = await store.get("elect/data")
    assert data is not None and data.value == b"a"
    assert (await store.txn([second.fence()], [Put("elect/data", b"b")])).succeeded


async def test_leader_notices_when_its_lease_is_gone(
    store: StateStore, ttl: float, elect: ElectionFactory
) -> None:
    a = elect("a")
    term = await asyncio.wait_for(a.campaign(), 5)
    await store.lease_revoke(term.lease)  # e.g. expired while the leader was partitioned
    await asyncio.wait_for(term.lost.wait(), ttl * 3)
    assert a.leadership is None


async def test_leader_notices_when_its_key_is_taken(
    store: StateStore, ttl: float, elect: ElectionFactory
) -> None:
    a = elect("a")
    term = await asyncio.wait_for(a.campaign(), 5)
    await store.delete("elect/leader")
    await store.put("elect/leader", b"usurper")
    await asyncio.wait_for(term.lost.wait(), ttl * 3)

    # the deposed leader gives its lease up (just after it stops acting: ``lost`` first)
    async def given_up() -> bool:
        try:
            await store.lease_keepalive(term.lease)
        except LeaseNotFoundError:
            return True
        return False

    await eventually(given_up, "the deposed leader's lease revoked", timeout=ttl * 3)


async def test_no_leader_without_candidates(store: StateStore, elect: ElectionFactory) -> None:
    assert await current_leader(store, "elect/leader") is None
    a = elect("a")
    await a.campaign()
    await a.resign()
    assert await current_leader(store, "elect/leader") is None
