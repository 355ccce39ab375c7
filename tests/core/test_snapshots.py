"""Snapshot retention tiers, as tables: hot keeps all, warm one per hour, cold one per day."""

from __future__ import annotations

import pytest

from aether.core.snapshots import (
    COLD_SECONDS,
    HOT_SECONDS,
    WARM_SECONDS,
    SnapshotRow,
    plan_retention,
    tier_of,
)

MIN, HOUR, DAY = 60.0, 3600.0, 86400.0
DAY0 = 20833 * DAY  # a midnight UTC
NOW = DAY0 + 23 * HOUR + 30 * MIN  # a fixed clock: 23:30 that day


@pytest.mark.parametrize(
    ("age", "tier"),
    [
        (0.0, "hot"),
        (HOT_SECONDS - 1, "hot"),
        (HOT_SECONDS, "warm"),
        (WARM_SECONDS - 1, "warm"),
        (WARM_SECONDS, "cold"),
        (COLD_SECONDS - 1, "cold"),
        (COLD_SECONDS, "expired"),
        (30 * DAY, "expired"),
    ],
)
def test_tier_of_age(age: float, tier: str) -> None:
    assert tier_of(age) == tier


def rows(*ages: float, app: str = "counter", tenant: str = "t1") -> list[SnapshotRow]:
    """One snapshot per age (seconds before NOW); ids name the age for readable failures."""
    return [
        SnapshotRow(f"{app}-{age:g}", tenant, app, f"sha256:{app}-{age:g}", NOW - age)
        for age in ages
    ]


CASES = [
    pytest.param(
        [0, 5 * MIN, 30 * MIN, 59 * MIN], 20, [0, 5 * MIN, 30 * MIN, 59 * MIN], id="hot-keeps-all"
    ),
    pytest.param(
        # all in the warm tier; two pairs share a clock hour
        [
            NOW - (DAY0 + 10 * HOUR + 50 * MIN),
            NOW - (DAY0 + 10 * HOUR + 10 * MIN),
            NOW - (DAY0 + 9 * HOUR + 30 * MIN),
            NOW - (DAY0 + 8 * HOUR + 59 * MIN),
            NOW - (DAY0 + 8 * HOUR + 1 * MIN),
        ],
        20,
        [
            NOW - (DAY0 + 10 * HOUR + 50 * MIN),
            NOW - (DAY0 + 9 * HOUR + 30 * MIN),
            NOW - (DAY0 + 8 * HOUR + 59 * MIN),
        ],
        id="warm-newest-per-hour",
    ),
    pytest.param(
        # cold: 2 and 3 days ago, two per day
        [
            NOW - (DAY0 - 2 * DAY + 20 * HOUR),
            NOW - (DAY0 - 2 * DAY + 3 * HOUR),
            NOW - (DAY0 - 3 * DAY + 12 * HOUR),
            NOW - (DAY0 - 3 * DAY + 1 * HOUR),
        ],
        20,
        [NOW - (DAY0 - 2 * DAY + 20 * HOUR), NOW - (DAY0 - 3 * DAY + 12 * HOUR)],
        id="cold-newest-per-day",
    ),
    pytest.param([10 * MIN, 8 * DAY, 9 * DAY], 20, [10 * MIN], id="older-than-a-week-deleted"),
    pytest.param([8 * DAY, 9 * DAY], 20, [8 * DAY], id="the-newest-is-always-kept"),
    pytest.param(
        [1 * MIN, 2 * MIN, 3 * MIN, 4 * MIN, 5 * MIN],
        3,
        [1 * MIN, 2 * MIN, 3 * MIN],
        id="count-cap",
    ),
    pytest.param(
        [1 * MIN, 2 * HOUR, 2 * DAY, 10 * DAY], 2, [1 * MIN, 2 * HOUR], id="cap-over-tiers"
    ),
]


