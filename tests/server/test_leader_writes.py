"""The leader's writes of one pass, batched (``apply_actions``), on SQLite and a 3-member etcd.

Each test seeds nodes and blueprints, plans as the leader does and writes the
plan through ``apply_actions``: placements go in fenced transactions of many
keys, a conflicting placement leaves the others, a deposed leader writes nothing.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aether.core.lifecycle import Command
from aether.core.scheduler import Action, Place, plan
from aether.model.app import AppSpec
from aether.model.cluster import Blueprint, NodeCapabilities, NodeRecord, instance_key
from aether.server.leader.reconcile import IN_FLIGHT, apply_actions
from aether.server.services.cluster import ClusterSnapshot, dump, read_snapshot
from aether.store import (
    EtcdStateStore,
    LeaderElection,
    Leadership,
    Put,
    SqliteStateStore,
    StateStore,
)
from aether.store.etcd_local import EtcdCluster, etcd_binary

NODES = 10
APPS = 3
PER_APP = 100  # 300 placements: more than one etcd transaction holds

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    try:
        etcd_binary()
    except RuntimeError as e:
        pytest.fail(str(e))
    with EtcdCluster(size=3) as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "etcd"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    opened: StateStore
    if request.param == "sqlite":
        opened = await SqliteStateStore.open(tmp_path / "state.db")
    else:
        cluster: EtcdCluster = request.getfixturevalue("etcd")
        opened = await EtcdStateStore.open(cluster.endpoints, prefix=f"t{next(_prefixes)}/")
    try:
        yield opened
    finally:
        await opened.close()


async def seed(store: StateStore) -> None:
    puts = []
    for i in range(NODES):
        caps = NodeCapabilities(cpus=64, memory_mb=1 << 20, drivers=["process"])
        node = NodeRecord(id=f"node-{i}", capabilities=caps, router_url="http://x")
        puts.append(Put(f"nodes/node-{i}", dump(node)))
    for i in range(APPS):
        spec = AppSpec(name=f"app-{i}", start="true")
        bp = Blueprint(
            app=spec.name,
            tenant="t",
            deployment_id=f"d{i}",
            version=1,
            digest="sha256:" + "0" * 64,
            spec=spec,
            instances=PER_APP,
        )
        puts.append(Put(f"blueprints/{spec.name}", dump(bp)))
    await store.txn([], puts)


async def planned(store: StateStore) -> tuple[ClusterSnapshot, list[Action]]:
    await seed(store)
    snap = await read_snapshot(store)
    actions = plan(snap.desired(), snap.node_views(), snap.instance_views())
    assert sum(isinstance(a, Place) for a in actions) == APPS * PER_APP
    return snap, actions


async def lead(store: StateStore, candidate: str) -> tuple[LeaderElection, Leadership]:
    election = LeaderElection(store, key="leader", candidate=candidate, ttl=30)
    return election, await election.campaign()


def key_of(action: Action) -> str:
    assert isinstance(action, Place)
    return instance_key(action.node, action.app, action.version, action.n)


async def test_a_pass_is_written_in_fenced_batches(store: StateStore) -> None:
    snap, actions = await planned(store)
    election, term = await lead(store, "a")
    before = await store.revision()

    outcome = await apply_actions(store, snap, actions, term.fence())

    assert not outcome.deposed
    assert outcome.applied == actions
    writes = sum(isinstance(a, Place) for a in actions)
    assert outcome.transactions == math.ceil(writes / (store.max_txn_ops - 1))
    assert await store.revision() == before + outcome.transactions
    after = await read_snapshot(store)
    assert set(after.instances) == {key_of(a) for a in actions if isinstance(a, Place)}
    for record, kv in after.instances.values():
        assert record.command is Command.LOAD and record.deployment_id == f"d{record.app[-1]}"
        assert kv.version == 1
    await election.resign()


async def test_one_conflicting_placement_leaves_the_others(store: StateStore) -> None:
    snap, actions = await planned(store)
    election, term = await lead(store, "a")
    taken = next(a for a in actions[150:] if isinstance(a, Place))  # in the second etcd batch
    await store.put(key_of(taken), b"placed by someone else")

    outcome = await apply_actions(store, snap, actions, term.fence())

    assert not outcome.deposed
    assert outcome.applied == [a for a in actions if a is not taken]
    kv = await store.get(key_of(taken))
    assert kv is not None and kv.value == b"placed by someone else"
    placed = (await store.range("instances/"))[0]
    assert len(placed) == APPS * PER_APP  # the others, and the conflicting one untouched
    await election.resign()


async def test_a_deposed_leaders_pass_writes_nothing(store: StateStore) -> None:
    snap, actions = await planned(store)
    old, term = await lead(store, "old")
    await old.resign()
    new, _ = await lead(store, "new")
    before = await store.revision()

    outcome = await apply_actions(store, snap, actions, term.fence())

    assert outcome.deposed
    assert not any(isinstance(a, Place) for a in outcome.applied)
    batches = math.ceil(APPS * PER_APP / (store.max_txn_ops - 1))
    assert outcome.transactions == min(IN_FLIGHT, batches)  # the first group only, no retries
    assert await store.revision() == before
    assert (await store.range("instances/"))[0] == []
    await new.resign()
