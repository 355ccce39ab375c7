"""``GET /api/v1/schemas``: any role reads the versioned schemas; no token, no schemas."""

from __future__ import annotations

import httpx

from aether.model.schemas import SCHEMAS
from tests.support.server import RunningServer


async def test_any_role_lists_the_schemas_with_versions(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    viewer = {"Authorization": f"Bearer {server.token('viewer')}"}
    response = await http.get("/api/v1/schemas", headers=viewer)
    assert response.status_code == 200
    listed = {s["name"]: s for s in response.json()["schemas"]}
    assert set(listed) == {schema.name for schema in SCHEMAS}
    assert listed["register"]["kind"] == "message"
    assert listed["register"]["version"] == 1
    assert "version" in listed["register"]["json_schema"]["properties"]  # the node's own
    assert listed["instance"]["kind"] == "record"
    assert listed["event"]["kind"] == "event"
    for name, entry in listed.items():  # every payload carries its version, under this key
        expected = "schema_version" if name == "endpoint" else "schema"
        assert entry["version_field"] == expected
        if entry["kind"] != "event":
            assert expected in entry["json_schema"]["properties"], name
    assert (await http.get("/api/v1/schemas")).status_code == 401
