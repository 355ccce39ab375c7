"""Handles between real host processes: a ``front`` slice calls a ``back`` slice
(two instances) through ``slices.get``, with the table pushed by ``$endpoints``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from aether.slices import wire
from tests.slices.hosts import KEY, Host, start_host, wait_draining, wait_in_flight, write_package

BACK = """
    import asyncio
    import os
    import time

    from aether import slices
    from aether.slices.context import DEADLINE, TRACE

    WHO = os.environ["WHO"]

    @slices.slice(name="back")
    class Back:
        @slices.entry
        async def who(self, x: int = 0) -> dict:
            return {"who": WHO, "x": x}

        @slices.entry(idempotent=True)
        async def slow_idem(self, seconds: float) -> str:
            await asyncio.sleep(seconds)
            return WHO

        @slices.entry
        async def slow_plain(self, seconds: float) -> str:
            await asyncio.sleep(seconds)
            return WHO

        @slices.entry
        async def echo(self, value: dict) -> dict:
            return {"who": WHO, "value": value}

        @slices.entry
        async def context(self) -> dict:
            deadline = DEADLINE.get()
            left = None if deadline is None else deadline - time.time()
            return {"left": left, "trace": TRACE.get()}
"""

FRONT = """
    from typing import Any

    from pydantic import BaseModel

    from aether import slices

    class Point(BaseModel):
        x: int

    @slices.slice(name="front")
    class Front:
        @slices.entry
        async def ask(
            self,
            entry: str,
            kwargs: dict[str, Any] = {},
            timeout: float | None = None,
            balance: str = "round_robin",
            times: int = 1,
        ) -> list[Any]:
            handle = slices.get("back").options(timeout=timeout, balance=balance)
            out = []
            for _ in range(times):
                try:
                    out.append(await handle.call(entry, **kwargs))
                except slices.CallError as exc:
                    out.append({"error": exc.code, "message": exc.message})
            return out

        @slices.entry
        async def point(self) -> Any:
            return await slices.get("back").echo(value=Point(x=7))
