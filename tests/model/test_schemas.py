"""The schema registry and ``Versioned``: every payload carries its version, one without
it is version 1, older ones are upcast on the way in, newer ones refused (pure)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, Field, ValidationError

from aether.model.alerts import AlertRecord
from aether.model.api import (
    AssignmentLine,
    HeartbeatIn,
    HeartbeatOut,
    InstanceSecretsOut,
    JoinIn,
    JoinOut,
    LogsIn,
    LogsOut,
    RegisterIn,
    RegisterOut,
    ReportIn,
    ReportOut,
    RoutesIn,
    RoutesOut,
    ServerOut,
    UnloadedOut,
    WithdrawalOut,
)
from aether.model.app import AppSpec
from aether.model.blueprints import BlueprintRecord
from aether.model.cluster import (
    Blueprint,
    Endpoint,
    InstanceRecord,
    NodeCapabilities,
    NodeRecord,
)
from aether.model.diag import DiagRequestRecord, NodePartIn
from aether.model.events import ClusterEvent
from aether.model.lifecycle import Command
from aether.model.migrations import SnapshotOut
from aether.model.placements import AgentPlacement
from aether.model.schemas import (
    SCHEMAS,
    UPCASTERS,
    SchemaTooNewError,
    catalogue,
    current,
    stamp,
    upcast,
    version_of,
)
from aether.model.tasks import (
    ClaimIn,
    ExchangeIn,
    ExchangeOut,
    SandboxRecord,
    SandboxStatus,
    TaskCompleteIn,
    TaskFailIn,
    TaskHeartbeatOut,
    TaskHolderIn,
    TaskOut,
    TaskState,
)
from aether.model.telemetry import NodeMetrics, PushAnswer
from aether.model.trust import CertificateIn, CertificateOut, TrustRecord
from aether.model.versioned import Upcasting, Versioned

_CAPS = NodeCapabilities(cpus=2, memory_mb=1024, drivers=["process"])
_SPEC = AppSpec.model_validate({"name": "web", "start": "python app.py"})
_AT = datetime(2026, 1, 1, tzinfo=UTC)

#: one payload of each schema, as its writer builds it
SAMPLES: dict[str, BaseModel] = {
    "register": RegisterIn(id="n1", capabilities=_CAPS, router_url="http://r", version="0.2.0"),
    "register_reply": RegisterOut(
        node_id="n1",
        lease_id=7,
        lease_ttl=10,
        heartbeat_interval=3,
        drain_grace=0.5,
        log_interval=0.5,
        revision=4,
    ),
    "heartbeat": HeartbeatIn(lease_id=7),
    "heartbeat_reply": HeartbeatOut(ttl=10, authorities=["ab12"]),
    "report": ReportIn(state="ACTIVE", url="http://i"),
    "report_reply": ReportOut(key="instances/n1/web@1/0", state="ACTIVE", revision=9),
    "routes": RoutesIn(revision=9, in_flight={"http://i": 1}),
    "withdrawal_reply": WithdrawalOut(confirmed=True, revision=9),
    "telemetry": NodeMetrics(
        node="n1",
        ts=1.0,
        cpu=0.5,
        memory_used_mb=1,
        memory_total_mb=2,
        disk_used_mb=1,
        disk_total_mb=2,
        net_rx_bytes=0,
        net_tx_bytes=0,
    ),
    "telemetry_reply": PushAnswer(),
    "logs": LogsIn.model_validate(
        {"entries": [{"tenant": "t", "app": "web", "label": "out", "text": "hi"}]}
    ),
    "instance": InstanceRecord(
        app="web",
        version=1,
        n=0,
        node="n1",
        tenant="default",
        deployment_id="d1",
        digest="sha256:" + "0" * 64,
        spec=_SPEC,
        command=Command.ACTIVATE,
    ),
    "blueprint": Blueprint(
        app="web",
        tenant="default",
        deployment_id="d1",
        version=1,
        digest="sha256:" + "0" * 64,
        spec=_SPEC,
        instances=1,
    ),
    "node": NodeRecord(id="n1", capabilities=_CAPS, router_url="http://r"),
    "endpoint": Endpoint(
        app="web", entry="add", node="n1", n=0, version=1, url="http://i", schema={"batch": 0}
    ),
    "join": JoinIn(id="n1", csr="PEM"),
    "join_reply": JoinOut(
        node_id="n1",
        credential="c",
        certificate="PEM",
        authorities=["PEM"],
        node_urls=["https://s"],
        not_after=2.0,
        renew_at=1.0,
    ),
    "certificate": CertificateIn(csr="PEM"),
    "certificate_reply": CertificateOut(
        certificate="PEM", authorities=["PEM"], not_after=2.0, renew_at=1.0
    ),
    "assignment": AssignmentLine(type="PUT", key="instances/n1/web@1/0", revision=3, value={}),
    "agent_placement": AgentPlacement(agent_id="a1", tenant="t", name="bot", version=1, replicas=1),
    "blueprint_file": BlueprintRecord(
        name="shop", tenant="t1", apps={}, applied_at=1.0, applied_by="user:ann"
    ),
    "server": ServerOut(url="http://s", version="0.2.0", started_at=1.0),
    "trust": TrustRecord(cluster="c", authorities=[]),
    "sandbox": SandboxRecord(id="s1", status=SandboxStatus.RUNNING),
    "task_claim": ClaimIn(node="n1"),
    "task_exchange": ExchangeIn(node="n1", want=2),
    "task_exchange_reply": ExchangeOut(reports=[], tasks=[]),
    "snapshot": SnapshotOut(
        id="s1",
        app="web",
        instance="web@1/0",
        node="n1",
        digest="sha256:" + "0" * 64,
        size_bytes=10,
        kind="periodic",
        tier="hot",
        created_at=_AT,
    ),
    "task": TaskOut(
        id="t1",
        type="vm:create",
        payload={},
        queue="default",
        priority=0,
        max_retry=3,
        timeout=300,
        run_at=_AT,
        idempotency_key=None,
        state=TaskState.ACTIVE,
        attempts=1,
        result=None,
        error=None,
        node="n1",
        claimed_by="n1",
        created_at=_AT,
        updated_at=_AT,
        started_at=_AT,
        finished_at=None,
    ),
    "task_heartbeat": TaskHolderIn(node="n1", attempt=1),
    "task_heartbeat_reply": TaskHeartbeatOut(ok=True),
    "task_complete": TaskCompleteIn(node="n1", attempt=1, result={"ok": 1}),
    "task_fail": TaskFailIn(node="n1", attempt=1, error="boom", retryable=False),
    "routes_reply": RoutesOut(revision=9),
    "logs_reply": LogsOut(accepted=2),
    "unloaded_reply": UnloadedOut(key="instances/n1/web@1/0", deleted=True),
    "instance_secrets": InstanceSecretsOut(env={"A": "x"}, files={"/run/f": "y"}),
    "diag_part": NodePartIn(files={"log.txt": "hi"}),
    "diag_request": DiagRequestRecord(since=600, nodes=["n1"], to="https://s:7001"),
    "alert": AlertRecord(
        fingerprint="f1",
        rule="CrashLoop",
        labels={"app": "web"},
        tenant="t1",
        state="firing",
        value=3.0,
        started_at=1.0,
        fired_at=2.0,
        previous="pending",
        tenant_id="t-1",
    ),
}


def _versioned() -> Iterator[tuple[str, type[Versioned]]]:
    for schema in SCHEMAS:
        if issubclass(schema.model, Versioned):
            yield schema.name, schema.model


def test_every_node_server_message_record_and_event_is_listed() -> None:
    names = {schema.name for schema in SCHEMAS}
    assert {"register", "heartbeat", "report", "routes", "telemetry", "logs"} <= names
    assert {"heartbeat_reply", "report_reply", "withdrawal_reply", "assignment"} <= names
    assert {"join", "join_reply", "certificate", "certificate_reply"} <= names
    assert {"instance", "blueprint", "node", "endpoint", "event"} <= names
    assert {"agent_placement", "blueprint_file", "server", "trust", "sandbox"} <= names
    assert {"task_claim", "task_exchange", "task_exchange_reply"} <= names
    assert {"task", "task_heartbeat", "task_heartbeat_reply", "task_complete", "task_fail"} <= names
    assert {"routes_reply", "logs_reply", "unloaded_reply", "instance_secrets"} <= names
    assert {"diag_part", "diag_request", "alert"} <= names
    assert len(names) == len(SCHEMAS)
    assert names == set(SAMPLES) | {"event"}  # every schema has its sample here
    for entry in catalogue():
        assert entry["version"] >= 1
        assert entry["json_schema"]["type"] == "object"
        if entry["name"] != "event":
            assert entry["version_field"] in entry["json_schema"]["properties"]


def test_the_registry_and_the_models_agree_on_every_version() -> None:
    for name, model in _versioned():
        assert name == model.SCHEMA_NAME
        assert current(name) == model.SCHEMA_VERSION
        assert model.model_fields["schema_version"].default == current(name)
    assert current("event") == ClusterEvent.SCHEMA_VERSION


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_what_a_writer_builds_carries_its_version(name: str) -> None:
    field = "schema_version" if name == "endpoint" else "schema"
    payload = SAMPLES[name].model_dump(mode="json")
    assert payload[field] == current(name) == 1
    assert f'"{field}":1' in SAMPLES[name].model_dump_json()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_a_payload_without_its_version_reads_as_version_1(name: str) -> None:
    model = type(SAMPLES[name])
    field = "schema_version" if name == "endpoint" else "schema"
    payload = SAMPLES[name].model_dump(mode="json")
    del payload[field]  # as 0.1.0 wrote it
    read = model.model_validate(payload)
    assert isinstance(read, Versioned) and read.schema_version == 1
    assert read == SAMPLES[name]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_a_payload_from_a_newer_version_is_refused(name: str) -> None:
    model = type(SAMPLES[name])
    field = "schema_version" if name == "endpoint" else "schema"
    payload = {**SAMPLES[name].model_dump(mode="json"), field: current(name) + 1}
    with pytest.raises(ValidationError, match="is newer than this version's 1: upgrade the"):
        model.model_validate_json(json.dumps(payload))
    with pytest.raises(ValidationError, match="upgrade the servers first"):
        model.model_validate(payload)


def test_the_endpoint_keeps_its_slice_schema_beside_its_version() -> None:
    """0.1.0's nodes read an endpoint's ``schema`` as a slice entry's description."""
    payload = SAMPLES["endpoint"].model_dump(mode="json")
    assert payload["schema"] == {"batch": 0} and payload["schema_version"] == 1


