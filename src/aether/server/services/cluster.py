"""Reading and writing the cluster state (the state store's keys) as typed values."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

from pydantic import BaseModel

from aether.core.lifecycle import State
from aether.core.scheduler import DesiredApp, InstanceView, NodeView
from aether.errors import ConflictError, NotFoundError
from aether.model.cluster import Blueprint, Endpoint, InstanceRecord, NodeRecord
from aether.model.names import split_cluster_name
from aether.store.base import Compare, Delete, Kv, Op, Put, StateStore

__all__ = [
    "ClusterSnapshot",
    "dump",
    "fence_holds",
    "read_snapshot",
    "remove_app",
    "update_blueprint",
]


def dump(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


# what an InstanceView takes from the record as it is (the rest is the key's, the kv's
# and the spec's resources)
_RECORDED = tuple(
    f.name
    for f in fields(InstanceView)
    if f.name in InstanceRecord.model_fields and f.name not in ("key", "cpu", "memory_mb")
)


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
        latest_snapshots: Mapping[str, str] | None = None,
        given_up: Mapping[str, str] | None = None,
    ) -> list[DesiredApp]:
        """What the planner should converge on; ``failures`` counts failed instances per
        deployment (which can fail a running rollout), ``holds`` delays new placements,
        ``latest_snapshots`` (app → digest) is what new stateful instances restore,
        ``given_up`` (deployment → cause) the deployments that failed for certain."""
        failures = failures or {}
        given_up = given_up or {}
        holds = holds or {}
        latest_snapshots = latest_snapshots or {}
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
                rollout_given_up=given_up.get(bp.deployment_id),
                hold_until=holds.get(bp.deployment_id, 0.0),
                stateful=bp.spec.stateful,
                latest_snapshot=latest_snapshots.get(bp.app) if bp.spec.stateful else None,
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
                mod_revision=kv.mod_revision,
                cpu=inst.spec.resources.cpu,
                memory_mb=inst.spec.resources.memory_mb,
                **{name: getattr(inst, name) for name in _RECORDED},
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


async def fence_holds(store: StateStore, fence: Compare) -> bool:
    """Whether a leadership fence (``create_revision`` of the leader key) still holds."""
    kv = await store.get(fence.key)
    return kv is not None and kv.create_revision == fence.value


async def update_blueprint(
    store: StateStore,
    app: str,
    change: Callable[[Blueprint], Blueprint],
    *,
    tenant: str | None = None,
    fence: Compare | None = None,
) -> tuple[Blueprint, Blueprint]:
    """Apply ``change`` to ``blueprints/{app}`` (a cluster name) with compare-and-swap;
    (before, after).

    ``tenant`` limits it to that tenant's blueprint; ``fence`` (a leader's) makes
    it fail once that leadership has ended. ``change`` may raise to give up.
    """
    for _ in range(10):
        kv = await store.get(f"blueprints/{app}")
        bp = Blueprint.model_validate_json(kv.value) if kv else None
        if kv is None or bp is None or (tenant is not None and bp.tenant != tenant):
            raise NotFoundError(f"app {split_cluster_name(app)[0]!r} has no live deployment")
        updated = change(bp)
        compares = [Compare(kv.key, "mod_revision", "==", kv.mod_revision)]
        if fence is not None:
            compares.append(fence)
        result = await store.txn(compares, [Put(kv.key, dump(updated))])
        if result.succeeded:
            return bp, updated
        if fence is not None and not await fence_holds(store, fence):
            raise ConflictError("no longer the leader: the blueprint was left as it was")
    raise ConflictError("the blueprint kept changing; try again")


async def remove_app(
    store: StateStore, app: str, *, tenant: str, force: bool = False
) -> Blueprint | None:
    """Delete the tenant's blueprint of ``app`` (a cluster name) and its endpoints; the
    blueprint removed.

    The leader then retires the app's instances (nothing desires them), and routers
    answer 404 for it at once. A running rollout (``previous`` set) is refused with a
    conflict unless ``force``. Another tenant's blueprint is never touched.
    """
    for _ in range(10):
        kv = await store.get(f"blueprints/{app}")
        bp = Blueprint.model_validate_json(kv.value) if kv else None
        if bp is not None and bp.tenant != tenant:
            return None
        if bp is not None and bp.previous is not None and not force:
            plain = split_cluster_name(app)[0]
            raise ConflictError(
                f"app {plain!r} has a rollout running (v{bp.previous.version} → v{bp.version}); "
                "wait for it to finish, or delete anyway with --force (?force=true)"
            )
        compares = [
            Compare(kv.key, "mod_revision", "==", kv.mod_revision)
            if kv is not None
            else Compare(f"blueprints/{app}", "create_revision", "==", 0)
        ]
        ops: list[Op] = [Delete(f"endpoints/{app}/", prefix=True)]
        if kv is not None:
            ops.insert(0, Delete(kv.key))
        if (await store.txn(compares, ops)).succeeded:
            return bp
    raise ConflictError("the blueprint kept changing; try again")
