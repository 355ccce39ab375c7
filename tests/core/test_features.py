"""The handshake's policy: a feature is on only if the node can, speaks it, and policy allows."""

from __future__ import annotations

import pytest

from aether.core.features import KNOWN_FEATURES, node_config
from aether.model.cluster import NodeCapabilities

ALL_SPOKEN = ["telemetry", "request_ids", "cooperative_checkpoint", "criu_checkpoint"]


def caps(**overrides: object) -> NodeCapabilities:
    base: dict[str, object] = {
        "cpus": 2,
        "memory_mb": 2048,
        "drivers": ["process"],
        "sandbox_drivers": ["bwrap", "process"],
        "cgroup": "none",
        "criu": False,
        "criu_detail": "Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds",
        "bwrap": True,
        "kvm": False,
        "features": ALL_SPOKEN,
    }
    base.update(overrides)
    return NodeCapabilities.model_validate(base)


@pytest.mark.parametrize(
    ("overrides", "disabled", "feature", "on", "reason"),
    [
        ({}, (), "telemetry", True, None),
        ({"features": []}, (), "telemetry", False, "does not speak"),
        ({}, ("telemetry",), "telemetry", False, "disabled by server policy"),
        ({}, (), "criu", False, "criu check failed: Error (criu/vdso.c:381)"),
        ({"criu": True}, (), "criu", True, None),
        ({"criu": True}, ("criu",), "criu", False, "disabled by server policy"),
        ({"criu": True, "features": ["telemetry"]}, (), "criu", False, "criu_checkpoint"),
        ({"cgroup": "v2"}, (), "cgroup_limits", True, None),
        ({"cgroup": "v1"}, (), "cgroup_limits", False, "found: v1"),
        ({"bwrap": False}, (), "bwrap", False, "not installed"),
        ({"kvm": True}, (), "microvm", False, "driver is not available"),
        ({"kvm": True, "sandbox_drivers": ["microvm"]}, (), "microvm", True, None),
        ({"kvm": False, "sandbox_drivers": ["microvm"]}, (), "microvm", False, "no usable KVM"),
        ({}, (), "cooperative_checkpoint", True, None),
    ],
)
def test_feature_policy(
    overrides: dict[str, object],
    disabled: tuple[str, ...],
    feature: str,
    on: bool,
    reason: str | None,
) -> None:
    config = node_config(caps(**overrides), disabled, telemetry_interval=2.0)
    assert config.features[feature] is on
    if reason is None:
        assert feature not in config.reasons
    else:
        assert reason in config.reasons[feature]
    assert config.telemetry_interval == 2.0


def test_every_known_feature_gets_an_answer_and_every_off_one_a_reason() -> None:
    config = node_config(caps(features=[]))
    assert set(config.features) == set(KNOWN_FEATURES)
    assert {f for f, on in config.features.items() if not on} == set(config.reasons)
