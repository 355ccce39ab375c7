"""Pydantic types shared by the API, CLI, server and node. No I/O here."""

from aether.model.app import AppSpec, Resources
from aether.model.cluster import (
    Blueprint,
    Endpoint,
    InstanceRecord,
    NodeCapabilities,
    NodeRecord,
    instance_key,
    parse_instance_key,
)

__all__ = [
    "AppSpec",
    "Blueprint",
    "Endpoint",
    "InstanceRecord",
    "NodeCapabilities",
    "NodeRecord",
    "Resources",
    "instance_key",
    "parse_instance_key",
]
