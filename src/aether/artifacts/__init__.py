"""Artifacts: canonical packing, safe extraction and content-addressed storage."""

from aether.artifacts.digest import (
    DIGEST_PREFIX,
    Hasher,
    digest_bytes,
    digest_file,
    digest_hex,
    parse_digest,
)
from aether.artifacts.extract import safe_extract
from aether.artifacts.ignore import DEFAULT_IGNORES, IGNORE_FILE, IgnoreRules
from aether.artifacts.pack import (
    ManifestEntry,
    PackResult,
    manifest_json,
    pack,
    pack_bytes,
    parse_manifest_json,
    plan_tree,
    tree_opener,
    write_plan,
)
from aether.artifacts.plan import PackPlan, PlanEntry
from aether.artifacts.registry import ArtifactBackend, LocalArtifactRegistry, WriteResult

__all__ = [
    "DEFAULT_IGNORES",
    "DIGEST_PREFIX",
    "IGNORE_FILE",
    "ArtifactBackend",
    "Hasher",
    "IgnoreRules",
    "LocalArtifactRegistry",
    "ManifestEntry",
    "PackPlan",
    "PackResult",
    "PlanEntry",
    "WriteResult",
    "digest_bytes",
    "digest_file",
    "digest_hex",
    "manifest_json",
    "pack",
    "pack_bytes",
    "parse_digest",
    "parse_manifest_json",
    "plan_tree",
    "safe_extract",
    "tree_opener",
    "write_plan",
]
