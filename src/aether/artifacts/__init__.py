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
)
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
    "PackResult",
    "WriteResult",
    "digest_bytes",
    "digest_file",
    "digest_hex",
    "manifest_json",
    "pack",
    "pack_bytes",
    "parse_digest",
    "parse_manifest_json",
    "safe_extract",
]
