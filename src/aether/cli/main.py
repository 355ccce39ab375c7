"""The ``aether`` command. Parsing is cheap; each command's module is imported lazily."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["EXIT", "main"]

EXIT = {"ok": 0, "usage": 2, "config": 10, "internal": 20, "io": 30, "network": 40}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"aether: error: {message}\n")
        raise SystemExit(EXIT["usage"])


def _common(parser: argparse.ArgumentParser, *, fmt: bool = True) -> None:
    if fmt:
        parser.add_argument("--format", choices=["text", "json"], default="text")
    parser.add_argument("--server", help="API URL (default: the session from `aether login`)")
    parser.add_argument("--token", help="API token (default: the session)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aether",
        description="Run services on your own machines: deploy, schedule, serve, heal.",
    )
    parser.add_argument("--log-level", default="warning", help="debug, info, warning, error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("up", help="start a local cluster (one server, N nodes) in the foreground")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--data-dir", default=None, help="default ~/.local/share/aether/up")
    p.add_argument("--port", type=int, default=7070)
    p.add_argument("--router-port", type=int, default=8080, help="first node's router port")
    p.add_argument("--demo", action="store_true", help="deploy examples/hello-python")

    p = sub.add_parser("server", help="run an API server (and leader, when elected)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--public-url", default=None)

    p = sub.add_parser("node", help="run a node daemon on this machine")
    p.add_argument("--server", required=True)
    p.add_argument("--join-token", default=None, help="or AETHER_JOIN_TOKEN")
    p.add_argument("--join-token-file", default=None)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--router-port", type=int, default=8080)
    p.add_argument("--router-host", default="127.0.0.1")
    p.add_argument("--advertise-host", default="127.0.0.1")
    p.add_argument("--id", default=None, help="node id (default: kept in the data dir)")
    p.add_argument("--label", action="append", default=[], help="KEY=VALUE, repeatable")

    p = sub.add_parser("login", help="save the server URL and token for later commands")
    p.add_argument("--server", required=True)
    p.add_argument("--token", default=None, help="or AETHER_TOKEN, or stdin with --token -")
    p.add_argument("--format", choices=["text", "json"], default="text")

    p = sub.add_parser("deploy", help="pack, upload and deploy the app in PATH")
    p.add_argument("path", nargs="?", default=".")
    p.add_argument("--app", default=None, help="app name (default: aether.toml's name)")
    p.add_argument("--instances", type=int, default=None)
    p.add_argument("--no-wait", action="store_true")
    p.add_argument("--timeout", type=float, default=300.0)
    _common(p)

    p = sub.add_parser("status", help="the cluster: leader, nodes, apps")
    _common(p)
    p = sub.add_parser("apps", help="list apps")
    _common(p)
    p = sub.add_parser("nodes", help="list nodes")
    _common(p)

    p = sub.add_parser("scale", help="set the instance count: APP=N")
    p.add_argument("target", metavar="APP=N")
    _common(p)

    p = sub.add_parser("logs", help="show an app's logs")
    p.add_argument("app")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--tail", type=int, default=200)
    _common(p, fmt=False)

    p = sub.add_parser("rollback", help="deploy an earlier version again")
    p.add_argument("app")
    p.add_argument("--to", type=int, default=None, metavar="VERSION")
    p.add_argument("--no-wait", action="store_true")
    p.add_argument("--timeout", type=float, default=300.0)
    _common(p)

    p = sub.add_parser("deployments", help="an app's deployments, newest first")
    p.add_argument("app")
    _common(p)
    return parser


_MODULES = {
    "up": "up",
    "server": "daemons",
    "node": "daemons",
    "login": "session_cmds",
    "deploy": "deploy",
    "status": "views",
    "apps": "views",
    "nodes": "views",
    "deployments": "views",
    "scale": "actions",
    "rollback": "actions",
    "logs": "actions",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT["usage"]
    from aether.cli.output import configure_logging, run_command

    configure_logging(args.log_level)
    module = importlib.import_module(f"aether.cli.commands.{_MODULES[args.command]}")
    return run_command(module, args)


if __name__ == "__main__":
    sys.exit(main())
