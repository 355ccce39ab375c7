"""The pure mapping of raw cluster changes to typed events (``aether.core.events``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aether.core.events import (
    from_decision,
    from_deployment_event,
    from_risk,
    from_store,
    from_task_event,
    matches,
    parse_filter,
    resolved,
    resume_gap,
    sse,
    unknown_types,
    visible,
)
from aether.model.events import ClusterEvent, Cursor
from aether.model.tasks import TaskEvent, TaskState

NODE = {
    "id": "n1",
    "capabilities": {"cpus": 4, "memory_mb": 4096, "drivers": ["process", "bwrap"]},
    "router_url": "http://10.0.0.1:8080",
    "draining": False,
}
INSTANCE = {
    "app": "shop",
    "version": 3,
    "n": 1,
    "node": "n1",
    "tenant": "t-1",
    "command": "ACTIVATE",
    "state": "ACTIVE",
    "message": "",
}


def put(key: str, value: dict[str, Any] | str, version: int = 2) -> ClusterEvent | None:
    raw = value.encode() if isinstance(value, str) else json.dumps(value).encode()
    return from_store("PUT", key, raw, version=version, ts=10.0, tenants={})


def delete(key: str, tenants: dict[str, str] | None = None) -> ClusterEvent | None:
    return from_store("DELETE", key, b"", version=0, ts=10.0, tenants=tenants or {})


def test_a_created_node_key_is_a_join_with_its_router_and_drivers() -> None:
    event = put("nodes/n1", NODE, version=1)
    assert event is not None
    assert (event.type, event.target, event.node, event.scope) == (
        "node_joined",
        "n1",
        "n1",
        "cluster",
    )
    assert event.fields == {
        "router_url": "http://10.0.0.1:8080",
        "drivers": ["process", "bwrap"],
        "draining": False,
    }


def test_an_updated_node_key_is_a_drain_or_an_undrain() -> None:
    drained = put(
        "nodes/n1", {**NODE, "draining": True, "drain_reason": "spot", "drained_by": "operator"}
    )
    assert drained is not None and drained.type == "node_drained"
    assert drained.fields == {"reason": "spot", "by": "operator"}
    undrained = put("nodes/n1", NODE)
    assert undrained is not None and undrained.type == "node_undrained"


def test_a_deleted_node_key_is_a_lost_node() -> None:
    event = delete("nodes/n1")
    assert event is not None and (event.type, event.target, event.scope) == (
        "node_lost",
        "n1",
        "cluster",
    )
    assert "lease" in event.fields["reason"]


def test_the_leader_key_names_the_leader_or_none() -> None:
    elected = put("leader", "server-a")
    assert elected is not None and elected.type == "leader_changed"
    assert (elected.target, elected.fields) == ("server-a", {"leader": "server-a"})
    gone = delete("leader")
    assert gone is not None and gone.fields == {"leader": None}


def test_an_instance_write_is_its_state_and_command_in_its_tenant() -> None:
    event = put("instances/n1/shop@3/1", INSTANCE)
    assert event is not None
    assert (event.type, event.target, event.app, event.node, event.tenant, event.scope) == (
        "instance_state",
        "shop",
        "shop",
        "n1",
        "t-1",
        "tenant",
    )
    assert event.fields["state"] == "ACTIVE" and event.fields["command"] == "ACTIVATE"
    assert event.fields["instance"] == "instances/n1/shop@3/1"
    assert (event.fields["version"], event.fields["n"]) == (3, 1)


def test_a_long_instance_message_is_cut() -> None:
    event = put("instances/n1/shop@3/1", {**INSTANCE, "message": "x" * 5000})
    assert event is not None and len(event.fields["message"]) == 512


def test_a_deleted_instance_or_blueprint_takes_its_tenant_from_the_map() -> None:
    removed = delete("instances/n1/shop@3/1", {"shop": "t-1"})
    assert removed is not None and (removed.type, removed.tenant) == ("instance_removed", "t-1")
    gone = delete("blueprints/shop", {"shop": "t-1"})
    assert gone is not None and (gone.type, gone.fields) == ("blueprint_changed", {"deleted": True})
    # an app nobody can be shown: dropped rather than shown to the wrong tenant
    assert delete("instances/n1/shop@3/1") is None
    assert delete("blueprints/shop") is None


def test_a_blueprint_write_says_version_and_instances() -> None:
    event = put(
        "blueprints/shop",
        {"app": "shop", "tenant": "t-1", "version": 4, "deployment_id": "d4", "instances": 3},
    )
    assert event is not None and event.type == "blueprint_changed"
    assert event.tenant == "t-1"
    assert event.fields["version"] == 4 and event.fields["instances"] == 3
    assert event.fields["deleted"] is False


@pytest.mark.parametrize(
    "key",
    ["endpoints/shop/web/n1:1", "routes/n1", "instances/n1/bad", "instances/n1/shop@x/1", "other"],
)
def test_keys_people_do_not_follow_give_no_event(key: str) -> None:
    assert put(key, INSTANCE) is None


def test_a_value_that_is_not_a_record_gives_no_event() -> None:
    assert put("instances/n1/shop@3/1", "not json") is None
    assert put("instances/n1/shop@3/1", {**INSTANCE, "tenant": None}) is None
    assert put("nodes/n1", "[]") is None


def test_deployment_events_are_deployment_or_migration_steps() -> None:
    common: dict[str, Any] = {
        "row_id": 7,
        "message": "m",
        "app": "shop",
        "version": 2,
        "deployment_id": "d2",
        "tenant": "t-1",
        "ts": 5.0,
    }
    step = from_deployment_event(step="rollout_done", **common)
    assert (step.type, step.target, step.tenant) == ("deployment", "shop", "t-1")
    assert step.fields == {
        "step": "rollout_done",
        "message": "m",
        "version": 2,
        "deployment_id": "d2",
        "event_id": 7,
    }
    for name in ("migration_requested", "migrated", "migration_failed"):
        assert from_deployment_event(step=name, **common).type == "migration"


def decision(kind: str, tenant: str | None, target: str = "shop") -> ClusterEvent:
    return from_decision(
        decision_id=1,
        ts=1.0,
        layer=1,
        kind=kind,
        target=target,
        action={},
        reason="r",
        outcome="applied",
        detail="",
        tenant=tenant,
    )


def test_decisions_are_scoped_as_get_decisions_shows_them() -> None:
    scale = decision("scale", "t-1")
    assert (scale.scope, scale.tenant, scale.app) == ("tenant", "t-1", "shop")
    drain = decision("drain", None, target="n1")
    assert (drain.scope, drain.node) == ("cluster", "n1")
    advice = decision("advice", None, target="tactical")
    assert advice.scope == "admin"


def test_risk_is_an_event_only_when_the_status_changes() -> None:
    args: dict[str, Any] = {"node": "n1", "confidence": 0.9, "root_cause": "spot", "rule": "r"}
    assert from_risk(status="HIGH", previous="HIGH", ts=1.0, **args) is None
    first = from_risk(status="LOW", previous=None, ts=1.0, **args)
    assert first is not None and first.fields["previous"] is None
    changed = from_risk(status="CRITICAL", previous="LOW", ts=2.0, **args)
    assert changed is not None and changed.type == "risk_changed" and changed.scope == "cluster"
    assert (changed.fields["status"], changed.fields["previous"]) == ("CRITICAL", "LOW")


def test_who_sees_what() -> None:
    mine = put("instances/n1/shop@3/1", INSTANCE)
    node = put("nodes/n1", NODE, version=1)
    advice = decision("advice", None, target="tactical")
    assert mine is not None and node is not None
    assert visible(mine, "t-1", cluster_admin=False)
    assert not visible(mine, "t-2", cluster_admin=False)
    assert visible(mine, "t-2", cluster_admin=True)
    assert visible(node, "t-2", cluster_admin=False)
    assert not visible(advice, "t-1", cluster_admin=False)
    assert visible(advice, "default", cluster_admin=True)


def test_filters_by_type_and_by_target_app_or_node() -> None:
    event = put("instances/n1/shop@3/1", INSTANCE)
    assert event is not None
    assert matches(event, None, None)
    assert matches(event, {"instance_state"}, None)
    assert not matches(event, {"node_lost"}, None)
    assert matches(event, None, {"shop"}) and matches(event, None, {"n1"})
    assert not matches(event, None, {"cart"})
    assert not matches(event, {"instance_state"}, {"cart"})


def test_filter_values_repeat_or_are_comma_separated() -> None:
    assert parse_filter([]) is None
    assert parse_filter(["", " "]) is None
    assert parse_filter(["a,b", "c", " d "]) == frozenset({"a", "b", "c", "d"})
    assert unknown_types(["node_lost", "bogus", "ready"]) == ["bogus", "ready"]


def test_cursors_round_trip_and_refuse_anything_else() -> None:
    cursor = Cursor(120, 4, 0, 2, 7)
    assert str(cursor) == "120-4-0-2-7"
    assert Cursor.parse("120-4-0-2-7") == cursor
    for bad in (
        "",
        "12",
        "1-2-3",
        "a-b-c-d",
        "1-2-3-4-5-6",
        "-1-2-3-4",
        "1-2-3-4-",
        "1" * 19 + "-0-0-0",
    ):
        assert Cursor.parse(bad) is None


def test_a_four_part_id_resumes_tasks_from_now() -> None:
    old = Cursor.parse("120-4-0-2")
    assert old == Cursor(120, 4, 0, 2, None) and str(old) == "120-4-0-2"
    now = Cursor(130, 5, 1, 2, 900)
    assert resolved(old, now) == Cursor(120, 4, 0, 2, 900)
    assert resolved(Cursor(120, 4, 0, 2, 3), now) == Cursor(120, 4, 0, 2, 3)
    # however far the task log went on, a four-part id is not behind on it
    assert resume_gap(old, now, limit=10) is None


def test_a_resume_within_the_limit_is_allowed() -> None:
    assert resume_gap(Cursor(90, 5, 5, 5), Cursor(100, 5, 6, 9), limit=10) is None


def test_a_resume_too_far_behind_is_a_gap_that_says_so() -> None:
    message = resume_gap(Cursor(80, 5, 5, 5), Cursor(100, 5, 5, 5), limit=10)
    assert message is not None
    assert "20 store revisions behind" in message and "100-5-5-5" in message
    records = resume_gap(Cursor(100, 5, 5, 5), Cursor(100, 50, 5, 5), limit=10)
    assert records is not None and "deployment events behind" in records
    tasks = resume_gap(Cursor(100, 5, 5, 5, 3), Cursor(100, 5, 5, 5, 40), limit=10)
    assert tasks is not None and "37 task events behind" in tasks and "100-5-5-5-40" in tasks
    assert resume_gap(Cursor(100, 5, 5, 5, 30), Cursor(100, 5, 5, 5, 40), limit=10) is None


def test_a_cursor_ahead_of_the_cluster_is_a_gap() -> None:
    message = resume_gap(Cursor(500, 0, 0, 0), Cursor(100, 0, 0, 0), limit=10_000)
    assert message is not None and "ahead" in message and "reset" in message
    tasks = resume_gap(Cursor(100, 0, 0, 0, 9), Cursor(100, 0, 0, 0, 2), limit=10_000)
    assert tasks is not None and "task event 9 is ahead" in tasks


def change(state: TaskState, previous: TaskState | None, **fields: Any) -> TaskEvent:
    base: dict[str, Any] = {
        "position": 12,
        "task_id": "t-abc",
        "tenant_id": "t-1",
        "task_type": "job:run",
        "queue": "default",
        "priority": 5,
        "attempt": 1,
        "node": None,
        "error": None,
        "ts": 1700.5,
    }
    return TaskEvent(state=state, previous=previous, **{**base, **fields})


def test_a_task_change_is_a_task_state_event_of_its_tenant() -> None:
    claimed = from_task_event(change(TaskState.ACTIVE, TaskState.PENDING, node="n1"))
    assert (claimed.type, claimed.target, claimed.node, claimed.ts) == (
        "task_state",
        "t-abc",
        "n1",
        1700.5,
    )
    assert (claimed.scope, claimed.tenant, claimed.app) == ("tenant", "t-1", None)
    assert claimed.fields == {
        "task_type": "job:run",
        "state": "active",
        "previous": "pending",
        "queue": "default",
        "priority": 5,
        "attempt": 1,
        "error": None,
    }
    wire = claimed.wire("1-0-0-0-12")
    assert (wire["type"], wire["target"], wire["node"], wire["state"]) == (
        "task_state",
        "t-abc",
        "n1",
        "active",
    )
    assert "tenant" not in wire

    submitted = from_task_event(change(TaskState.PENDING, None, attempt=0))
    assert submitted.fields["previous"] is None and submitted.node is None
    assert "node" not in submitted.wire("1-0-0-0-13")
    failed = from_task_event(change(TaskState.RETRY, TaskState.ACTIVE, node="n1", error="boom"))
    assert failed.fields["error"] == "boom"

    # its tenant and the cluster admins see it; a filter finds it by task id or node
    assert visible(claimed, "t-1", cluster_admin=False)
    assert not visible(claimed, "t-2", cluster_admin=False)
    assert visible(claimed, "default", cluster_admin=True)
    assert matches(claimed, {"task_state"}, {"t-abc"}) and matches(claimed, None, {"n1"})
    assert not matches(submitted, None, {"n1"})


def test_server_sent_events_framing() -> None:
    assert sse("gap", "1-0-0-0", {"a": 1}) == b'id: 1-0-0-0\nevent: gap\ndata: {"a":1}\n\n'
    assert sse("ready", None, {}) == b"event: ready\ndata: {}\n\n"


def test_the_wire_form_hides_scope_and_tenant() -> None:
    event = put("instances/n1/shop@3/1", INSTANCE)
    assert event is not None
    wire = event.wire("9-0-0-0")
    assert wire["id"] == "9-0-0-0" and wire["type"] == "instance_state"
    assert wire["app"] == "shop" and wire["node"] == "n1" and wire["state"] == "ACTIVE"
    assert "tenant" not in wire and "scope" not in wire


def test_an_alert_change_is_its_tenant_s_and_a_cluster_alert_its_operators() -> None:
    app_alert = {
        "rule": "CrashLooping",
        "labels": {"app": "web.acme"},
        "state": "firing",
        "previous": "pending",
        "tenant": "acme",
        "tenant_id": "t-acme",
        "severity": "critical",
        "value": 4.0,
    }
    put = json.dumps(app_alert).encode()
    event = from_store("PUT", "alerts/fp1", put, version=2, ts=1.0, tenants={})
    assert event is not None and event.type == "alert" and event.target == "CrashLooping"
    assert (event.scope, event.tenant, event.app) == ("tenant", "t-acme", "web.acme")
    assert event.fields["state"] == "firing" and event.fields["previous"] == "pending"
    assert event.fields["fingerprint"] == "fp1" and event.fields["labels"] == {"app": "web.acme"}
    assert visible(event, "t-acme", cluster_admin=False)
    assert not visible(event, "t-other", cluster_admin=False, cluster_operator=False)

    cluster = {"rule": "NodeLost", "labels": {"node": "n1"}, "state": "firing", "tenant": None}
    put = json.dumps(cluster).encode()
    event = from_store("PUT", "alerts/fp2", put, version=1, ts=1.0, tenants={})
    assert event is not None and (event.scope, event.node) == ("operator", "n1")
    assert visible(event, "t-default", cluster_admin=False, cluster_operator=True)
    assert not visible(event, "t-acme", cluster_admin=False, cluster_operator=False)
    assert visible(event, "t-default", cluster_admin=True)

    assert from_store("DELETE", "alerts/fp2", b"", version=0, ts=1.0, tenants={}) is None
    assert from_store("PUT", "alerts/fp3", b"{}", version=1, ts=1.0, tenants={}) is None
    tenant_alert = from_store(
        "PUT",
        "alerts/fp4",
        json.dumps({**cluster, "tenant_id": "t-acme"}).encode(),
        version=1,
        ts=1.0,
        tenants={},
    )
    assert tenant_alert is not None
    assert visible(tenant_alert, "t-default", cluster_admin=False, cluster_operator=True)