@pytest.mark.parametrize(("ages", "keep_per_app", "kept"), CASES)
def test_retention_tiers(ages: list[float], keep_per_app: int, kept: list[float]) -> None:
    snaps = rows(*ages)
    plan = plan_retention(snaps, now=NOW, keep_per_app=keep_per_app)
    assert sorted(plan.keep) == sorted(f"counter-{a:g}" for a in kept)
    assert set(plan.delete) == {s.id for s in snaps} - set(plan.keep)
    assert set(plan.delete_blobs) == {s.digest for s in snaps if s.id in plan.delete}
    for row in snaps:
        if row.id in plan.keep:
            assert plan.keep[row.id] == tier_of(NOW - row.created_at)


def test_a_snapshot_an_instance_still_names_is_never_deleted() -> None:
    snaps = rows(1 * MIN, 2 * MIN, 3 * MIN, 20 * DAY)
    pinned = {"sha256:counter-180", "sha256:counter-1.728e+06"}  # 3 min and 20 days old
    plan = plan_retention(snaps, now=NOW, keep_per_app=1, protected=pinned)
    assert set(plan.keep) == {"counter-60", "counter-180", "counter-1.728e+06"}
    assert not pinned & set(plan.delete_blobs)


def test_apps_and_tenants_are_counted_apart() -> None:
    snaps = [
        *rows(1 * MIN, 2 * MIN, app="a"),
        *rows(1 * MIN, 2 * MIN, app="b"),
        *rows(1 * MIN, 2 * MIN, app="a", tenant="t2"),
    ]
    # ids repeat across tenants here: make them unique
    snaps = [
        SnapshotRow(f"{s.tenant_id}/{s.id}", s.tenant_id, s.app, s.digest, s.created_at)
        for s in snaps
    ]
    plan = plan_retention(snaps, now=NOW, keep_per_app=1)
    assert sorted(plan.keep) == ["t1/a-60", "t1/b-60", "t2/a-60"]
    # t1/a-120 and t2/a-120 share a blob: it goes only because neither is kept
    assert plan.delete_blobs == ("sha256:a-120", "sha256:b-120")


def test_a_blob_a_kept_row_names_stays() -> None:
    """Identical state packs to the same digest: two rows, one blob."""
    same = "sha256:same-state"
    snaps = [
        SnapshotRow("new", "t1", "counter", same, NOW - MIN),
        SnapshotRow("old", "t1", "counter", same, NOW - 10 * DAY),
    ]
    plan = plan_retention(snaps, now=NOW, keep_per_app=5)
    assert plan.delete == ("old",)
    assert plan.delete_blobs == ()


def test_nothing_to_keep_or_delete() -> None:
    plan = plan_retention([], now=NOW, keep_per_app=3)
    assert plan.keep == {} and plan.delete == () and plan.delete_blobs == ()


def test_orphaned_snapshots_are_kept_for_seven_days_whatever_the_count() -> None:
    """Orphans of one app sharing a cold bucket, beyond keep_per_app: all kept for 7 days."""
    checkpoints = rows(10 * MIN, 20 * MIN)
    orphans = [
        SnapshotRow(f"orphan-{age}", "t1", "counter", f"sha256:o{age}", NOW - age, "orphaned")
        for age in (2 * DAY, 2 * DAY + HOUR, 6 * DAY, 8 * DAY)
    ]
    plan = plan_retention(checkpoints + orphans, now=NOW, keep_per_app=1)
    assert {"orphan-172800.0", "orphan-176400.0", "orphan-518400.0"} <= set(plan.keep)
    assert "orphan-691200.0" in plan.delete  # older than 7 days: retention's as any other


def test_an_orphan_is_never_the_newest_state_kept_for_the_app() -> None:
    """The newest checkpoint that is not an orphan is kept even past keep_per_app."""
    checkpoint = rows(2 * DAY)
    orphan = SnapshotRow("orphan", "t1", "counter", "sha256:o", NOW - MIN, "orphaned")
    plan = plan_retention([*checkpoint, orphan], now=NOW, keep_per_app=0)
    assert set(plan.keep) == {checkpoint[0].id, "orphan"}
