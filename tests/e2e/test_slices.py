"""Slices end to end (issue 19): the shop's three slices on two real nodes, called
through routers, the API and each other's handles; a killed node; batching; bad
arguments; a slice that cannot import; scaling by an entry point's calls in flight."""

from __future__ import annotations

import concurrent.futures
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"
BASKET = {"tea": 2, "cup": 1}  # 2 x 450 + 1200


def _deploy_shop(cluster: Cluster) -> None:
    for name in ("catalog", "cart", "checkout"):
        cluster.cli_json("deploy", str(SHOP / name))
    cluster.cli_json("blueprint", "apply", str(SHOP / "blueprint.toml"))
    wait_for(
        lambda: [len(cluster.active(s)) for s in ("catalog", "cart", "checkout")] == [2, 1, 1],
        90,
        "the shop's instances ACTIVE (catalog 2, cart 1, checkout 1)",
    )


def _call(router: str, slice_: str, entry: str, body: Any, timeout: float = 10) -> httpx.Response:
    return httpx.post(f"{router}/slices/{slice_}/{entry}", json=body, timeout=timeout)


def test_the_shop_on_two_nodes(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    cluster.start_node("n2")
    _deploy_shop(cluster)
    assert {i["node"] for i in cluster.active("catalog")} == {"n1", "n2"}

    # through any router: checkout → cart → catalog, by handles
    for node in ("n1", "n2"):
        answer = _call(
            cluster.router(node), "checkout", "place", {"order_id": f"o-{node}", "items": BASKET}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["total_cents"] == 2100
    # the same order again is the same receipt (idempotent)
    again = _call(cluster.router("n2"), "checkout", "place", {"order_id": "o-n1", "items": BASKET})
    assert again.json()["total_cents"] == 2100

    # bad input: the validation errors, in the envelope; unknown names are 404
    bad = _call(cluster.router("n1"), "cart", "total", {"items": {"tea": "many"}})
    assert bad.status_code == 400, bad.text
    assert bad.json()["code"] == "bad_request" and bad.json()["details"]
    assert _call(cluster.router("n1"), "cart", "nope", {}).status_code == 404
    assert _call(cluster.router("n1"), "no-such-slice", "x", {}).status_code == 404

    # the CLI: the slices and a call through the API
    listed = cluster.cli_json("slice", "ls")
    names = {s["name"] for s in (listed["slices"] if isinstance(listed, dict) else listed)}
    assert {"catalog", "cart", "checkout"} <= names
    called = cluster.cli_json("slice", "call", "cart", "total", "--json", '{"items": {"pot": 1}}')
    assert (called.get("result") if isinstance(called, dict) else called) == 3900

    # the batched entry point: 48 baskets at once, one price call per item each
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(
                lambda i: _call(
                    cluster.router("n1"),
                    "cart",
                    "total",
                    {"items": {"tea": 1, "cup": 1, "pot": i % 3}},
                ),
                range(48),
            )
        )
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers[:3]]
    sizes: list[int] = []
    for node in ("n1", "n2"):  # each router prefers its own node's instance
        sizes += _call(cluster.router(node), "catalog", "batch_sizes", {}).json()
    assert max(sizes) > 1, sizes  # calls arrived together, ran as one


def test_calls_fail_over_when_a_node_is_killed(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    cluster.start_node("n2")
    cluster.cli_json("deploy", str(SHOP / "catalog"), "--instances", "1")
    wait_for(lambda: len(cluster.active("catalog")) == 1, 90, "catalog ACTIVE")
    doomed = cluster.active("catalog")[0]["node"]
    survivor = "n2" if doomed == "n1" else "n1"
    router = cluster.router(survivor)
    assert _call(router, "catalog", "item", {"sku": "tea"}).json()["price_cents"] == 450

    outcomes: list[tuple[float, int]] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                status = _call(router, "catalog", "item", {"sku": "tea"}, timeout=5).status_code
            except httpx.HTTPError:
                status = 0
            outcomes.append((time.monotonic(), status))
            time.sleep(0.05)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(0.5)
        killed_at = time.monotonic()
        cluster.kill_node(doomed)
        wait_for(
            lambda: [i["node"] for i in cluster.active("catalog")] == [survivor],
            60,
            "the replacement ACTIVE on the surviving node",
        )
        replaced_at = time.monotonic()
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join()
    assert all(s == 200 for t, s in outcomes if t < killed_at)
    assert all(s == 200 for t, s in outcomes if t > replaced_at + 0.5), outcomes[-10:]
    # while no instance was ACTIVE, the router answered with the envelope, never hung
    assert all(s in (200, 502, 503) for _, s in outcomes), {s for _, s in outcomes}


def _slice_app(root: Path, name: str, source: str, toml_extra: str = "") -> Path:
    app = root / name
    app.mkdir()
    (app / "aether.toml").write_text(
        f'name = "{name}"\nruntime = "slice"\nslice = "{name}_mod:{name.title()}"\n{toml_extra}'
    )
    (app / f"{name}_mod.py").write_text(textwrap.dedent(source))
    return app


def test_a_slice_that_cannot_import_ends_failed_with_its_traceback(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    app = _slice_app(
        tmp_path,
        "broken",
        """
        import no_such_module_here  # noqa

        class Broken: ...
        """,
    )
    result = cluster.cli("deploy", str(app), "--timeout", "90", check=False)
    assert result.returncode != 0

    def reason_in_status() -> bool:
        status = cluster.cli("status", check=False)
        return "no_such_module_here" in status.stdout + status.stderr

    wait_for(reason_in_status, 30, "the import error in `aether status`")

    def traceback_in_logs() -> bool:  # the node ships its instances' logs every second
        logs = cluster.cli("logs", "broken", check=False)
        return "ModuleNotFoundError" in logs.stdout + logs.stderr

    wait_for(traceback_in_logs, 30, "the import's traceback in `aether logs broken`")


def test_a_slice_scales_by_its_entry_points_calls_in_flight(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    app = _slice_app(
        tmp_path,
        "slow",
        """
        import asyncio

        from aether import slices

        @slices.slice(name="slow")
        class Slow:
            @slices.entry(idempotent=True)
            async def wait(self, seconds: float) -> float:
                await asyncio.sleep(seconds)
                return seconds
        """,
        '[autoscale]\nmin = 1\nmax = 3\nentry = "wait"\nmetric = "in_flight"\ntarget = 2\n'
        "scale_up_cooldown = 1\n",
    )
    cluster.cli_json("deploy", str(app))
    wait_for(lambda: len(cluster.active("slow")) == 1, 90, "slow ACTIVE")
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            try:
                _call(cluster.router("n1"), "slow", "wait", {"seconds": 0.5})
            except httpx.HTTPError:
                time.sleep(0.05)

    threads = [threading.Thread(target=caller) for _ in range(12)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(cluster.active("slow")) >= 2, 60, "scaled out by calls in flight")
    finally:
        stop.set()
        for t in threads:
            t.join()
    decisions = cluster.api_get("/decisions?limit=20")
    items = decisions["decisions"] if isinstance(decisions, dict) else decisions
    assert any("wait" in str(d.get("reason", "")) for d in items), items[:3]
