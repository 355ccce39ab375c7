"""``aether server`` and ``aether node``: the long-running processes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aether.cli.output import CliError

if TYPE_CHECKING:
    from aether.node.router_tls import TlsOptions

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    if args.command == "server":
        return _server(args)
    return _node(args)


def _server(args: argparse.Namespace) -> int:
    from aether.server.config import ConfigError, effective_config, load_config, missing_files

    overrides = {
        k: v
        for k, v in {
            "data_dir": args.data_dir,
            "host": args.host,
            "port": args.port,
            "public_url": args.public_url,
            "node_port": args.node_port,
            "tls_cert": args.tls_cert,
            "tls_key": args.tls_key,
        }.items()
        if v is not None
    }
    config = Path(args.config) if getattr(args, "config", None) else None
    try:
        settings = load_config(config, overrides)
    except ConfigError as exc:
        raise CliError(str(exc), kind="usage", code="invalid_config") from None
    if getattr(args, "check", False):  # a dry run: the effective settings, nothing started
        print(f"# {args.config or 'environment'}: valid; effective settings (secrets redacted)")
        print(effective_config(settings), end="")
        for missing in missing_files(settings):
            print(f"aether: warning: no such file yet, {missing}", file=sys.stderr)
        return 0
    from aether.server.main import serve

    serve(settings)
    return 0


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--label takes KEY=VALUE, got {pair!r}", kind="usage")
        labels[key] = value
    return labels


def _router_tls(args: argparse.Namespace) -> TlsOptions | None:
    """The router's HTTPS options from ``--https-port``, ``--tls-dir``, ``--https-host``,
    ``--https-redirect``."""
    from aether.node.router_tls import TlsOptions

    if args.https_port is None and args.tls_dir is None:
        if args.https_redirect or args.https_host:
            raise CliError(
                "--https-redirect and --https-host need --https-port and --tls-dir", kind="usage"
            )
        return None
    if args.https_port is None or args.tls_dir is None:
        raise CliError(
            "HTTPS needs both --https-port PORT and --tls-dir DIR "
            "(DIR: HOST.crt + HOST.key per host name, optionally default.crt/default.key)",
            kind="usage",
        )
    directory = Path(args.tls_dir).resolve()
    if not directory.is_dir():
        raise CliError(f"--tls-dir {args.tls_dir}: not a directory", kind="usage")
    if args.https_port == args.router_port:
        raise CliError("--https-port must differ from --router-port", kind="usage")
    return TlsOptions(
        directory=directory,
        port=args.https_port,
        host=args.https_host,
        redirect=args.https_redirect,
    )


def _node(args: argparse.Namespace) -> int:
    from aether.node.daemon import CREDENTIAL_FILE, CredentialError, NodeDaemon, NodeOptions

    # the node's children (instances, sandboxes) must not inherit the join token
    token = args.join_token or os.environ.pop("AETHER_JOIN_TOKEN", None)
    if token is None and args.join_token_file:
        token = Path(args.join_token_file).read_text().strip()
    data_dir = Path(args.data_dir).resolve()
    if not token and not (data_dir / CREDENTIAL_FILE).is_file():
        raise CliError(
            "a join token is needed to join: --join-token, --join-token-file or "
            "AETHER_JOIN_TOKEN (the server wrote one to DATA_DIR/join.token; a cluster admin "
            "creates more with `aether tokens join`)",
            kind="usage",
        )
    isolation = args.isolation or os.environ.get("AETHER_NODE_ISOLATION") or "bwrap"
    if isolation not in ("bwrap", "none"):
        raise CliError(f"AETHER_NODE_ISOLATION={isolation!r}: expected bwrap or none", kind="usage")
    options = NodeOptions(
        server=args.server,
        join_token=token or None,
        data_dir=data_dir,
        router_port=args.router_port,
        router_host=args.router_host,
        router_tls=_router_tls(args),
        advertise_host=args.advertise_host,
        node_id=args.id,
        labels=_labels(args.label),
        isolation=isolation,
        server_ca=Path(args.server_ca).resolve() if args.server_ca else None,
    )

    async def main() -> None:
        daemon = NodeDaemon(options)
        task = asyncio.create_task(daemon.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        if options.router_tls is not None:  # renewed certificates: read them now
            loop.add_signal_handler(signal.SIGHUP, daemon.router.reload_certificates)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    except CredentialError as exc:
        raise CliError(str(exc), kind="config", code="node_credential") from None
    return 0
