"""The handshake's answer: which features a node may use, from what it reported.

Pure: ``node_config(capabilities, disabled)`` turns each feature on only when
the node both can (its probes) and speaks it (its feature list), and the
server's policy does not switch it off (``AETHER_DISABLED_FEATURES``). Every
feature left off carries the reason, shown by ``aether nodes --format json``.
"""

from __future__ import annotations

from collections.abc import Collection

from aether.model.api import NodeConfig
from aether.model.cluster import NodeCapabilities

__all__ = ["KNOWN_FEATURES", "node_config"]

KNOWN_FEATURES = (
    "telemetry",
    "request_ids",
    "cooperative_checkpoint",
    "criu",
    "cgroup_limits",
    "bwrap",
    "microvm",
)


def _can(caps: NodeCapabilities, feature: str) -> str | None:
    """None when the node can use ``feature``, else why not."""
    speaks = set(caps.features)
    if feature in ("telemetry", "request_ids", "cooperative_checkpoint"):
        return None if feature in speaks else "the node does not speak it (older node)"
    if feature == "criu":
        if "criu_checkpoint" not in speaks:
            return "the node does not speak criu_checkpoint"
        return None if caps.criu else f"criu check failed: {caps.criu_detail or 'unknown'}"
    if feature == "cgroup_limits":
        return None if caps.cgroup == "v2" else f"no writable cgroup v2 (found: {caps.cgroup})"
    if feature == "bwrap":
        return None if caps.bwrap else "bubblewrap is not installed"
    if feature == "microvm":
        if "microvm" not in caps.sandbox_drivers:
            return "the microvm sandbox driver is not available"
        return None if caps.kvm else "no usable KVM (microVMs would run emulated)"
    return "unknown feature"


def node_config(
    caps: NodeCapabilities, disabled: Collection[str] = (), *, telemetry_interval: float = 1.0
) -> NodeConfig:
    features: dict[str, bool] = {}
    reasons: dict[str, str] = {}
    for feature in KNOWN_FEATURES:
        why = "disabled by server policy" if feature in disabled else _can(caps, feature)
        features[feature] = why is None
        if why is not None:
            reasons[feature] = why
    return NodeConfig(features=features, reasons=reasons, telemetry_interval=telemetry_interval)
