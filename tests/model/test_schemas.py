"""The schema registry: versions, stamping and upcasting (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from aether.model.schemas import (
    SCHEMAS,
    SchemaTooNewError,
    catalogue,
    current,
    stamp,
    upcast,
    version_of,
)


def test_every_node_server_message_record_and_event_is_listed() -> None:
    names = {schema.name for schema in SCHEMAS}
    assert {"register", "heartbeat", "report", "routes", "telemetry", "logs"} <= names
    assert {"instance", "blueprint", "node", "endpoint", "event"} <= names
    assert len(names) == len(SCHEMAS)
    listed = catalogue()
    assert all(
        entry["version"] >= 1 and entry["json_schema"]["type"] == "object" for entry in listed
    )


def test_a_payload_without_a_version_is_version_1() -> None:
    assert version_of({"id": "n1"}) == 1  # what 0.1.0 wrote
    assert version_of({"schema": 3}) == 3
    assert version_of({"schema": "x"}) == 1
    assert stamp("node", {"id": "n1", "schema": 1}) == {"id": "n1"}
    assert stamp("node", {"id": "n1"}, 2) == {"id": "n1", "schema": 2}


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


def test_current_payloads_pass_through() -> None:
    assert current("node") == 1
    assert upcast("node", {"id": "n1"}) == {"id": "n1"}


def test_a_newer_payload_is_refused_with_the_policy() -> None:
    with pytest.raises(SchemaTooNewError, match="upgrade the servers first"):
        upcast("node", {"id": "n1", "schema": 2})
    with pytest.raises(LookupError, match="no upcaster"):
        upcast("node", {"id": "n1"}, target=2)
