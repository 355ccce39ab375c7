"""The slice host as a real process, called over ``wire.Connection``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from aether.slices import wire
from tests.slices.hosts import KEY, Host, start_host, wait_draining, wait_in_flight, write_package

SHOP = """
    import asyncio
    import json
    import os
    import time
    from pathlib import Path

    from pydantic import BaseModel

    from aether import slices

    LOG = Path(os.environ.get("SHOP_LOG", "shop.log"))

    def log(**what):
        with LOG.open("a") as f:
            f.write(json.dumps(what) + "\\n")

    class Item(BaseModel):
        sku: str
        price_cents: int

    @slices.slice
    class Catalog:
        def __init__(self):
            self.items = {}
            log(step="load")

        async def activate(self):
            self.items = {"tea": Item(sku="tea", price_cents=450)}
            log(step="activate")

        def deactivate(self):
            log(step="deactivate")

        @slices.entry(idempotent=True)
        async def price(self, sku: str) -> Item:
            return self.items[sku]

        @slices.entry
        def add(self, a: int, b: int = 1) -> int:
            return a + b

        @slices.entry
        async def put(self, item: Item) -> list[str]:
            self.items[item.sku] = item
            return sorted(self.items)

        @slices.entry
        def nap(self, seconds: float) -> str:
            time.sleep(seconds)
            return "rested"

        @slices.entry
        async def slow(self, seconds: float) -> str:
            await asyncio.sleep(seconds)
            log(step="slow done")
            return "done"

        @slices.entry
        @slices.batch(max_size=4, max_wait_ms=50)
        async def score(self, skus: list[str]) -> list[int]:
            log(batch=len(skus))
            return [len(s) for s in skus]

        @slices.entry
        @slices.batch(max_size=4, max_wait_ms=20)
        def broken_batch(self, xs: list[int]) -> list[int]:
            raise ValueError("no batches today")
