"""``GET /api/v1/settings``: the cluster's retention figures, read-only, for every role.

Synchronous on purpose: the console's session-scoped browser (Playwright's sync
API) keeps an event loop running in the test thread, which async tests after it
cannot share.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.api import assert_envelope, bearer
from tests.support.server import RunningServer


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
        yield client


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_every_role_reads_the_retention_figures(
    server: RunningServer, http: httpx.Client, role: str
) -> None:
    answer = http.get("/api/v1/settings", headers=bearer(server.token(role)))
    assert answer.status_code == 200, answer.text
    s = server.ctx.settings
    assert answer.json() == {
        "retain_deployments": s.retain_deployments,
        "log_retention_bytes": s.log_retention_bytes,
        "metrics_window_seconds": s.metrics_window_seconds,
        "metrics_retention_days": s.metrics_retention_days,
        "events_resume_limit": s.events_resume_limit,
        "decisions_retention_seconds": s.decisions_retention,
        "snapshot_keep": s.snapshot_keep,
        "gc_grace_seconds": s.gc_grace_seconds,
        "audit_retention_days": s.audit_retention_days,
    }


def test_another_tenant_sees_the_same_cluster_figures(
    server: RunningServer, http: httpx.Client
) -> None:
    mine = http.get("/api/v1/settings", headers=bearer(server.token("viewer")))
    theirs = http.get("/api/v1/settings", headers=bearer(server.new_tenant()))
    assert theirs.status_code == 200
    assert theirs.json() == mine.json()


def test_the_settings_need_a_token_and_cannot_be_changed(
    server: RunningServer, http: httpx.Client
) -> None:
    assert_envelope(http.get("/api/v1/settings"), 401, "unauthorized")
    changed = http.put(
        "/api/v1/settings", json={"retain_deployments": 1}, headers=bearer(server.admin_token)
    )
    assert changed.status_code == 405