def test_the_event_stream_payload_carries_its_version() -> None:
    event = ClusterEvent(type="node_joined", target="n1", ts=1.0, fields={"schema": "x"})
    assert event.wire("1-0-0-0-0")["schema"] == 1


def test_a_payload_without_a_version_is_version_1() -> None:
    assert version_of({"id": "n1"}) == 1  # what 0.1.0 wrote
    assert version_of({"schema": 3}) == 3
    assert version_of({"schema": "x"}) == 1
    assert version_of({"schema_version": 2}, "schema_version") == 2
    assert stamp("node", {"id": "n1"}) == {"id": "n1", "schema": 1}
    assert stamp("node", {"id": "n1"}, 2) == {"id": "n1", "schema": 2}
    assert stamp("endpoint", {"app": "a"}) == {"app": "a", "schema_version": 1}


def _rename(payload: dict[str, Any]) -> dict[str, Any]:
    out = dict(payload)
    out["router"] = out.pop("router_url")
    return out


def _add_zone(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "zone": payload.get("zone", "default")}


CHAIN = {("node", 1): _rename, ("node", 2): _add_zone}


def test_upcasters_run_in_turn_from_the_payloads_version() -> None:
    old = {"id": "n1", "router_url": "http://r"}  # 0.1.0: no version
    assert upcast("node", old, target=3, upcasters=CHAIN) == {
        "id": "n1",
        "router": "http://r",
        "zone": "default",
        "schema": 3,
    }
    middle = {"id": "n1", "router": "http://r", "schema": 2, "zone": "eu"}
    assert upcast("node", middle, target=3, upcasters=CHAIN)["zone"] == "eu"
    assert old == {"id": "n1", "router_url": "http://r"}  # not changed in place


