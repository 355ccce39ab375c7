"""Reading and writing the cluster state (the state store's keys) as typed values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from aether.core.lifecycle import State
from aether.core.scheduler import DesiredApp, InstanceView, NodeView
from aether.model.cluster import Blueprint, Endpoint, InstanceRecord, NodeRecord
from aether.store.base import Kv, StateStore

__all__ = ["ClusterSnapshot", "dump", "read_snapshot"]


def dump(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


@dataclass
class ClusterSnapshot:
    revision: int
    nodes: dict[str, tuple[NodeRecord, Kv]]
    blueprints: dict[str, tuple[Blueprint, Kv]]
    instances: dict[str, tuple[InstanceRecord, Kv]]
    endpoints: dict[str, Endpoint]

    def desired(
        self,
        failures: Mapping[str, int] | None = None,
        holds: Mapping[str, float] | None = None,
    ) -> list[DesiredApp]:
        """What the planner should converge on; ``failures`` counts failed instances per
        deployment (which can fail a running rollout), ``holds`` delays new placements."""
        failures = failures or {}
        holds = holds or {}
        return [
            DesiredApp(
                app=bp.app,
                version=bp.version,
                instances=bp.instances,
                driver=bp.spec.driver,
                constraints=bp.spec.constraints,
                cpu=bp.spec.resources.cpu,
                memory_mb=bp.spec.resources.memory_mb,
                strategy=bp.strategy,
                rollout=bp.spec.rollout if bp.previous is not None else None,
                rollout_started_at=bp.rollout_started_at,
                promoted=bp.promoted,
                rollout_failures=failures.get(bp.deployment_id, 0),
                hold_until=holds.get(bp.deployment_id, 0.0),
            )
            for bp, _ in self.blueprints.values()
        ]

    def node_views(self) -> list[NodeView]:
        return [
            NodeView(
                id=node.id,
                cpus=node.capabilities.cpus,
                memory_mb=node.capabilities.memory_mb,
                drivers=frozenset(node.capabilities.drivers),
                labels=node.capabilities.labels,
                draining=node.draining,
            )
            for node, _ in self.nodes.values()
        ]

    def instance_views(self) -> list[InstanceView]:
        return [
            InstanceView(
                key=key,
                node=inst.node,
                app=inst.app,
                version=inst.version,
                n=inst.n,
                command=inst.command,
                state=inst.state,
                mod_revision=kv.mod_revision,
                cpu=inst.spec.resources.cpu,
                memory_mb=inst.spec.resources.memory_mb,
                placed_at=inst.placed_at,
                active_since=inst.active_since,
            )
            for key, (inst, kv) in self.instances.items()
        ]

    def active_count(self, app: str, version: int) -> int:
        return sum(
            1
            for inst, _ in self.instances.values()
            if inst.app == app and inst.version == version and inst.state is State.ACTIVE
        )


async def read_snapshot(store: StateStore) -> ClusterSnapshot:
    """One consistent-enough view: each prefix is read at its own revision."""
    node_kvs, _ = await store.range("nodes/")
    bp_kvs, _ = await store.range("blueprints/")
    inst_kvs, _ = await store.range("instances/")
    ep_kvs, revision = await store.range("endpoints/")
    return ClusterSnapshot(
        revision=revision,
        nodes={kv.key[6:]: (NodeRecord.model_validate_json(kv.value), kv) for kv in node_kvs},
        blueprints={kv.key[11:]: (Blueprint.model_validate_json(kv.value), kv) for kv in bp_kvs},
        instances={kv.key: (InstanceRecord.model_validate_json(kv.value), kv) for kv in inst_kvs},
        endpoints={kv.key: Endpoint.model_validate_json(kv.value) for kv in ep_kvs},
    )
