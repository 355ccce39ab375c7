"""The OpenAPI document, told the truth once, after FastAPI wrote it.

FastAPI documents a 422 no route answers (validation errors are 400 here) and
none of the errors the routes do answer. :func:`install_openapi` rewrites the
document once: every ``/api/`` route gets the error statuses it can really give,
each with the ``Error`` envelope; uploads get their request bodies; the bearer
scheme is declared.

Which statuses, and why:

* 400: the route takes parameters or a body (malformed, out of range);
* 401, 403: every ``/api/`` route needs a token, and a role and namespace;
* 404: the route takes input, which may name something (an app, node, instance…)
  that does not exist;
* 409: a mutating call (an ``Idempotency-Key`` reused with another body, or a
  state conflict);
* 413: the route takes a body (``server.limits``);
* 429: every ``/api/`` route counts against the tenant's request rate
  (``http/ratelimit.py``; node credentials are exempt);
* 503: every ``/api/`` route reads the state store or the records database.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

__all__ = ["install_openapi"]

_ERROR = {
    "type": "object",
    "required": ["code", "message", "trace_id"],
    "properties": {
        "code": {"type": "string", "description": "machine-readable, e.g. not_found"},
        "message": {"type": "string", "description": "what happened and what to do next"},
        "trace_id": {"type": "string", "description": "also in the X-Trace-Id header"},
        # quota_exceeded only: which quota, its limit, the use and what was asked
        "quota": {"type": "string"},
        "limit": {"type": "number"},
        "used": {"type": "number"},
        "requested": {"type": "number"},
    },
    "additionalProperties": False,
}
_DESCRIPTIONS = {
    "400": "Bad request (invalid parameters or body, or an unsafe archive)",
    "401": "Missing, invalid or revoked token",
    "403": "The token's role or namespace may not do this, or a quota is exceeded",
    "404": "Not found (or another tenant's)",
    "409": "Conflict (state, or an Idempotency-Key reused with another body)",
    "413": "Request body too large",
    "429": "The tenant's request rate is exceeded (see Retry-After)",
    "503": "The state store or the records database is unavailable",
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
#: Routes that read their body themselves: what they take.
_UPLOADS: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/api/v1/artifacts"): {"application/octet-stream": _BINARY},
    ("put", "/api/v1/blobs/{digest}"): {"application/octet-stream": _BINARY},
    ("post", "/api/v1/snapshots"): {"application/octet-stream": _BINARY},
    ("post", "/api/v1/artifacts/assemble"): {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["digest", "plan"],
                "properties": {"digest": {"type": "string"}, "plan": {"type": "object"}},
            }
        }
    },
}
_MUTATING = {"post", "put", "patch", "delete"}


def _error(status: str) -> dict[str, Any]:
    return {
        "description": _DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _truthful(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Error"] = _ERROR
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "an API token (`aether tokens create`) or a node's join token",
    }
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            responses: dict[str, Any] = op.setdefault("responses", {})
            responses.pop("422", None)
            upload = _UPLOADS.get((method, path))
            if upload is not None and "requestBody" not in op:
                op["requestBody"] = {"required": True, "content": upload}
            if path == "/metrics":
                responses["401"] = _error("401")
            if path == "/readyz":
                responses["503"] = _error("503")
            if not path.startswith("/api/"):
                continue
            op["security"] = [{"bearer": []}]
            statuses = ["401", "403", "429", "503"]
            if op.get("parameters") or "requestBody" in op:
                statuses.append("400")
            if op.get("parameters") or "requestBody" in op:  # input that names things
                statuses.append("404")
            if method in _MUTATING:
                statuses.append("409")
            if "requestBody" in op:
                statuses.append("413")
            for status in sorted(statuses):
                responses.setdefault(status, _error(status))
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve the corrected document (built once, on first request)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _truthful(original())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
