"""A node's one-second telemetry push, for tests that play a node."""

from __future__ import annotations

import time
from typing import Any

from aether.model.telemetry import NodeMetrics

__all__ = ["node_sample"]


def node_sample(node: str, seq: int = 0, **fields: Any) -> NodeMetrics:
    """A push from ``node`` now: a quiet small machine unless ``fields`` say otherwise."""
    figures: dict[str, Any] = {
        "node": node,
        "ts": time.time(),
        "seq": seq,
        "cpu": 0.1,
        "memory_used_mb": 100,
        "memory_total_mb": 1000,
        "disk_used_mb": 1,
        "disk_total_mb": 10,
        "net_rx_bytes": 0,
        "net_tx_bytes": 0,
    }
    return NodeMetrics(**(figures | fields))
