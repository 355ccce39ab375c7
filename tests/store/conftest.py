"""Backends for the state store contract suite.

To run the whole suite on another backend, add its name to ``BACKENDS``, a branch
in ``_open`` and a TTL in ``_SHORT_TTL``; no test changes. Tests assume only that
the store holds no keys when handed over (not that its revision is 0).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aether.store import SqliteStateStore, StateStore

BACKENDS = ["sqlite"]

# A lease TTL short enough to keep the suite fast but honoured by the backend
# (etcd, for one, rounds TTLs up to whole seconds).
_SHORT_TTL = {"sqlite": 0.4}


async def _open(backend: str, tmp_path: Path) -> StateStore:
    if backend == "sqlite":
        return await SqliteStateStore.open(tmp_path / "state.db", sweep_interval=0.05)
    raise AssertionError(f"unknown backend {backend!r}")


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    opened = await _open(request.param, tmp_path)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def ttl(request: pytest.FixtureRequest) -> float:
    """The short lease TTL for the backend the current test runs on."""
    node = request.node
    assert isinstance(node, pytest.Function)
    backend = node.callspec.params["store"]
    assert isinstance(backend, str)
    return _SHORT_TTL[backend]
