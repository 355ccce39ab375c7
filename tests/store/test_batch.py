"""Fenced batched writes (aether.store.batch), on every backend of the contract suite."""

from __future__ import annotations

import math

import pytest

from aether.store import Compare, Delete, LeaderElection, Put, StateStore
from aether.store.batch import Write, apply_fenced, batches


def create(key: str, value: bytes = b"v") -> Write:
    """Write ``key`` only if it does not exist yet (what a placement does)."""
    return Write((Compare(key, "create_revision", "==", 0),), (Put(key, value),))


async def lead(store: StateStore, candidate: str = "a") -> tuple[LeaderElection, Compare]:
    election = LeaderElection(store, key="leader", candidate=candidate, ttl=30)
    term = await election.campaign()
    return election, term.fence()


# -- apply_fenced ---------------------------------------------------------------


@pytest.mark.parametrize("in_flight", [1, 4])
async def test_writes_are_applied_in_few_transactions(store: StateStore, in_flight: int) -> None:
    election, fence = await lead(store)
    writes = [create(f"instances/{i:04d}", f"v{i}".encode()) for i in range(300)]
    before = await store.revision()

    result = await apply_fenced(store, fence, writes, in_flight=in_flight)

    assert result.applied == (True,) * 300 and not result.fenced
    per_txn = store.max_txn_ops - 1  # the fence is one compare of each
    assert result.transactions == math.ceil(300 / per_txn)
    assert await store.revision() == before + result.transactions
    kvs, _ = await store.range("instances/")
    assert [kv.value for kv in kvs] == [f"v{i}".encode() for i in range(300)]
    await election.resign()


@pytest.mark.parametrize("in_flight", [1, 4])
async def test_one_conflicting_write_does_not_drop_the_others(
    store: StateStore, in_flight: int
) -> None:
    election, fence = await lead(store)
    await store.put("instances/0003", b"already there")
    writes = [create(f"instances/{i:04d}", b"new") for i in range(10)]

    result = await apply_fenced(store, fence, writes, max_ops=4, in_flight=in_flight)

    assert result.applied == tuple(i != 3 for i in range(10)) and not result.fenced
    kvs, _ = await store.range("instances/")
    values = {kv.key: kv.value for kv in kvs}
    assert values.pop("instances/0003") == b"already there"
    assert values == {f"instances/{i:04d}": b"new" for i in range(10) if i != 3}
    await election.resign()


@pytest.mark.parametrize("in_flight", [1, 4])
async def test_a_deposed_writer_writes_nothing(store: StateStore, in_flight: int) -> None:
    old, fence = await lead(store, "old")
    await old.resign()
    new, _ = await lead(store, "new")  # a successor's term: the old fence no longer holds
    await store.put("instances/0001", b"conflict")  # and a failing condition as well
    before = await store.revision()

    writes = [create(f"instances/{i:04d}") for i in range(200)]
    result = await apply_fenced(store, fence, writes, max_ops=50, in_flight=in_flight)

    assert result.fenced
    assert result.applied == (False,) * 200
    # stopped at the first refused batch (or group of batches), no retries
    assert result.transactions == in_flight
    assert await store.revision() == before
    assert len((await store.range("instances/"))[0]) == 1
    await new.resign()


@pytest.mark.parametrize("in_flight", [1, 4])
async def test_writes_on_one_key_apply_in_order(store: StateStore, in_flight: int) -> None:
    """A later write that reads an earlier one's key sees it, as with one txn each."""
    election, fence = await lead(store)
    writes = [
        create("a", b"1"),
        Write((Compare("a", "version", "==", 1),), (Put("a", b"2"),)),  # needs the first
        create("b"),
        Write((Compare("b", "version", "==", 1),), (Delete("b"),)),
        create("c"),
    ]

    result = await apply_fenced(store, fence, writes, max_ops=2, in_flight=in_flight)

    assert result.applied == (True,) * 5
    a = await store.get("a")
    assert a is not None and a.value == b"2" and a.version == 2
    assert await store.get("b") is None
    assert await store.get("c") is not None
    await election.resign()


# -- batches: how writes are grouped ---------------------------------------------


def test_batches_respect_the_op_and_compare_limits() -> None:
    writes = [create(f"k{i}") for i in range(10)]
    assert batches(writes, max_ops=4) == [range(0, 3), range(3, 6), range(6, 9), range(9, 10)]
    two_ops = [Write((), (Put(f"p{i}", b""), Delete(f"e{i}"))) for i in range(5)]
    assert batches(two_ops, max_ops=4) == [range(0, 2), range(2, 4), range(4, 5)]


def test_batches_respect_the_byte_limit() -> None:
    writes = [create(f"k{i}", b"x" * 100) for i in range(5)]
    assert batches(writes, max_ops=100, max_bytes=250) == [
        range(0, 2),
        range(2, 4),
        range(4, 5),
    ]


def test_a_write_touching_a_key_of_the_batch_starts_a_new_one() -> None:
    writes = [
        create("a"),
        create("b"),
        Write((Compare("a", "version", "==", 1),), (Put("c", b""),)),  # compares a
        create("d"),
        Write((), (Delete("d"),)),  # writes d
    ]
    assert batches(writes, max_ops=100) == [range(0, 2), range(2, 4), range(4, 5)]


def test_a_prefix_delete_is_a_batch_of_its_own() -> None:
    writes = [create("a"), Write((), (Delete("x/", prefix=True),)), create("b")]
    assert batches(writes, max_ops=100) == [range(0, 1), range(1, 2), range(2, 3)]


def test_batches_need_room_for_the_fence() -> None:
    assert batches([], max_ops=2) == []
    with pytest.raises(ValueError):
        batches([create("a")], max_ops=1)
