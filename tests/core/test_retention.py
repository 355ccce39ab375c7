"""Retention decisions: what is kept, what is collected."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aether.core.retention import ArtifactRow, DeploymentRow, plan_gc

OLD = 0.0
NOW = 10_000.0


def _digest(i: int) -> str:
    return f"sha256:{i:064x}"


def test_keeps_the_newest_k_deployments_per_app() -> None:
    deps = [DeploymentRow("t", "shop", v, _digest(v)) for v in range(1, 6)]
    arts = [ArtifactRow("t", _digest(v), OLD) for v in range(1, 6)]
    gc = plan_gc(arts, deps, retain={}, default_retain=2, in_use=[], now=NOW, grace=60)
    assert gc.delete_rows == tuple(("t", _digest(v)) for v in (1, 2, 3))
    assert gc.delete_blobs == tuple(_digest(v) for v in (1, 2, 3))
    assert gc.kept == 2


def test_per_app_retention_overrides_the_default() -> None:
    deps = [DeploymentRow("t", "shop", v, _digest(v)) for v in range(1, 6)]
    arts = [ArtifactRow("t", _digest(v), OLD) for v in range(1, 6)]
    gc = plan_gc(
        arts, deps, retain={("t", "shop"): 4}, default_retain=1, in_use=[], now=NOW, grace=60
    )
    assert gc.delete_rows == (("t", _digest(1)),)


def test_running_or_young_artifacts_are_never_collected() -> None:
    deps = [DeploymentRow("t", "shop", v, _digest(v)) for v in range(1, 4)]
    arts = [ArtifactRow("t", _digest(v), OLD) for v in range(1, 4)]
    arts.append(ArtifactRow("t", _digest(99), NOW - 5))  # uploaded, not deployed yet
    gc = plan_gc(arts, deps, retain={}, default_retain=1, in_use=[_digest(1)], now=NOW, grace=60)
    assert gc.delete_rows == (("t", _digest(2)),)


def test_a_blob_shared_by_two_tenants_stays_while_one_keeps_it() -> None:
    shared = _digest(7)
    deps = [
        DeploymentRow("a", "x", 1, shared),
        DeploymentRow("a", "x", 2, _digest(8)),
        DeploymentRow("b", "y", 1, shared),
    ]
    arts = [
        ArtifactRow("a", shared, OLD),
        ArtifactRow("a", _digest(8), OLD),
        ArtifactRow("b", shared, OLD),
    ]
    gc = plan_gc(arts, deps, retain={}, default_retain=1, in_use=[], now=NOW, grace=60)
    assert gc.delete_rows == (("a", shared),)
    assert gc.delete_blobs == ()


@settings(max_examples=200, deadline=None)
@given(
    versions=st.lists(st.integers(1, 30), min_size=1, max_size=30, unique=True),
    retain=st.integers(1, 10),
    used=st.sets(st.integers(1, 30)),
)
def test_never_deletes_what_is_retained_or_used(
    versions: list[int], retain: int, used: set[int]
) -> None:
    deps = [DeploymentRow("t", "app", v, _digest(v)) for v in versions]
    arts = [ArtifactRow("t", _digest(v), OLD) for v in versions]
    gc = plan_gc(
        arts,
        deps,
        retain={},
        default_retain=retain,
        in_use=[_digest(u) for u in used],
        now=NOW,
        grace=1,
    )
    deleted = {d for _, d in gc.delete_rows}
    newest = sorted(versions, reverse=True)[:retain]
    assert deleted.isdisjoint({_digest(v) for v in newest})
    assert deleted.isdisjoint({_digest(u) for u in used})
    assert len(deleted) == len(versions) - len(set(newest) | (used & set(versions)))