"""


@pytest.fixture(scope="module")
def shop_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shop")
    write_package(root, "shop", SHOP)
    return root


@pytest.fixture(scope="module")
def host(shop_root: Path) -> Iterator[Host]:
    host = start_host(shop_root, "shop.slice:Catalog")
    yield host
    host.stop()


@pytest.fixture
async def conn(host: Host) -> AsyncIterator[wire.Connection]:
    connection = await wire.Connection.open("127.0.0.1", host.port)
    yield connection
    await connection.close()


def log_of(root: Path) -> list[dict[str, Any]]:
    path = root / "shop.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_each_entry_answers(conn: wire.Connection) -> None:
    assert await conn.call("price", kwargs={"sku": "tea"}) == {"sku": "tea", "price_cents": 450}
    assert await conn.call("price", ["tea"]) == {"sku": "tea", "price_cents": 450}
    assert await conn.call("add", [2, 3]) == 5
    assert await conn.call("add", kwargs={"a": "2"}) == 3
    assert await conn.call("put", kwargs={"item": {"sku": "mug", "price_cents": 900}}) == [
        "mug",
        "tea",
    ]


async def test_wrong_types_are_a_bad_request_with_details(conn: wire.Connection) -> None:
    with pytest.raises(wire.CallFailed) as caught:
        await conn.call("add", kwargs={"a": "two"})
    assert caught.value.code == "bad_request"
    assert caught.value.details[0]["loc"] == ["a"]
    assert caught.value.details[0]["type"] == "int_parsing"


async def test_an_entry_that_raises_is_internal(conn: wire.Connection) -> None:
    with pytest.raises(wire.CallFailed) as caught:
        await conn.call("price", kwargs={"sku": "nothing"})
    assert caught.value.code == "internal"
    assert "KeyError" in caught.value.message


async def test_unknown_entry_is_not_found(conn: wire.Connection) -> None:
    with pytest.raises(wire.CallFailed) as caught:
        await conn.call("nope")
    assert caught.value.code == "not_found"


async def test_control_entries_need_the_key(conn: wire.Connection) -> None:
    for key in (None, "wrong", KEY + "x"):
        with pytest.raises(wire.CallFailed) as caught:
            await conn.call("$describe", key=key)
        assert caught.value.code == "not_found"
        assert caught.value.message == "no entry point '$describe'"
    with pytest.raises(wire.CallFailed) as caught:
        await conn.call("$nothing", key=KEY)
    assert caught.value.code == "not_found"


async def test_describe_shape(conn: wire.Connection) -> None:
    described = await conn.call("$describe", key=KEY)
    assert described["slice"] == "catalog"
    assert described["lean"] is False
    assert set(described["entries"]) == {
        "price",
        "add",
        "put",
        "nap",
        "slow",
        "score",
        "broken_batch",
    }
    price = described["entries"]["price"]
    assert set(price) == {"params", "returns", "idempotent", "batch"}
    assert price["idempotent"] is True
    assert price["params"]["properties"]["sku"]["type"] == "string"
    assert described["entries"]["score"]["batch"] == {"max_size": 4, "max_wait_ms": 50}


async def test_stats_count_per_entry_since_the_last(conn: wire.Connection) -> None:
    await conn.call("$stats", key=KEY)
    for _ in range(3):
        await conn.call("add", [1])
    with pytest.raises(wire.CallFailed):
        await conn.call("add", ["x"])
    stats = await conn.call("$stats", key=KEY)
    assert stats["add"]["calls"] == 4
    assert stats["add"]["errors"] == 1
    assert stats["add"]["duration_s"] >= 0
    assert stats["add"]["in_flight"] == 0
    assert stats["price"]["calls"] == 0
    again = await conn.call("$stats", key=KEY)
    assert again["add"]["calls"] == 0


async def test_calls_are_multiplexed_and_concurrent(conn: wire.Connection) -> None:
    started = time.monotonic()
    results = await asyncio.gather(*(conn.call("slow", [0.3]) for _ in range(20)))
    assert results == ["done"] * 20
    assert time.monotonic() - started < 2.0


async def test_sync_entries_run_in_threads_concurrently(conn: wire.Connection) -> None:
    started = time.monotonic()
    results = await asyncio.gather(*(conn.call("nap", [0.6]) for _ in range(24)))
    assert results == ["rested"] * 24
    assert time.monotonic() - started < 1.8  # 24 at once; 6 at a time would take 2.4 s


async def test_batches_gather_concurrent_calls(conn: wire.Connection, shop_root: Path) -> None:
    before = len(log_of(shop_root))
    skus = [f"s{'x' * i}" for i in range(10)]
    results = await asyncio.gather(*(conn.call("score", [s]) for s in skus))
    assert results == [len(s) for s in skus]
    batches = [e["batch"] for e in log_of(shop_root)[before:] if "batch" in e]
    assert sum(batches) == 10
    assert max(batches) <= 4
    assert len(batches) < 10  # gathered, not one by one
    # a lone call waits at most max_wait_ms
    started = time.monotonic()
    assert await conn.call("score", ["abc"]) == 3
    assert time.monotonic() - started < 1.0


async def test_a_failed_batch_fails_each_caller(conn: wire.Connection) -> None:
    outcomes = await asyncio.gather(
        *(conn.call("broken_batch", [i]) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(o, wire.CallFailed) and o.code == "internal" for o in outcomes)
    assert all("no batches today" in str(o) for o in outcomes)


async def test_a_call_past_its_deadline_is_not_started(
    conn: wire.Connection, shop_root: Path
) -> None:
    before = len(log_of(shop_root))
    with pytest.raises(wire.CallFailed) as caught:
        await conn.call("slow", [0.0], deadline=time.time() - 1)
    assert caught.value.code == "deadline_exceeded"
    await asyncio.sleep(0.1)
    assert not [e for e in log_of(shop_root)[before:] if e.get("step") == "slow done"]


async def test_a_call_running_past_its_deadline_is_answered_deadline_exceeded(
    host: Host,
) -> None:
    # A raw frame exchange, so the answer is the host's, not the client's timeout.
    reader, writer = await asyncio.open_connection("127.0.0.1", host.port)
    writer.write(wire.MAGIC)
    call = {"id": 1, "entry": "slow", "args": [5], "deadline": time.time() + 0.2}
    writer.write(wire.encode(call))
    started = time.monotonic()
    answer = await asyncio.wait_for(wire.read_frame(reader), 5)
    assert answer is not None
    assert answer["error"]["code"] == "deadline_exceeded"
    assert time.monotonic() - started < 2
    writer.close()


async def test_healthz_and_http_side(host: Host) -> None:
    assert host.health() == 200
    reader, writer = await asyncio.open_connection("127.0.0.1", host.port)
    writer.write(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.read(100)
    assert head.startswith(b"HTTP/1.1 404")
    writer.close()


async def test_a_garbage_frame_closes_only_its_connection(host: Host) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", host.port)
    writer.write(wire.MAGIC + b"\x00\x00\x00\x03abc")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert host.health() == 200


def test_sigterm_drains_in_flight_calls_then_deactivates(tmp_path: Path) -> None:
    write_package(tmp_path, "shop", SHOP)
    host = start_host(tmp_path, "shop.slice:Catalog")

    async def scenario() -> tuple[object, BaseException | object]:
        conn = await wire.Connection.open("127.0.0.1", host.port)
        other = await wire.Connection.open("127.0.0.1", host.port)
        slow = asyncio.create_task(conn.call("slow", [1.0]))
        await wait_in_flight(host, "slow")
        host.process.terminate()
        await wait_draining(host)
        refused: BaseException | object
        try:
            refused = await other.call("add", [1])
        except wire.CallFailed as exc:
            refused = exc
        result = await slow
        await conn.close()
        await other.close()
        return result, refused

    result, refused = asyncio.run(scenario())
    host.process.wait(timeout=10)  # exits by itself: a second SIGTERM from stop() would kill it
    code, err = host.stop()
    assert result == "done"
    assert isinstance(refused, wire.CallFailed) and refused.code == "unavailable"
    assert refused.details == {"started": False}
    assert code == 0, err
    steps = [e.get("step") for e in log_of(tmp_path) if "step" in e]
    assert steps == ["load", "activate", "slow done", "deactivate"]


def test_an_import_failure_exits_1_with_the_traceback(tmp_path: Path) -> None:
    write_package(tmp_path, "bad", "import no_such_module_here\n")
    host = start_host(tmp_path, "bad.slice:Thing", wait=False)
    code, err = host.stop(timeout=20) if host.process.wait(timeout=20) is not None else (0, "")
    assert code == 1
    assert "Traceback" in err
    assert "no_such_module_here" in err


def test_a_lean_slice_serves_its_function(tmp_path: Path) -> None:
    write_package(
        tmp_path,
        "lean",
        """
        from aether import slices

        @slices.slice
        def greet(name: str, times: int = 1) -> str:
            return name * times
        """,
    )
    host = start_host(tmp_path, "lean.slice:greet", app="greeter")

    async def scenario() -> tuple[object, object]:
        conn = await wire.Connection.open("127.0.0.1", host.port)
        try:
            return await conn.call("greet", ["ab", 2]), await conn.call("$describe", key=KEY)
        finally:
            await conn.close()

    try:
        result, described = asyncio.run(scenario())
    finally:
        code, err = host.stop()
    assert result == "abab"
    assert isinstance(described, dict)
    assert described["slice"] == "greeter"
    assert described["lean"] is True
    assert list(described["entries"]) == ["greet"]
    assert code == 0, err


def test_control_deactivate_and_activate(tmp_path: Path) -> None:
    write_package(tmp_path, "shop", SHOP)
    host = start_host(tmp_path, "shop.slice:Catalog")

    async def scenario() -> list[object]:
        conn = await wire.Connection.open("127.0.0.1", host.port)
        seen: list[object] = []
        try:
            seen.append(await conn.call("$deactivate", key=KEY))
            seen.append(host.health())
            try:
                await conn.call("add", [1])
            except wire.CallFailed as exc:
                seen.append(exc.code)
            seen.append(await conn.call("$activate", key=KEY))
            seen.append(host.health())
            seen.append(await conn.call("add", [1]))
        finally:
            await conn.close()
        return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        code, err = host.stop()
    assert seen == [
        {"state": "inactive"},
        503,
        "unavailable",
        {"state": "active"},
        200,
        2,
    ]
    assert code == 0, err
    steps = [e.get("step") for e in log_of(tmp_path) if "step" in e]
    assert steps == ["load", "activate", "deactivate", "activate", "deactivate"]


def test_healthz_is_503_until_activate_has_run(tmp_path: Path) -> None:
    write_package(
        tmp_path,
        "sleepy",
        """
        import time
        from aether import slices

        @slices.slice
        class Sleepy:
            def activate(self):
                time.sleep(1.5)

            @slices.entry
            def ping(self) -> str:
                return "pong"
        """,
    )
    host = start_host(tmp_path, "sleepy.slice:Sleepy", wait=False)
    try:
        seen: set[int] = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and 200 not in seen:
            with contextlib.suppress(OSError):
                seen.add(host.health())
            time.sleep(0.05)
    finally:
        code, err = host.stop()
    assert seen == {503, 200}
    assert code == 0, err


@pytest.mark.parametrize(
    ("where", "body"),
    [
        ("construct", "def __init__(self):\n                raise RuntimeError('boom in init')"),
        (
            "activate",
            "async def activate(self):\n                raise RuntimeError('boom in activate')",
        ),
    ],
)
def test_a_failing_load_or_activate_exits_1_with_the_traceback(
    tmp_path: Path, where: str, body: str
) -> None:
    write_package(
        tmp_path,
        "failing",
        f"""
        from aether import slices

        @slices.slice
        class Failing:
            {body}

            @slices.entry
            def ping(self) -> str:
                return "pong"
        """,
    )
    host = start_host(tmp_path, "failing.slice:Failing", wait=False)
    host.process.wait(timeout=20)
    code, err = host.stop()
    assert code == 1
    assert "Traceback" in err
    assert f"boom in {where.replace('construct', 'init')}" in err


def test_a_target_that_is_not_a_slice_exits_1(tmp_path: Path) -> None:
    write_package(tmp_path, "plain", "class Plain:\n    pass\n")
    host = start_host(tmp_path, "plain.slice:Plain", wait=False)
    host.process.wait(timeout=20)
    code, err = host.stop()
    assert code == 1
    assert "not marked with @slices.slice" in err
