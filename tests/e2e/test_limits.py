"""Issue 16, rate limits and quotas, with real server and node processes.

The server runs with the default rate (1,000 requests a minute, burst 200). A burst
of 400 requests in about a second from tenant A gets 429s with Retry-After while
tenant B's requests all succeed and the node (exempt) stays ready; the cluster
admin sets B's quota with `aether limits set`, and B's deploy past it is refused
by the CLI with the quota named.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from aether.store.records import Records
from aether.store.records.db import open_records
from tests.support.cluster import Cluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-python"


def _tenant_tokens(cluster: Cluster, *tenants: str) -> list[str]:
    """An admin token of each tenant, minted in the server's records (as `new_tenant`)."""

    async def make() -> list[str]:
        engine, sessions = open_records(f"sqlite:///{cluster.server_dir / 'records.db'}")
        try:
            records = Records(sessions)
            tokens = []
            for name in tenants:
                row = await records.ensure_tenant(name)
                tokens.append(await records.create_token(row.id, "admin", f"{name} admin"))
            return tokens
        finally:
            await engine.dispose()

    return asyncio.run(make())


async def _storm(api: str, noisy: str, quiet: str) -> tuple[list[httpx.Response], list[int], float]:
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(base_url=api, timeout=30, limits=limits) as http:

        async def call(token: str) -> httpx.Response:
            return await http.get("/api/v1/apps", headers={"Authorization": f"Bearer {token}"})

        started = time.monotonic()
        noisy_calls = [asyncio.create_task(call(noisy)) for _ in range(400)]
        quiet_codes = []
        for _ in range(20):  # B keeps working, a request every 50 ms, during A's burst
            quiet_codes.append((await call(quiet)).status_code)
            await asyncio.sleep(0.05)
        answers = await asyncio.gather(*noisy_calls)
        return list(answers), quiet_codes, time.monotonic() - started


def test_one_tenants_burst_is_limited_while_another_works_and_quotas_name_themselves(
    cluster: Cluster,
) -> None:
    cluster.env["AETHER_RATE_LIMIT_PER_MINUTE"] = "1000"  # the defaults, not the suite's
    cluster.env["AETHER_RATE_LIMIT_BURST"] = "200"
    cluster.start_server()
    cluster.start_node("node-1")
    noisy, quiet = _tenant_tokens(cluster, "tenant-a", "tenant-b")

    answers, quiet_codes, elapsed = asyncio.run(_storm(cluster.api, noisy, quiet))
    served = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    assert len(served) + len(refused) == 400
    # the burst, and what the steady rate (1000/min) freed while the storm lasted
    assert 200 <= len(served) <= 200 + int(1000 / 60 * elapsed) + 1, (len(served), elapsed)
    assert refused and all(r.json()["code"] == "rate_limited" for r in refused)
    assert all(1 <= int(r.headers["retry-after"]) <= 12 for r in refused)
    assert quiet_codes == [200] * 20
    assert cluster.node_state("node-1") == "ready"  # its pushes and heartbeats are exempt

    # a POST without an Idempotency-Key: the CLI does not wait out the Retry-After (a
    # GET it would, when it is 10 s or less) and says when to try again
    over = cluster.cli("tokens", "create", "--role", "viewer", "--token", noisy, check=False)
    assert over.returncode == 42, over
    assert "rate limit" in over.stderr and "try again in" in over.stderr

    cluster.cli("limits", "set", "tenant-b", "--instances", "1")
    shown = cluster.cli_json("limits", "get", "tenant-b")
    assert shown["configured"]["instances"] == 1 and shown["effective"]["rate_per_minute"] == 1000
    refused_deploy = cluster.cli(
        "deploy",
        str(EXAMPLE),
        "--app",
        "greeter",
        "--instances",
        "2",
        "--token",
        quiet,
        check=False,
        timeout=300,
    )
    assert refused_deploy.returncode == 42, refused_deploy
    assert "quota 'instances' exceeded: limit 1, in use 0, asked 2" in refused_deploy.stderr
    own = cluster.cli_json("limits", "get", "--token", quiet)
    assert own["tenant"] == "tenant-b" and own["usage"]["instances"] == 0
