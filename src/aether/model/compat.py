"""Version skew between a node and the server it registers with (pure).

The policy (docs/operations.md, "Upgrades"): servers upgrade first; a node up to one
minor version behind its servers keeps working. A node newer than its server is not
supported: the server may not understand what the node sends (it warns, and goes on,
so that an operator who upgraded a node first sees why in the log rather than a node
that refuses to start).
"""

from __future__ import annotations

__all__ = ["parse_version", "skew_warning"]


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``"0.2.0"`` → ``(0, 2, 0)``; None for what is not ``MAJOR.MINOR.PATCH``
    (a suffix such as ``.dev1`` or ``rc1`` on the patch is ignored)."""
    parts = text.strip().split(".")
    if len(parts) < 3:
        return None
    patch = parts[2]
    digits = patch[: len(patch) - len(patch.lstrip("0123456789"))] or "0"
    if not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return int(parts[0]), int(parts[1]), int(digits)


def skew_warning(node_version: str, server_version: str | None) -> str | None:
    """The line a node logs at registration when its server's version is outside the
    policy, or None when the pair is supported. ``server_version`` None: the server
    reports none (0.1.0 and earlier)."""
    node = parse_version(node_version)
    if server_version is None:
        return (
            f"this node is aether {node_version} but its server reports no version "
            "(0.1.0 or older): servers upgrade first, so upgrade the servers "
            "(docs/operations.md, Upgrades)"
        )
    server = parse_version(server_version)
    if node is None or server is None:
        return None  # a development build: nothing to compare
    if node[:2] > server[:2]:
        return (
            f"this node is aether {node_version}, newer than its server's "
            f"{server_version}: servers upgrade first (docs/operations.md, Upgrades)"
        )
    if node[0] != server[0] or server[1] - node[1] > 1:
        return (
            f"this node is aether {node_version}, more than one minor version behind "
            f"its server's {server_version}: upgrade this node (docs/operations.md, Upgrades)"
        )
    return None
