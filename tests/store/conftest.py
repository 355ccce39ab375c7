"""Backends for the state store contract suite.

To run the whole suite on another backend, add its name to ``BACKENDS``, a branch
in ``_open`` and a TTL in ``_SHORT_TTL``; no test changes. Tests assume only that
the store holds no keys when handed over (not that its revision is 0).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aether.store import SqliteStateStore, StateStore
from aether.store.etcd import EtcdStateStore
from tests.store.etcd_cluster import EtcdCluster, etcd_binary

BACKENDS = ["sqlite", "etcd"]

# A lease TTL short enough to keep the suite fast but honoured by the backend
# (etcd, for one, rounds TTLs up to whole seconds).
_SHORT_TTL = {"sqlite": 0.4, "etcd": 1.0}

_etcd_namespaces = itertools.count()


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[EtcdCluster]:
    """One real three-member etcd cluster for the session (starts in well under 1 s).

    Contract tests share it, each under its own key prefix (see ``_open``): a
    fresh cluster per test would cost ~0.4 s each for no extra isolation, since
    the tests run one at a time and only ever compare revisions relative to
    their own start.
    """
    try:
        etcd_binary()
    except RuntimeError as e:
        pytest.fail(str(e))
    cluster = EtcdCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def _open(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> StateStore:
    if backend == "sqlite":
        return await SqliteStateStore.open(tmp_path / "state.db", sweep_interval=0.05)
    if backend == "etcd":
        cluster: EtcdCluster = request.getfixturevalue("etcd_cluster")
        return await EtcdStateStore.open(
            cluster.endpoints, prefix=f"test-{next(_etcd_namespaces)}/"
        )
    raise AssertionError(f"unknown backend {backend!r}")


async def _clean_etcd(store: EtcdStateStore) -> None:
    """Revoke every lease and drop the test's keys so no later expiry bumps the revision."""
    fresh = EtcdStateStore(store.endpoints, prefix=store.prefix)
    try:
        leases = await fresh._call("/v3/lease/leases", {}, idempotent=True)
        for lease in leases.get("leases") or []:
            await fresh.lease_revoke(int(lease["ID"]))
        await fresh.delete("", prefix=True)
    finally:
        await fresh.close()


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    opened = await _open(request.param, tmp_path, request)
    try:
        yield opened
    finally:
        await opened.close()
        if isinstance(opened, EtcdStateStore):
            await _clean_etcd(opened)


@pytest.fixture
def ttl(request: pytest.FixtureRequest) -> float:
    """The short lease TTL for the backend the current test runs on."""
    node = request.node
    assert isinstance(node, pytest.Function)
    backend = node.callspec.params["store"]
    assert isinstance(backend, str)
    return _SHORT_TTL[backend]
