"""``aether doctor``: check that this host has what an Aether server or node needs.

One line per check (ok, warn, fail, skip) and, under each failure, what to do;
``--format json`` gives ``{"ok": bool, "checks": [...]}``. Exit 0 when nothing
fails (warnings included), 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from aether.cli.output import CliError, emit

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    from aether.ops.doctor import DoctorOptions, failed, render, run_checks
    from aether.server.config import ConfigError, load_config

    overrides = {
        k: v
        for k, v in {
            "data_dir": args.data_dir,
            "host": args.host,
            "port": args.port,
            "node_port": args.node_port,
            "tls_cert": args.tls_cert,
            "tls_key": args.tls_key,
        }.items()
        if v is not None
    }
    try:
        settings = load_config(Path(args.config) if args.config else None, overrides)
    except ConfigError as exc:
        raise CliError(str(exc), kind="usage", code="invalid_config") from None
    servers = _servers(args.server)
    options = DoctorOptions(
        settings=settings,
        roles=("server", "node") if args.role == "all" else (args.role,),
        router_host=args.router_host,
        router_port=args.router_port,
        servers=servers,
        server_tls=_server_tls(servers),
        skip=tuple(args.skip),
    )
    checks = run_checks(options)
    bad = failed(checks)
    emit(args, {"ok": not bad, "checks": [c.as_dict() for c in checks]}, render(checks))
    return 1 if bad else 0


def _servers(flag: str | None) -> tuple[str, ...]:
    """The servers to compare clocks with: --server, AETHER_SERVER or the login session
    (none is fine: the clock check is skipped)."""
    from aether.cli.session import load_session

    try:
        url = load_session(flag or os.environ.get("AETHER_SERVER") or None).server
    except CliError:
        return ()
    return tuple(u.strip() for u in url.split(",") if u.strip())


def _server_tls(servers: tuple[str, ...]) -> object:
    from aether.cli.session import ca_context

    try:
        return ca_context(",".join(servers))
    except CliError:
        return None
