"""A node fences its own stateful instances while its lease may have expired.

The daemon's rule, on a real ``NodeDaemon`` and real runners (no server needed:
what it decides depends on when the server last acknowledged its lease, on the
monotonic clock, and on which lease a runner was fenced on).
"""

from __future__ import annotations

import time
from pathlib import Path

from aether.core.lifecycle import Command
from aether.model.api import RegisterOut
from aether.model.app import AppSpec
from aether.model.cluster import InstanceRecord
from aether.node.daemon import NodeDaemon, NodeOptions
from aether.node.runner import InstanceRunner
from aether.ports import free_port


def _registration(lease_id: int) -> RegisterOut:
    return RegisterOut(
        node_id="n1",
        lease_id=lease_id,
        lease_ttl=3.0,
        heartbeat_interval=1.0,
        drain_grace=0.5,
        log_interval=1.0,
        revision=0,
    )


def _runner(daemon: NodeDaemon, app: str, n: int, *, stateful: bool) -> InstanceRunner:
    spec = AppSpec(
        name=app, start="true", stateful=stateful, state_dir="data" if stateful else None
    )
    record = InstanceRecord(
        app=app,
        version=1,
        n=n,
        node="n1",
        tenant="t",
        deployment_id="d",
        digest="sha256:" + "0" * 64,
        spec=spec,
        command=Command.ACTIVATE,
        request_id=f"r{n}",
    )
    runner = InstanceRunner(
        record, daemon.client, daemon.drivers["process"], daemon.config, lambda: None
    )
    runner.url = f"http://127.0.0.1:{free_port()}"
    daemon.runners[record.key] = runner
    return runner


def _ack(daemon: NodeDaemon, seconds_ago: float) -> None:
    daemon._lease_acked(time.monotonic() - seconds_ago, time.time() - seconds_ago)


def test_own_stateful_instances_are_withheld_until_the_lease_is_confirmed(
    tmp_path: Path,
) -> None:
    daemon = NodeDaemon(
        NodeOptions(
            server=f"http://127.0.0.1:{free_port()}",
            join_token="x",
            data_dir=tmp_path,
            router_port=0,
            node_id="n1",
            isolation="none",
        )
    )
    daemon.registration = _registration(1)
    counter = _runner(daemon, "counter", 0, stateful=True)
    web = _runner(daemon, "web", 1, stateful=False)
    assert counter.url is not None and web.url is not None

    _ack(daemon, 0.5)
    assert not daemon.withheld(counter.url)

    # frozen past the lease: not served, and it took no writes after the lease's end
    _ack(daemon, 20)
    assert daemon.withheld(counter.url) and counter.fenced
    assert not daemon.withheld(web.url)  # a stateless instance may serve twice
    assert counter.writes_until is not None
    assert counter.writes_until <= time.time() - 20 + 3.0 + 0.5

    # an acknowledgement read late is as old as its call: still fenced
    _ack(daemon, 19)
    daemon._unfence()
    assert daemon.withheld(counter.url)

    # a heartbeat on the same lease acknowledged in time: the lease never expired
    _ack(daemon, 0.1)
    daemon._unfence()
    assert not daemon.withheld(counter.url)

    # the lease was lost: registered again on a new lease, heartbeats do not unfence;
    # the server accepting a report of the instance does (runner._report)
    _ack(daemon, 20)
    assert daemon.withheld(counter.url)
    daemon.registration = _registration(2)
    _ack(daemon, 0.1)
    daemon._unfence()
    assert daemon.withheld(counter.url)
