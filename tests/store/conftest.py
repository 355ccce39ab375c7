"""Backends for the state store contract suite.

To run the whole suite on another backend, add its name to ``BACKENDS``, a branch
in ``_open`` and a TTL in ``_SHORT_TTL``; no test changes. Tests assume only that
the store holds no keys when handed over (not that its revision is 0).
"""

from __future__ import annotations

import itertools
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from aether.store import SqliteStateStore, StateStore
from aether.store.etcd import EtcdStateStore, etcd_tls_context
from tests.support.etcd import EtcdCluster, etcd_binary, etcdctl_binary

# etcd-tls: one member over mutual TLS with authentication on (see etcd_secure_cluster)
BACKENDS = ["sqlite", "etcd", "etcd-tls"]

# A lease TTL short enough to keep the suite fast but honoured by the backend
# (etcd, for one, rounds TTLs up to whole seconds).
_SHORT_TTL = {"sqlite": 0.4, "etcd": 1.0, "etcd-tls": 1.0}

SECURE_PASSWORD = "s3cret-root"
# etcd's simple auth tokens expire after this many seconds without use, so the
# suite also runs through token renewals
SECURE_TOKEN_TTL = 2

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


@pytest.fixture(scope="session")
def etcd_secure_cluster() -> Iterator[EtcdCluster]:
    """One etcd member for the session with mutual TLS, authentication (root) and tokens
    that expire after ``SECURE_TOKEN_TTL`` idle seconds."""
    try:
        etcd_binary()
        etcdctl_binary()
    except RuntimeError as e:
        pytest.fail(str(e))
    cluster = EtcdCluster(
        size=1,
        tls=True,
        client_cert_auth=True,
        auth_token="simple",
        auth_token_ttl=SECURE_TOKEN_TTL,
    ).start()
    try:
        cluster.enable_auth(SECURE_PASSWORD)
        yield cluster
    finally:
        cluster.stop()


def secure_store_options(cluster: EtcdCluster) -> dict[str, Any]:
    """``EtcdStateStore`` keyword arguments for ``etcd_secure_cluster``."""
    pki = cluster.pki
    assert pki is not None
    tls: ssl.SSLContext = etcd_tls_context(
        str(pki.ca_file), str(pki.client_cert_file), str(pki.client_key_file)
    )
    return {"tls": tls, "username": "root", "password": SECURE_PASSWORD}


async def _open(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> StateStore:
    if backend == "sqlite":
        return await SqliteStateStore.open(tmp_path / "state.db", sweep_interval=0.05)
    if backend == "etcd":
        cluster: EtcdCluster = request.getfixturevalue("etcd_cluster")
        return await EtcdStateStore.open(
            cluster.endpoints, prefix=f"test-{next(_etcd_namespaces)}/"
        )
    if backend == "etcd-tls":
        secure: EtcdCluster = request.getfixturevalue("etcd_secure_cluster")
        return await EtcdStateStore.open(
            secure.endpoints,
            prefix=f"test-{next(_etcd_namespaces)}/",
            **secure_store_options(secure),
        )
    raise AssertionError(f"unknown backend {backend!r}")


async def _clean_etcd(store: EtcdStateStore, **options: Any) -> None:
    """Revoke every lease and drop the test's keys so no later expiry bumps the revision."""
    fresh = EtcdStateStore(store.endpoints, prefix=store.prefix, **options)
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
            secure = request.param == "etcd-tls"
            cluster = request.getfixturevalue("etcd_secure_cluster") if secure else None
            await _clean_etcd(opened, **(secure_store_options(cluster) if cluster else {}))


@pytest.fixture
def ttl(request: pytest.FixtureRequest) -> float:
    """The short lease TTL for the backend the current test runs on."""
    node = request.node
    assert isinstance(node, pytest.Function)
    backend = node.callspec.params["store"]
    assert isinstance(backend, str)
    return _SHORT_TTL[backend]