def test_current_payloads_pass_through_stamped() -> None:
    assert current("node") == 1
    assert upcast("node", {"id": "n1"}) == {"id": "n1", "schema": 1}


def test_a_newer_payload_is_refused_with_the_policy() -> None:
    with pytest.raises(SchemaTooNewError, match="upgrade the servers first"):
        upcast("node", {"id": "n1", "schema": 2})
    with pytest.raises(LookupError, match="no upcaster"):
        upcast("node", {"id": "n1"}, target=2)


class _Zoned(Upcasting):
    """A schema at version 2 (v1 had no ``zone``), to show what a bump does."""

    SCHEMA_NAME: ClassVar[str] = "test_zoned"
    SCHEMA_VERSION: ClassVar[int] = 2

    schema_version: int = Field(default=2, alias="schema", ge=1)
    id: str
    zone: str


def test_a_model_past_version_1_upcasts_older_payloads_as_it_reads_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(UPCASTERS, ("test_zoned", 1), lambda p: {**p, "zone": "default"})
    built = _Zoned(id="n1", zone="eu")  # built in Python: the current version
    assert built.model_dump() == {"schema": 2, "id": "n1", "zone": "eu"}
    assert _Zoned.model_validate_json(built.model_dump_json()) == built
    assert _Zoned.model_validate({"id": "n1"}).zone == "default"  # 0.1.0: no version
    assert _Zoned.model_validate({"id": "n1", "schema": 1}).schema_version == 2
    with pytest.raises(ValidationError, match="test_zoned schema 3 is newer"):
        _Zoned.model_validate({"id": "n1", "zone": "eu", "schema": 3})


def test_a_model_past_version_1_must_upcast() -> None:
    with pytest.raises(TypeError, match="must derive from Upcasting"):

        class _Bumped(Versioned):
            SCHEMA_NAME: ClassVar[str] = "test_bumped"
            SCHEMA_VERSION: ClassVar[int] = 2
