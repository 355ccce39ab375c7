"""Which artifacts garbage collection may delete: a pure decision over records.

Kept, always: the artifacts of each app's newest ``retain`` deployments (so they
can be rolled back to), and every digest something still uses (a blueprint,
its rollout's previous deployment, a placed instance). Anything else is
deleted once it is older than a grace period, so an artifact uploaded just
before its deployment is created is never collected in between.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["ArtifactRow", "DeploymentRow", "GcPlan", "plan_gc"]


@dataclass(frozen=True, slots=True)
class ArtifactRow:
    tenant_id: str
    digest: str
    created_at: float  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class DeploymentRow:
    tenant_id: str
    app: str
    version: int
    digest: str


@dataclass(frozen=True, slots=True)
class GcPlan:
    delete_rows: tuple[tuple[str, str], ...]  # (tenant_id, digest) claims to drop
    delete_blobs: tuple[str, ...]  # digests no tenant claims any more
    kept: int


def plan_gc(
    artifacts: Iterable[ArtifactRow],
    deployments: Iterable[DeploymentRow],
    *,
    retain: Mapping[tuple[str, str], int],
    default_retain: int,
    in_use: Iterable[str],
    now: float,
    grace: float,
) -> GcPlan:
    """The artifact claims and blobs to delete (see the module docstring)."""
    used = set(in_use)
    by_app: dict[tuple[str, str], list[DeploymentRow]] = defaultdict(list)
    for dep in deployments:
        by_app[(dep.tenant_id, dep.app)].append(dep)
    keep: set[tuple[str, str]] = set()
    for key, deps in by_app.items():
        newest = sorted(deps, key=lambda d: d.version, reverse=True)
        for dep in newest[: max(1, retain.get(key, default_retain))]:
            keep.add((dep.tenant_id, dep.digest))

    rows = list(artifacts)
    drop: list[tuple[str, str]] = []
    survivors: set[str] = set()
    for row in rows:
        claim = (row.tenant_id, row.digest)
        if claim in keep or row.digest in used or now - row.created_at < grace:
            survivors.add(row.digest)
        else:
            drop.append(claim)
    blobs = sorted({digest for _, digest in drop} - survivors)
    return GcPlan(tuple(sorted(drop)), tuple(blobs), kept=len(rows) - len(drop))
