"""``aether backup create|restore``: archive a server's state, records and artifacts."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from aether.cli.output import CliError, emit

__all__ = ["run"]


def _up_layout(data_dir: Path) -> dict[str, Any] | None:
    """The ``up.json`` ``aether up`` wrote, for its data dir or its server's data dir."""
    from aether.cli.commands.up import LAYOUT

    for path in (data_dir / LAYOUT, data_dir.parent / LAYOUT):
        try:
            layout = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(layout, dict) and (
            path.parent == data_dir or layout.get("server_data_dir") == str(data_dir)
        ):
            return layout
    return None


def _settings(args: argparse.Namespace, *, restoring: bool = False) -> Any:
    from aether.server.config import ConfigError, load_config

    if not args.data_dir and not args.config:
        raise CliError("say which server: --data-dir DIR or --config FILE", kind="usage")
    overrides: dict[str, Any] = {"data_dir": Path(args.data_dir).resolve()} if args.data_dir else {}
    layout = _up_layout(overrides["data_dir"]) if args.data_dir and not args.config else None
    if layout is not None and layout.get("state_url"):
        if restoring:  # the servers would go on reading etcd, not what the restore writes
            raise CliError(
                f"{args.data_dir} belongs to an `aether up --ha` cluster, whose state lives in "
                f"etcd ({layout['state_url']}): a restore here would not be read. Restore "
                "into a new HA cluster with: aether up --ha --data-dir NEW --restore ARCHIVE",
                kind="usage",
                code="restore_refused",
            )
        overrides["state_url"] = layout["state_url"]
    if layout is not None and layout.get("server_data_dir"):
        overrides["data_dir"] = Path(layout["server_data_dir"])
    try:
        return load_config(Path(args.config) if args.config else None, overrides)
    except ConfigError as exc:
        raise CliError(str(exc), kind="usage", code="invalid_config") from None


def _admin_token(args: argparse.Namespace, data_dir: Path) -> str | None:
    if args.token or os.environ.get("AETHER_TOKEN"):
        return str(args.token or os.environ["AETHER_TOKEN"])
    try:
        return (data_dir / "admin.token").read_text().strip()
    except OSError:
        return None


async def _create(args: argparse.Namespace) -> int:
    from aether.backup.archive import BackupError, create_backup
    from aether.client import ApiClient

    settings = _settings(args)
    layout = _up_layout(Path(args.data_dir).resolve()) if args.data_dir else None
    server = args.server or (layout["servers"][0] if layout else settings.api_url())

    async def fetch_state(dest: Path) -> None:
        token = _admin_token(args, settings.data_dir.resolve())
        from aether.cli.session import ca_context

        async with ApiClient(server, token, verify=ca_context(server)) as client:
            await client.backup_state(dest)

    try:
        manifest = await create_backup(
            settings,
            Path(args.out),
            fetch_state=fetch_state,
            artifacts=not getattr(args, "no_artifacts", False),
        )
    except BackupError as exc:
        raise CliError(str(exc), kind="io", code="backup_failed") from None
    parts = manifest["parts"]
    summary = ", ".join(
        f"{name}: {info['engine']}"
        + (f" ({len(info['files'])} files)" if name in ("artifacts", "blobs") else "")
        + (f" ({info['keys']} keys)" if "keys" in info else "")
        for name, info in parts.items()
    )
    emit(
        args,
        {"out": str(Path(args.out).resolve()), "manifest": manifest},
        f"wrote {args.out}: {summary}",
    )
    return 0


async def _restore(args: argparse.Namespace) -> int:
    from aether.backup.archive import BackupError, restore_backup

    settings = _settings(args, restoring=True)
    try:
        summary = await restore_backup(Path(args.archive), settings, force=args.force)
    except BackupError as exc:
        raise CliError(str(exc), kind="io", code="restore_failed") from None
    lines = [f"restored {args.archive} (taken {summary['backup_created_at']}) into:"]
    lines += [
        f"  {name}: {info.get('path') or info.get('url') or info.get('engine') or ''}".rstrip()
        + (f" ({info['keys']} keys)" if "keys" in info else "")
        + (
            f" ({info['uploaded']} uploaded, {info['duplicates']} already there)"
            if "uploaded" in info
            else ""
        )
        for name, info in summary["parts"].items()
    ]
    lines += [f"next: {step}" for step in summary["next_steps"]]
    emit(args, summary, "\n".join(lines))
    return 0


def run(args: argparse.Namespace) -> Any:
    if args.backup_command == "create":
        return _create(args)
    return _restore(args)
