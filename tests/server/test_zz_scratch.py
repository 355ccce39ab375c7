from __future__ import annotations
import asyncio, uuid, os
import httpx
from tests.server.conftest import RunningServer
from tests.server.support import bearer, deploy, unique, upload_random, sha256_of

async def test_probe(server: RunningServer, http: httpx.AsyncClient) -> None:
    app = unique("race")
    digest = await upload_random(http, server.admin_token)
    key = uuid.uuid4().hex
    rs = await asyncio.gather(*(deploy(http, server.admin_token, app, digest, key=key, instances=0) for _ in range(5)))
    print("race", [(r.status_code, r.json().get("version")) for r in rs])
    a = bearer(server.admin_token); n = bearer(server.join_token)
    probes = [
        ("GET", f"/api/v1/nodes/x/assignments?from_revision={2**70}", n, None),
        ("GET", f"/api/v1/nodes/x/assignments?from_revision={2**63}", n, None),
        ("POST", "/api/v1/nodes/x/heartbeat", n, {"lease_id": 2**70}),
        ("PUT", "/api/v1/nodes/x/instances/a@1/0", n, {"state": "ACTIVE"}),
        ("PUT", "/api/v1/nodes/x/instances/a@1/0", n, {"state": "bogus"}),
        ("DELETE", "/api/v1/nodes/x/instances/a@1/0", n, None),
        ("POST", "/api/v1/nodes/x/logs", n, {"entries": [{"tenant": "../../etc", "app": "../x", "label": "l", "text": "t"}]}),
        ("GET", f"/api/v1/apps/{app}/logs?tail=5", a, None),
        ("POST", "/api/v1/nodes/nonexistent/drain", a, None),
        ("GET", "/api/v1/deployments/" + "x"*5000, a, None),
        ("GET", f"/api/v1/instances?node=zz", a, None),
        ("POST", f"/api/v1/apps/{app}/rollback", a, {"version": 2**70}),
        ("POST", f"/api/v1/apps/{app}/deployments", a, {"digest": digest, "spec": {"name": app, "start": "x", "env": {"A": "\x00"}}}),
        ("POST", "/api/v1/nodes/register", n, {"id": "n1", "capabilities": {"cpus": 1e308, "memory_mb": 2**70, "drivers": []}, "router_url": "x"}),
        ("GET", "/api/v1/status", a, None),
        ("GET", "/api/v1/nodes", a, None),
    ]
    for m, p, h, b in probes:
        try:
            async with http.stream(m, p, headers=h, json=b, timeout=3) as r:
                body = b""
                try:
                    async for c in r.aiter_bytes():
                        body += c
                        if len(body) > 300: break
                except Exception as e:
                    body += f" <<{type(e).__name__}>>".encode()
                print(m, p[:70], r.status_code, body[:300])
        except Exception as e:
            print(m, p[:70], "EXC", type(e).__name__, e)
