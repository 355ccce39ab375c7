"""When a stopping instance may stop: every live router confirmed it is done with it.

Stopping an instance is a graceful drain. Its endpoint is deleted from the
store at some revision R (the node's DEACTIVATING report). Every node's router
applies the assignment stream and says how far it got (``RouterState``: the
revision it applied and the requests it still has open to endpoints no longer
in its table). The instance may stop once, for every node whose lease is live,

- its router applied revision R or later: it sends the endpoint nothing new, and
- it has no request open to the endpoint's URL: what it sent has been answered.

A node whose lease expired is not waited for: it routes nothing the cluster
knows of (its own endpoints went with its lease). A live node that never said
anything is waited for, up to the app's ``shutdown_grace``.

Pure: the server reads the routers' states and the live nodes, this decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["RouterState", "waiting_for"]


@dataclass(frozen=True)
class RouterState:
    revision: int
    in_flight: Mapping[str, int] = field(default_factory=dict)


def waiting_for(
    live_nodes: Iterable[str],
    routers: Mapping[str, RouterState],
    revision: int,
    url: str,
) -> dict[str, str]:
    """Node → what it has not confirmed about the endpoint ``url`` withdrawn at ``revision``.

    Empty: every live router is done with it, the instance may stop.
    """
    pending: dict[str, str] = {}
    for node in sorted(set(live_nodes)):
        state = routers.get(node)
        if state is None:
            pending[node] = "its router has not reported yet"
        elif state.revision < revision:
            pending[node] = f"its router applied revision {state.revision}, not yet {revision}"
        elif (open_ := state.in_flight.get(url, 0)) > 0:
            pending[node] = f"{open_} request{'s' if open_ != 1 else ''} in flight"
    return pending