"""


def table(back1: Host, back2: Host) -> dict[str, Any]:
    entries = ["who", "slow_idem", "slow_plain", "context", "echo"]
    return {
        "back": {
            entry: [
                {
                    "url": back1.url,
                    "node": "n1",
                    "n": 1,
                    "schema": {"idempotent": entry == "slow_idem"},
                },
                {
                    "url": back2.url,
                    "node": "n2",
                    "n": 1,
                    "schema": {"idempotent": entry == "slow_idem"},
                },
            ]
            for entry in entries
        }
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_package(tmp_path, "back", BACK)
    write_package(tmp_path, "front", FRONT)
    return tmp_path


@pytest.fixture
def hosts(root: Path) -> Iterator[tuple[Host, Host, Host]]:
    back1 = start_host(root, "back.slice:Back", env={"WHO": "b1"})
    back2 = start_host(root, "back.slice:Back", env={"WHO": "b2"})
    front = start_host(root, "front.slice:Front")
    yield front, back1, back2
    for host in (front, back1, back2):
        host.stop()


@pytest.fixture
async def front(hosts: tuple[Host, Host, Host]) -> AsyncIterator[wire.Connection]:
    connection = await wire.Connection.open("127.0.0.1", hosts[0].port)
    yield connection
    await connection.close()


async def push(front: wire.Connection, hosts: tuple[Host, Host, Host], node: str) -> None:
    _, back1, back2 = hosts
    pushed = await front.call(
        "$endpoints", kwargs={"table": table(back1, back2), "node": node}, key=KEY
    )
    assert pushed == {"endpoints": 10}


async def test_round_robin_across_instances(
    front: wire.Connection, hosts: tuple[Host, Host, Host]
) -> None:
    await push(front, hosts, "elsewhere")
    answers = await front.call("ask", kwargs={"entry": "who", "kwargs": {"x": 1}, "times": 4})
    assert sorted(a["who"] for a in answers) == ["b1", "b1", "b2", "b2"]
    # a pydantic model passed to a handle travels as its JSON
    assert (await front.call("point"))["value"] == {"x": 7}


async def test_a_new_table_replaces_the_old(
    front: wire.Connection, hosts: tuple[Host, Host, Host]
) -> None:
    _, back1, _ = hosts
    await push(front, hosts, "elsewhere")
    only_b1 = {"back": {"who": [{"url": back1.url, "node": "n1", "n": 1}]}}
    await front.call("$endpoints", kwargs={"table": only_b1, "node": "x"}, key=KEY)
    answers = await front.call("ask", kwargs={"entry": "who", "times": 3})
    assert [a["who"] for a in answers] == ["b1"] * 3
    (gone,) = await front.call("ask", kwargs={"entry": "slow_idem", "kwargs": {"seconds": 0}})
    assert gone["error"] == "no_endpoint"


async def test_an_instance_on_the_same_node_is_preferred(
    front: wire.Connection, hosts: tuple[Host, Host, Host]
) -> None:
    await push(front, hosts, "n2")
    answers = await front.call("ask", kwargs={"entry": "who", "times": 5})
    assert [a["who"] for a in answers] == ["b2"] * 5


async def test_least_in_flight_reads_the_snapshot(
    front: wire.Connection, hosts: tuple[Host, Host, Host]
) -> None:
    _, back1, back2 = hosts
    await push(front, hosts, "elsewhere")
    snapshot = {"slices": {"back": {"who": {"by_url": {back1.url: 40, back2.url: 1}}}}}
    assert await front.call("$snapshot", kwargs={"snapshot": snapshot}, key=KEY) == {"ok": True}
    answers = await front.call(
        "ask", kwargs={"entry": "who", "times": 4, "balance": "least_in_flight"}
    )
    assert [a["who"] for a in answers] == ["b2"] * 4


async def test_no_endpoint_and_errors_come_back_as_call_errors(
    front: wire.Connection, hosts: tuple[Host, Host, Host]
) -> None:
    await push(front, hosts, "n1")
    (missing,) = await front.call("ask", kwargs={"entry": "nothing"})
    assert missing["error"] == "no_endpoint"
    (bad,) = await front.call("ask", kwargs={"entry": "who", "kwargs": {"x": "seven"}})
    assert bad["error"] == "bad_request"


async def test_deadline_and_trace_travel_with_the_call(
    front: wire.Connection, hosts: tuple[Host, Host, Host]
) -> None:
    await push(front, hosts, "n1")
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    (seen,) = await front.call(
        "ask", kwargs={"entry": "context"}, deadline=time.time() + 5, trace=trace
    )
    assert seen["trace"] == trace
    assert 1 < seen["left"] <= 5
    # a handle's own timeout is capped by the caller's deadline, and caps it
    (seen,) = await front.call("ask", kwargs={"entry": "context", "timeout": 1.0})
    assert 0 < seen["left"] <= 1.0
    (late,) = await front.call(
        "ask", kwargs={"entry": "slow_idem", "kwargs": {"seconds": 2}, "timeout": 0.2}
    )
    assert late["error"] == "deadline_exceeded"


async def test_an_idempotent_call_is_retried_when_its_instance_dies(
    front: wire.Connection, hosts: tuple[Host, Host, Host]
) -> None:
    _, back1, _ = hosts
    await push(front, hosts, "n1")  # b1 is local: tried first
    idem = asyncio.create_task(
        front.call("ask", kwargs={"entry": "slow_idem", "kwargs": {"seconds": 1.0}})
    )
    plain = asyncio.create_task(
        front.call("ask", kwargs={"entry": "slow_plain", "kwargs": {"seconds": 1.0}})
    )
    await wait_in_flight(back1, "slow_idem")
    await wait_in_flight(back1, "slow_plain")
    back1.process.kill()
    assert await idem == ["b2"]
    (lost,) = await plain
    assert lost["error"] == "unavailable"
    # the dead instance refuses connections: a call not yet sent moves on, idempotent or not
    answers = await front.call(
        "ask", kwargs={"entry": "slow_plain", "kwargs": {"seconds": 0}, "times": 3}
    )
    assert answers == ["b2", "b2", "b2"]


async def test_a_draining_instance_hands_calls_on(
    front: wire.Connection, hosts: tuple[Host, Host, Host]
) -> None:
    _, back1, _ = hosts
    await push(front, hosts, "n1")
    b1 = await wire.Connection.open("127.0.0.1", back1.port)
    try:
        busy = asyncio.create_task(b1.call("slow_plain", [1.5]))
        await wait_in_flight(back1, "slow_plain")
        back1.process.terminate()  # draining: new calls refused, not started
        await wait_draining(back1)
        answers = await front.call(
            "ask", kwargs={"entry": "slow_plain", "kwargs": {"seconds": 0}, "times": 2}
        )
        assert answers == ["b2", "b2"]
        assert await busy == "b1"
    finally:
        await b1.close()
