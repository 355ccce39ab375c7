"""The node's drivers, behind one protocol (:mod:`aether.node.drivers.base`).

``all_drivers()`` lists every driver, the default choice first; a node offers
``sandbox_drivers()`` for tasks (its capabilities say which, so tasks are placed
only where their driver exists) and runs app instances with the driver its
isolation policy names (``instance_drivers``).
"""

from __future__ import annotations

import logging

from aether.node.drivers.base import RunsInstances, RunsSandboxes

__all__ = ["all_drivers", "instance_drivers", "sandbox_drivers"]

log = logging.getLogger("aether.node.drivers")


def all_drivers() -> dict[str, RunsSandboxes]:
    """Every driver with the ``sandboxes`` ability, whether or not this machine runs it,
    the default choice first.

    ``bwrap`` is isolated and cheap (a sandbox is a directory); ``microvm`` is a
    stronger boundary but boots a VM per sandbox; ``process`` is not isolated.
    """
    from aether.node.drivers.bwrap import BwrapDriver
    from aether.node.drivers.microvm import MicroVMDriver
    from aether.node.drivers.process import ProcessDriver

    drivers: list[RunsSandboxes] = [BwrapDriver(), MicroVMDriver(), ProcessDriver()]
    return {d.name: d for d in drivers if "sandboxes" in d.abilities}


def sandbox_drivers() -> dict[str, RunsSandboxes]:
    """The drivers this machine can run sandboxes with, the default first (a node capability)."""
    return {name: d for name, d in all_drivers().items() if d.available()}


def instance_drivers(policy: str) -> tuple[dict[str, RunsInstances], str, str]:
    """The driver that runs apps' ``process`` instances under this node's policy.

    Returns the drivers, the isolation mode and its detail for the capabilities.
    Sandboxing that does not work here leaves no driver: nothing is placed on
    this node (it still runs tasks), and the log and ``aether nodes`` say why.
    """
    from aether.node.drivers.bwrap import BwrapDriver
    from aether.node.drivers.process import ProcessDriver

    if policy == "none":
        log.warning(
            "app instances run UNSANDBOXED (--isolation none): they run as the node's user "
            "and can read its data; only for trusted single-tenant setups"
        )
        return {"process": ProcessDriver()}, "none", "unsandboxed by node policy (--isolation none)"
    if policy != "bwrap":
        raise ValueError(f"unknown isolation policy {policy!r}: bwrap or none")
    bwrap = BwrapDriver()
    if not bwrap.available():
        detail = (
            f"{bwrap.reason}; this node runs no app instances (fix it, or run the node "
            "with --isolation none on a trusted single-tenant machine)"
        )
        log.error("app instances cannot be sandboxed: %s", detail)
        return {}, "unavailable", detail
    return {"process": bwrap}, "bwrap", bwrap.mode
