"""The ``aether`` command. Parsing is cheap; each command's module is imported lazily."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """Flags are matched whole (``--api-key X`` is not ``--api-key-stdin``), and a
    refusal names unknown flags but never echoes values: one may be a secret."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):  # name the flags, never echo values (a secret?)
            flags = [a for a in message.removeprefix(prefix).split() if a.startswith("-")]
            message = prefix + (" ".join(flags) or "(values not shown)")
        self.print_usage(sys.stderr)
        sys.stderr.write(f"aether: error: {message}\n")
        from aether.cli.output import EXIT  # lazily: --help stays fast

        raise SystemExit(EXIT["usage"])


class _Commands:
    """The top-level commands. Only those ``wanted`` get their arguments built: the
    others are a name and a help line, all that ``aether --help`` lists. Building every
    command's arguments took ~55 ms of each run; one command's takes ~1 ms."""

    def __init__(
        self, sub: argparse._SubParsersAction[_Parser], wanted: Callable[[str], bool]
    ) -> None:
        self._sub = sub
        self._wanted = wanted

    def add(self, name: str, **kwargs: Any) -> _Parser | None:
        """The command's parser to fill in, or None when it is not wanted this run."""
        if self._wanted(name):
            return self._sub.add_parser(name, **kwargs)
        self._sub.add_parser(name, add_help=False, **kwargs)
        return None


def _common(parser: argparse.ArgumentParser, *, fmt: bool = True) -> None:
    if fmt:
        parser.add_argument("--format", choices=["text", "json"], default="text")
    parser.add_argument(
        "--server", help="API URL, or URL,URL,... to fail over (default: the login session)"
    )
    parser.add_argument("--token", help="API token (default: the session)")


def _plugin_parsers(sub: _Commands) -> None:
    if p := sub.add("plugins", help="the cluster's policy plugins (WebAssembly risk/guard rules)"):
        plugins_sub = p.add_subparsers(
            dest="plugins_command", metavar="SUBCOMMAND", parser_class=_Parser
        )
        plugins_sub.required = True
        q = plugins_sub.add_parser("add", help="upload FILE (.wasm) as a plugin, or a new version")
        q.add_argument("file", help="the compiled module (.wasm)")
        q.add_argument("--name", required=True)
        q.add_argument("--kind", required=True, choices=["risk", "guard"])
        q.add_argument("--version", default="1")
        q.add_argument("--fuel", type=int, default=None, help="instructions per evaluation")
        q.add_argument("--memory-bytes", type=int, default=None, help="linear memory, at most")
        q.add_argument("--deadline-ms", type=int, default=None, help="wall clock per evaluation")
        _common(q)
        q = plugins_sub.add_parser("ls", help="the plugins, their versions and limits")
        _common(q)
        q = plugins_sub.add_parser("rm", help="remove the plugin NAME")
        q.add_argument("name")
        _common(q)


def _secrets_parsers(sub: _Commands) -> None:
    if p := sub.add(
        "secrets",
        help="the tenant's named secrets (apps' env and files, http tools' headers): "
        "set, ls, rm, rotate-key",
    ):
        secrets_sub = p.add_subparsers(
            dest="secrets_command", metavar="SUBCOMMAND", parser_class=_Parser
        )
        secrets_sub.required = True
        q = secrets_sub.add_parser(
            "set", help="set a secret: --value, --from-file or stdin (stored encrypted)"
        )
        q.add_argument("name", help="letters, digits, '.', '_', '-' (up to 63)")
        q.add_argument(
            "--value", default=None, help="the value (lands in shell history: prefer stdin)"
        )
        q.add_argument("--from-file", default=None, metavar="F", help="read the value from file F")
        _common(q)
        q = secrets_sub.add_parser(
            "ls", help="the tenant's secrets: names, timestamps and the apps using each"
        )
        _common(q)
        q = secrets_sub.add_parser("rm", help="remove a secret")
        q.add_argument("name")
        _common(q)
        q = secrets_sub.add_parser(
            "rotate-key",
            help="replace the key-encryption key and re-wrap every secret (cluster admin)",
        )
        _common(q)


def _slice_parsers(sub: _Commands) -> None:
    if p := sub.add("slice", help="the tenant's slices: ls, get, call an entry point"):
        slice_sub = p.add_subparsers(
            dest="slice_command", metavar="SUBCOMMAND", parser_class=_Parser
        )
        slice_sub.required = True
        q = slice_sub.add_parser("ls", help="the slices: entry points, ACTIVE instances")
        _common(q)
        q = slice_sub.add_parser("get", help="a slice's entry points (with schemas), instances")
        q.add_argument("slice")
        _common(q)
        q = slice_sub.add_parser("call", help="call an entry point on one ACTIVE instance")
        q.add_argument("slice")
        q.add_argument("entry")
        q.add_argument(
            "--json",
            default=None,
            metavar="JSON",
            help="the arguments: an object (keyword) or an array (positional)",
        )
        q.add_argument(
            "--timeout", type=float, default=None, help="seconds to wait (default 30, max 300)"
        )
        _common(q)


def _blueprint_parsers(sub: _Commands) -> None:
    if p := sub.add(
        "blueprint", help="blueprint files: several apps' instance counts applied in one go"
    ):
        bp_sub = p.add_subparsers(
            dest="blueprint_command", metavar="SUBCOMMAND", parser_class=_Parser
        )
        bp_sub.required = True
        q = bp_sub.add_parser("apply", help="apply a blueprint file (TOML, YAML or JSON)")
        q.add_argument("file", metavar="FILE")
        q.add_argument("--name", default=None, help="the blueprint's name if the file has none")
        _common(q)
        q = bp_sub.add_parser("ls", help="the applied blueprint files")
        _common(q)
        q = bp_sub.add_parser("get", help="a blueprint file and what its apps run now")
        q.add_argument("name")
        _common(q)
        q = bp_sub.add_parser("rm", help="forget a blueprint file (its apps keep running)")
        q.add_argument("name")
        q.add_argument(
            "--scale-to-zero", action="store_true", help="also scale its apps to 0 instances"
        )
        _common(q)


def command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs: its first word that is not a global option or a
    global option's value (None for ``aether``, ``aether --help``)."""
    words = iter(argv)
    for word in words:
        if word in _GLOBAL_VALUED:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


#: The global options that take a value as the next word.
_GLOBAL_VALUED = frozenset({"--log-level", "--log-format"})


def build_parser(command: str | None = None, *, every: bool = True) -> argparse.ArgumentParser:
    """The parser of every command, or (``every=False``) of ``command`` alone: the
    other commands are listed but have no arguments."""
    parser = _Parser(
        prog="aether",
        description="Run services on your own machines: deploy, schedule, serve, heal.",
    )
    parser.add_argument("--log-level", default=None, help="debug, info, warning (default), error")
    parser.add_argument(
        "--log-format",
        choices=["auto", "text", "json"],
        default=None,
        help="logs on stderr: text, json lines, or auto (text on a terminal, else json)",
    )
    sub = _Commands(
        parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser),
        lambda name: every or name == command,
    )

    if p := sub.add("up", help="start a local cluster (servers, N nodes) in the foreground"):
        p.add_argument("--nodes", type=int, default=2)
        p.add_argument("--data-dir", default=None, help="default ~/.local/share/aether/up")
        p.add_argument("--port", type=int, default=7070)
        p.add_argument("--router-port", type=int, default=8080, help="first node's router port")
        p.add_argument("--demo", action="store_true", help="deploy examples/hello-python")
        p.add_argument(
            "--ha", action="store_true", help="three etcd members and three servers (PORT..PORT+2)"
        )
        p.add_argument(
            "--tls",
            action="store_true",
            help="serve the API over HTTPS with a certificate from the cluster CA made here",
        )
        p.add_argument(
            "--etcd-port", type=int, default=2379, help="with --ha: first of 6 etcd ports"
        )
        p.add_argument(
            "--restore",
            default=None,
            metavar="ARCHIVE",
            help="restore a backup into the new cluster's stores (etcd with --ha) first",
        )

    if p := sub.add("server", help="run an API server (and leader, when elected)"):
        p.add_argument(
            "--config", default=None, metavar="FILE", help="TOML settings (AETHER_* env overrides)"
        )
        p.add_argument("--data-dir", default=None)
        p.add_argument("--host", default=None)
        p.add_argument("--port", type=int, default=None)
        p.add_argument("--public-url", default=None)
        p.add_argument(
            "--node-port",
            type=int,
            default=None,
            help="where nodes call, mutual TLS only (AETHER_NODE_PORT; default 0: any free port)",
        )
        p.add_argument("--tls-cert", default=None, help="serve the API over HTTPS (PEM)")
        p.add_argument("--tls-key", default=None, help="the --tls-cert's private key (PEM)")
        p.add_argument(
            "--check",
            action="store_true",
            help="check the configuration and print it (secrets redacted); start nothing. "
            "Exit 0: valid, 2: not",
        )

    if p := sub.add("node", help="run a node daemon on this machine"):
        p.add_argument("--server", required=True, help="API URL; several: URL,URL,... (failover)")
        p.add_argument("--join-token", default=None, help="or AETHER_JOIN_TOKEN")
        p.add_argument("--join-token-file", default=None)
        p.add_argument("--data-dir", required=True)
        p.add_argument("--router-port", type=int, default=8080)
        p.add_argument("--router-host", default="127.0.0.1")
        p.add_argument(
            "--https-port",
            type=int,
            default=None,
            help="the router serves HTTPS on this port too (with --tls-dir)",
        )
        p.add_argument(
            "--https-host",
            default=None,
            help="the address HTTPS listens on (default: --router-host's), e.g. 0.0.0.0 "
            "while plain HTTP stays on 127.0.0.1",
        )
        p.add_argument(
            "--tls-dir",
            default=None,
            metavar="DIR",
            help="the router's certificates: HOST.crt + HOST.key (PEM) per host name, "
            "optionally default.crt/default.key; re-read when they change or on SIGHUP",
        )
        p.add_argument(
            "--https-redirect",
            action="store_true",
            help="plain HTTP requests for a host name with a certificate get a 308 to HTTPS",
        )
        p.add_argument("--advertise-host", default="127.0.0.1")
        p.add_argument(
            "--server-ca",
            default=None,
            metavar="FILE",
            help="the CA (PEM) an https --server is verified by when joining (default: system's)",
        )
        p.add_argument("--id", default=None, help="node id (default: kept in the data dir)")
        p.add_argument("--label", action="append", default=[], help="KEY=VALUE, repeatable")
        p.add_argument(
            "--isolation",
            choices=["bwrap", "none"],
            default=None,
            help="how app instances run: bwrap sandboxes (default), or none: plain processes of "
            "the node, for trusted single-tenant setups only (or AETHER_NODE_ISOLATION)",
        )

    if p := sub.add(
        "doctor", help="check this host for what a server or node needs (ok/warn/fail + fixes)"
    ):
        p.add_argument(
            "--role",
            choices=["server", "node", "all"],
            default="all",
            help="which role's needs to check (default: all)",
        )
        p.add_argument(
            "--config", default=None, metavar="FILE", help="the server's TOML settings to check"
        )
        p.add_argument("--data-dir", default=None, help="default: AETHER_DATA_DIR or aether-data")
        p.add_argument("--host", default=None, help="the API's address (default: AETHER_HOST)")
        p.add_argument("--port", type=int, default=None, help="the API port (default: 7070)")
        p.add_argument("--node-port", type=int, default=None, help="the node port (mutual TLS)")
        p.add_argument("--router-host", default="127.0.0.1", help="the node router's address")
        p.add_argument("--router-port", type=int, default=8080, help="the node router's port")
        p.add_argument("--tls-cert", default=None, help="the API certificate (PEM) to check")
        p.add_argument("--tls-key", default=None, help="its private key (PEM)")
        p.add_argument(
            "--skip",
            action="append",
            default=[],
            metavar="CHECK",
            help="leave out a check by name (e.g. kvm, criu, clock); repeatable",
        )
        p.add_argument("--format", choices=["text", "json"], default="text")
        p.add_argument(
            "--server", default=None, help="servers to compare clocks with (default: the session)"
        )

    if p := sub.add(
        "install", help="render systemd units, configuration and a hardening checklist"
    ):
        p.add_argument("--profile", required=True, choices=["user", "pro", "enterprise"])
        p.add_argument("--out", default=None, metavar="DIR", help="write the rendering here")
        p.add_argument(
            "--apply", action="store_true", help="install one machine's files (see --root)"
        )
        p.add_argument("--machine", default=None, help="with --apply: which machine this is")
        p.add_argument("--root", default=None, metavar="DIR", help="install below DIR, not /")
        p.add_argument(
            "--create-user", action="store_true", help="with --apply: create the service user"
        )
        p.add_argument("--force", action="store_true", help="replace files that differ")
        p.add_argument("--aether-bin", default=None, help="the units' aether (default: this one)")
        p.add_argument("--user", default=None, help="the server's user (default aether)")
        p.add_argument("--node-user", default=None, help="the node's user (default root)")
        p.add_argument("--data-dir", default=None, help="default /var/lib/aether")
        p.add_argument("--node-data-dir", default=None, help="default /var/lib/aether-node")
        p.add_argument("--config-dir", default=None, help="default /etc/aether")
        p.add_argument("--port", type=int, default=None, help="the API's (default 7070)")
        p.add_argument("--node-port", type=int, default=None, help="default 7071")
        p.add_argument("--router-port", type=int, default=None, help="default 8080")
        p.add_argument("--https-port", type=int, default=None, help="the router's, default 8443")
        p.add_argument("--router-host", default=None, help="default 0.0.0.0 (user: 127.0.0.1)")
        p.add_argument("--server-url", default=None, help="user, pro: the API URL")
        p.add_argument("--servers", default=None, help="enterprise: HOST,HOST,HOST")
        p.add_argument("--etcd", default=None, help="enterprise: HOST:PORT,... (default :2379)")
        p.add_argument("--etcd-prefix", default=None, help="default aether")
        p.add_argument("--etcd-ca-file", default=None, help="default CONFIG_DIR/etcd/ca.pem")
        p.add_argument("--postgres", default=None, help="postgresql://USER@HOST:PORT/DB")
        p.add_argument("--s3", default=None, help="s3://BUCKET/PREFIX")
        p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint URL")
        p.add_argument("--format", choices=["text", "json"], default="text")

    if p := sub.add("login", help="save the server URL and token for later commands"):
        p.add_argument("--server", default=None, help="default: the current session's")
        p.add_argument(
            "--rotate", action="store_true", help="replace the session's token with a new one"
        )
        p.add_argument("--token", default=None, help="or AETHER_TOKEN, or stdin with --token -")
        p.add_argument("--user", default=None, help="sign in with this account's password")
        p.add_argument(
            "--password-stdin",
            action="store_true",
            help="with --user: read the password from stdin",
        )
        p.add_argument("--totp", default=None, help="with --user: the code of your authenticator")
        p.add_argument(
            "--sso", action="store_true", help="sign in with the server's OpenID Connect provider"
        )
        p.add_argument(
            "--no-browser", action="store_true", help="with --sso: print the URL, open nothing"
        )
        p.add_argument("--tenant", default=None, help="the tenant to sign in to (if several)")
        p.add_argument(
            "--ca-file",
            default=None,
            metavar="FILE",
            help="the CA (PEM) the https server is verified by; kept for later commands",
        )
        p.add_argument("--format", choices=["text", "json"], default="text")

    if p := sub.add("whoami", help="who the session's token is: account, tenant, role"):
        p.set_defaults(command="whoami")
        _common(p)

    if p := sub.add("users", help="your tenant's members: ls, create, get, set, rm, passwd, totp"):
        users_sub = p.add_subparsers(
            dest="users_command", metavar="SUBCOMMAND", parser_class=_Parser
        )
        users_sub.required = True
        q = users_sub.add_parser("ls", help="the tenant's members and their roles")
        _common(q)
        q = users_sub.add_parser("get", help="one member")
        q.add_argument("name")
        _common(q)
        q = users_sub.add_parser("create", help="add a person or a service account with a role")
        q.add_argument("name", help="a login name: a-z, 0-9, '.', '_', '-'")
        q.add_argument("--role", choices=["admin", "operator", "viewer"], required=True)
        q.add_argument(
            "--service",
            dest="kind",
            action="store_const",
            const="service",
            default="person",
            help="a service account: no password, tokens only (`aether tokens create --user`)",
        )
        q.add_argument("--email", default=None, help="links single sign-on at first sign-in")
        q.add_argument("--display-name", default=None)
        q.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
        q.add_argument(
            "--no-password", action="store_true", help="a person who signs in with single sign-on"
        )
        q.add_argument("--totp", action="store_true", help="enrol a TOTP second factor now")
        _common(q)
        q = users_sub.add_parser(
            "add", help="make an existing account a member of TENANT too (cluster admins)"
        )
        q.add_argument("name")
        q.add_argument("--tenant", required=True)
        q.add_argument("--role", choices=["admin", "operator", "viewer"], required=True)
        _common(q)
        q = users_sub.add_parser("set", help="change a member's role or details")
        q.add_argument("name")
        q.add_argument("--role", choices=["admin", "operator", "viewer"], default=None)
        q.add_argument("--email", default=None)
        q.add_argument("--display-name", default=None)
        q.add_argument("--disable", action="store_true", help="the account may not sign in")
        q.add_argument("--enable", action="store_true")
        _common(q)
        q = users_sub.add_parser("rm", help="take a member out of the tenant")
        q.add_argument("name")
        _common(q)
        q = users_sub.add_parser("passwd", help="set a password (your own: with --current)")
        q.add_argument("name")
        q.add_argument("--password-stdin", action="store_true", help="read the new one from stdin")
        q.add_argument("--current", action="store_true", help="ask for your current password")
        _common(q)
        q = users_sub.add_parser("totp", help="enrol a TOTP second factor (or --off)")
        q.add_argument("name")
        q.add_argument("--off", action="store_true", help="remove it instead (admins)")
        _common(q)

    if p := sub.add("deploy", help="pack, upload and deploy the app in PATH"):
        p.add_argument("path", nargs="?", default=".")
        p.add_argument("--app", default=None, help="app name (default: aether.toml's name)")
        p.add_argument("--instances", type=int, default=None)
        p.add_argument("--no-wait", action="store_true")
        p.add_argument("--timeout", type=float, default=300.0)
        p.add_argument("--dry-run", action="store_true", help="build and pack, upload nothing")
        p.add_argument("--pack-only", action="store_true", help="build and pack, keep the artifact")
        p.add_argument("--out", default=None, help="with --pack-only: where to write the artifact")
        p.add_argument("--no-sbom", action="store_true", help="skip the CycloneDX SBOM")
        p.add_argument(
            "--full-upload",
            action="store_true",
            help="send the whole artifact instead of only the files the server lacks",
        )
        _common(p)

    if p := sub.add("list", help="list apps (same as `apps`)"):
        _common(p)

    if p := sub.add(
        "events",
        help="a deployment's timeline (DEPLOYMENT id or APP@VERSION), or --follow the cluster's",
    ):
        p.add_argument("deployment", nargs="?")
        p.add_argument(
            "--follow", action="store_true", help="print the cluster event stream as it happens"
        )
        p.add_argument(
            "--type",
            action="append",
            default=[],
            metavar="TYPE",
            help="with --follow: only these event types (repeat, or comma-separated)",
        )
        p.add_argument(
            "--target",
            action="append",
            default=[],
            metavar="NAME",
            help="with --follow: only events about this node, app or leader (repeat)",
        )
        p.add_argument(
            "--limit", type=int, default=0, help="with --follow: stop after N events (0: never)"
        )
        p.add_argument(
            "--since", metavar="EVENT_ID", help="with --follow: resume after this event id"
        )
        _common(p)

    if p := sub.add("promote", help="let a canary rollout waiting for promotion continue"):
        p.add_argument("app")
        _common(p)

    if p := sub.add("gc", help="delete artifacts retention no longer keeps (admin)"):
        p.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")
        _common(p)

    if p := sub.add("task", help="submit, inspect, wait for and cancel tasks"):
        task_sub = p.add_subparsers(dest="task_command", metavar="SUBCOMMAND", parser_class=_Parser)
        task_sub.required = True
        q = task_sub.add_parser(
            "submit", help="queue a task (vm:create, vm:execute, vm:delete, ...)"
        )
        q.add_argument("-type", "--type", dest="type", help="required unless --from-file")
        q.add_argument(
            "--from-file",
            dest="from_file",
            metavar="FILE",
            help="submit many tasks: JSON Lines (one task object per line) or a JSON array; "
            "'-' reads stdin; each 1,000 tasks are queued in one transaction",
        )
        q.add_argument("-name", "--name", dest="name")
        q.add_argument("-vcpus", "--vcpus", dest="vcpus", type=int)
        q.add_argument("-memory", "--memory", dest="memory", type=int, help="MB")
        q.add_argument("-driver", "--driver", dest="driver")
        q.add_argument("-network", "--network", dest="network", action="store_true")
        q.add_argument("-vm-id", "--vm-id", dest="sandbox_id")
        q.add_argument("-cmd", "--cmd", dest="cmd")
        q.add_argument("-args", "--args", dest="args", help="split like a shell would")
        q.add_argument("-app", "--app", dest="app", help="job:run: the app")
        q.add_argument("-payload", "--payload", dest="payload", help="the whole payload as JSON")
        q.add_argument(
            "-secret",
            "--secret",
            dest="secret",
            action="append",
            metavar="ENV=NAME",
            help="job:run, vm:execute: the tenant's secret NAME in $ENV (repeatable; the node "
            "fetches the value, the task shows the name only)",
        )
        q.add_argument("-priority", "--priority", dest="priority", type=int)
        q.add_argument("-queue", "--queue", dest="queue")
        q.add_argument("-max-retry", "--max-retry", dest="max_retry", type=int)
        q.add_argument("-timeout", "--timeout", dest="timeout", type=float, help="seconds")
        q.add_argument("-delay", "--delay", dest="delay", type=float, help="seconds")
        q.add_argument("-idempotency-key", "--idempotency-key", dest="idempotency_key")
        q.add_argument(
            "-wait", "--wait", dest="wait", action="store_true", help="wait for the result"
        )
        _common(q)
        for name, text in (
            ("get", "a task with its state and result"),
            ("cancel", "cancel a pending or running task"),
            ("wait", "wait until a task has finished"),
        ):
            q = task_sub.add_parser(name, help=text)
            q.add_argument("id")
            if name == "wait":
                q.add_argument("--timeout", type=float, default=600.0)
            _common(q)
        q = task_sub.add_parser("list", help="tasks, newest first")
        q.add_argument("--state", default=None)
        q.add_argument("--type", default=None)
        q.add_argument("--queue", default=None)
        q.add_argument("--limit", type=int, default=50)
        _common(q)

    if p := sub.add("vm", help="sandboxes: create, exec, ls, rm"):
        vm_sub = p.add_subparsers(dest="vm_command", metavar="SUBCOMMAND", parser_class=_Parser)
        vm_sub.required = True
        q = vm_sub.add_parser("create", help="create a sandbox and wait until it runs")
        q.add_argument("name")
        q.add_argument("--vcpus", type=int, default=1)
        q.add_argument("--memory", type=int, default=256, help="MB")
        q.add_argument("--driver", default=None, help="bwrap, process or microvm")
        q.add_argument("--network", action="store_true")
        _common(q)
        q = vm_sub.add_parser(
            "exec", help="run a command in a sandbox: aether vm exec ID -- CMD ARGS"
        )
        q.add_argument("id")
        q.add_argument("argv", nargs=argparse.REMAINDER)
        q.add_argument("--timeout", type=float, default=None)
        _common(q)
        q = vm_sub.add_parser("ls", help="sandboxes")
        q.add_argument("--all", action="store_true", help="include deleted ones")
        _common(q)
        q = vm_sub.add_parser("rm", help="delete a sandbox")
        q.add_argument("id")
        _common(q)

    if p := sub.add("backup", help="back up or restore a server's state, records, artifacts"):
        backup_sub = p.add_subparsers(
            dest="backup_command", metavar="SUBCOMMAND", parser_class=_Parser
        )
        backup_sub.required = True
        q = backup_sub.add_parser("create", help="write one .tar.gz with a verified manifest")
        q.add_argument("--data-dir", default=None, help="the server's data directory")
        q.add_argument("--config", default=None, metavar="FILE", help="the server's config file")
        q.add_argument("--out", required=True, metavar="FILE.tar.gz")
        q.add_argument(
            "--no-artifacts",
            action="store_true",
            help="leave the artifacts out (the bucket or directory is backed up by its own tools)",
        )
        _common(q)
        q = backup_sub.add_parser(
            "restore", help="verify an archive and restore it (server stopped)"
        )
        q.add_argument("archive", metavar="FILE.tar.gz")
        q.add_argument("--data-dir", default=None, help="where to restore (must be empty)")
        q.add_argument("--config", default=None, metavar="FILE", help="the target server's config")
        q.add_argument("--force", action="store_true", help="replace what the data dir holds")
        q.add_argument("--format", choices=["text", "json"], default="text")

    if p := sub.add("diag", help="diagnostics: a bundle of logs, config, state for a bug report"):
        diag_sub = p.add_subparsers(dest="diag_command", metavar="SUBCOMMAND", parser_class=_Parser)
        diag_sub.required = True
        q = diag_sub.add_parser(
            "bundle", help="one .tar.gz: server and node logs, config (secrets redacted), state"
        )
        q.add_argument("--since", default="1h", help="logs and events this recent (30m, 1h, 2d)")
        q.add_argument(
            "--nodes", default="all", help="whose parts to include: all, none or N1,N2,..."
        )
        q.add_argument(
            "-o", "--output", default=None, metavar="FILE", help="default: aether-diag-TIME.tar.gz"
        )
        q.add_argument(
            "--wait", type=float, default=None, help="seconds to wait for the nodes' parts"
        )
        _common(q)

    if p := sub.add(
        "shell",
        help="the commands at a prompt (history, completion), or a script: -f FILE, < FILE",
    ):
        p.add_argument(
            "-f", "--file", default=None, metavar="FILE", help="run FILE's commands ('-': stdin)"
        )
        p.add_argument(
            "--keep-going", action="store_true", help="in a script: go on after a failure"
        )
        p.add_argument("--server", help="API URL for every command (default: the session)")
        p.add_argument("--token", help="API token for every command (default: the session)")

    if p := sub.add("completions", help="print a shell completion script"):
        p.add_argument("--shell", choices=["bash", "zsh", "fish"], required=True)

    if p := sub.add("status", help="the cluster: leader, nodes, apps"):
        _common(p)
    if p := sub.add(
        "apps", help="list apps; `apps set APP` changes an app's settings, `apps rm APP` deletes it"
    ):
        _common(p)
        apps_sub = p.add_subparsers(dest="apps_command", metavar="SUBCOMMAND", parser_class=_Parser)
        q = apps_sub.add_parser(
            "set", help="require signed artifacts or build provenance, set retention"
        )
        q.set_defaults(command="apps-set")  # dispatched to the keys module
        q.add_argument("app")
        q.add_argument("--require-signature", action=argparse.BooleanOptionalAction, default=None)
        q.add_argument(
            "--require-provenance",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="refuse deployments of artifacts without a signed provenance statement",
        )
        q.add_argument("--retain", type=int, default=None, metavar="N", help="deployments to keep")
        _common(q)
        q = apps_sub.add_parser(
            "rm", help="delete an app: stop its instances, remove its route and blueprint"
        )
        q.set_defaults(command="apps-rm")
        q.add_argument("app")
        q.add_argument("--force", action="store_true", help="even while a rollout is running")
        _common(q)
    if p := sub.add("nodes", help="list nodes; `nodes revoke NODE` cuts one off"):
        _common(p)
        nodes_sub = p.add_subparsers(
            dest="nodes_command", metavar="SUBCOMMAND", parser_class=_Parser
        )
        q = nodes_sub.add_parser(
            "revoke", help="end NODE's credential; it may not join again until allowed"
        )
        q.set_defaults(command="nodes-revoke")
        q.add_argument("node")
        _common(q)
        q = nodes_sub.add_parser("allow", help="let a revoked NODE join again")
        q.set_defaults(command="nodes-allow")
        q.add_argument("node")
        _common(q)
    if p := sub.add("tokens", help="API tokens: create (join tokens for nodes), list, revoke"):
        tokens_sub = p.add_subparsers(
            dest="tokens_command", metavar="SUBCOMMAND", parser_class=_Parser
        )
        tokens_sub.required = True
        q = tokens_sub.add_parser("create", help="print a new token (shown once)")
        q.add_argument(
            "--role",
            choices=["admin", "operator", "viewer", "join"],
            default=None,
            help="join: lets a node join the cluster (cluster admins only); not with --user",
        )
        q.add_argument("--name", default="cli", help="what the token is for")
        q.add_argument("--user", default=None, help="a member (e.g. a service account): its role")
        q.add_argument("--expires", default=None, help="stop working after 30m, 12h, 90d, ...")
        q.add_argument(
            "--uses", type=int, default=None, help="join tokens: how many nodes may join with it"
        )
        _common(q)
        q = tokens_sub.add_parser(
            "join", help="print a new join token for nodes (cluster admins; shown once)"
        )
        q.add_argument("--ttl", default="1h", help="stop working after 30m, 12h, ... (default 1h)")
        q.add_argument("--uses", type=int, default=1, help="how many nodes may join (default 1)")
        q.add_argument("--name", default="join", help="what the token is for")
        _common(q)
        q = tokens_sub.add_parser("list", help="this tenant's tokens")
        _common(q)
        q = tokens_sub.add_parser("revoke", help="revoke a token by id")
        q.add_argument("id")
        _common(q)

    if p := sub.add("ca", help="the cluster CA: show it, rotate it (cluster admins)"):
        ca_sub = p.add_subparsers(dest="ca_command", metavar="SUBCOMMAND", parser_class=_Parser)
        ca_sub.required = True
        q = ca_sub.add_parser("show", help="the CAs trusted now, which one issues")
        _common(q)
        q = ca_sub.add_parser(
            "rotate", help="a new CA; the old one stays trusted for --overlap while nodes renew"
        )
        q.add_argument("--overlap", default="1h", help="how long both are trusted (default 1h)")
        _common(q)

    if p := sub.add("limits", help="a tenant's request rate and quotas, and its use"):
        limits_sub = p.add_subparsers(
            dest="limits_command", metavar="SUBCOMMAND", parser_class=_Parser
        )
        limits_sub.required = True
        q = limits_sub.add_parser("get", help="limits and use of TENANT (default: your own)")
        q.add_argument("tenant", nargs="?", default=None)
        _common(q)
        q = limits_sub.add_parser(
            "set", help="change TENANT's limits (cluster admins); 'default' resets one"
        )
        q.add_argument("tenant")
        for flag, what in (
            ("rate", "requests per minute"),
            ("burst", "requests at once"),
            ("instances", "desired instances over all apps"),
            ("cpu", "cores reserved"),
            ("memory", "MiB reserved"),
            ("tasks", "tasks queued and running"),
            ("sandboxes", "sandboxes"),
            ("artifact-bytes", "bytes of artifacts stored"),
        ):
            q.add_argument(f"--{flag}", metavar="N", help=f"{what} (a number, or 'default')")
        _common(q)
    if p := sub.add("tenants", help="tenants (cluster admin): create, ls, get, rm"):
        tenants_sub = p.add_subparsers(
            dest="tenants_command", metavar="SUBCOMMAND", parser_class=_Parser
        )
        tenants_sub.required = True
        q = tenants_sub.add_parser("create", help="a new tenant; prints its first admin token")
        q.add_argument("name", help="1-63 lower-case letters, digits and '-'")
        q.add_argument("--display-name", default="", help="a name for people")
        q.add_argument("--description", default="", help="what the tenant is for")
        q.add_argument(
            "--no-admin-token", action="store_true", help="do not mint the first admin token"
        )
        _common(q)
        q = tenants_sub.add_parser("ls", help="every tenant and what it holds")
        _common(q)
        q = tenants_sub.add_parser("get", help="one tenant (a tenant admin: its own)")
        q.add_argument("name")
        _common(q)
        q = tenants_sub.add_parser(
            "rm", help="delete a tenant (refused while it runs something, unless --force)"
        )
        q.add_argument("name")
        q.add_argument(
            "--force",
            action="store_true",
            help="stop its apps, tasks and sandboxes and delete everything it owns",
        )
        _common(q)

    if p := sub.add("models", help="model endpoints for AI agents: add, ls, get, rm, test"):
        models_sub = p.add_subparsers(
            dest="models_command", metavar="SUBCOMMAND", parser_class=_Parser
        )
        models_sub.required = True
        q = models_sub.add_parser(
            "add", help="add an OpenAI-compatible model (the key: stdin or AETHER_MODEL_API_KEY)"
        )
        q.add_argument("name", help="model://NAME: a-z, 0-9, '.', '_', '-' (up to 63)")
        q.add_argument("--base-url", required=True, help="the API with its version, e.g. …/v1")
        q.add_argument("--model-id", required=True, help="the provider's name of the model")
        q.add_argument("--context-window", type=int, default=8192, metavar="N", help="tokens")
        q.add_argument(
            "--price-in", type=float, default=0.0, metavar="X", help="per 1k input tokens"
        )
        q.add_argument("--price-out", type=float, default=0.0, metavar="Y", help="per 1k output")
        q.add_argument(
            "--api-key-stdin", action="store_true", help="read the API key from stdin (one line)"
        )
        _common(q)
        q = models_sub.add_parser("ls", help="the tenant's models")
        _common(q)
        q = models_sub.add_parser("get", help="one model")
        q.add_argument("name")
        _common(q)
        q = models_sub.add_parser("rm", help="remove a model (and its stored key)")
        q.add_argument("name")
        _common(q)
        q = models_sub.add_parser("test", help="one tiny chat call: latency, tokens, the reply")
        q.add_argument("name")
        _common(q)
    _secrets_parsers(sub)
    _slice_parsers(sub)
    _blueprint_parsers(sub)
    _agent_policy_parsers(sub)
    _agent_parsers(sub)
    _memory_parsers(sub)
    _run_parsers(sub)
    _plugin_parsers(sub)

    if p := sub.add("metrics", help="live telemetry: nodes and apps, this second"):
        p.add_argument("--watch", action="store_true", help="follow the live stream (Ctrl-C stops)")
        _common(p)
    if p := sub.add("risk", help="each node's risk: status, confidence, root cause, evidence"):
        p.add_argument("node", nargs="?", default=None, help="show this node's recorded history")
        p.add_argument("--limit", type=int, default=20, help="with NODE: assessments to show")
        _common(p)
    if p := sub.add("drill", help="fire drill: inject or end a market crash on a node"):
        drill_sub = p.add_subparsers(
            dest="drill_command", metavar="SUBCOMMAND", parser_class=_Parser
        )
        drill_sub.required = True
        q = drill_sub.add_parser("start", help="a price spike and a rebalance notice for a node")
        q.add_argument("--node", default=None, help="default: the live node with most instances")
        _common(q)
        q = drill_sub.add_parser("stop", help="end the drill; risk is scored without it again")
        q.add_argument("--node", default=None, help="default: every node with a drill running")
        _common(q)
    if p := sub.add("signal", help="record a signal about a node: price, rebalance, capacity"):
        p.add_argument("node")
        p.add_argument("--price", type=float, default=None, help="spot price (> 0)")
        p.add_argument(
            "--rebalance",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="a rebalance notice (--no-rebalance withdraws it)",
        )
        p.add_argument("--capacity", type=float, default=None, metavar="SCORE", help="0..1")
        p.add_argument("--source", default="cli", help="who observed it (default: cli)")
        _common(p)

    if p := sub.add("scale", help="set the instance count: APP=N (or APP N)"):
        p.add_argument("target", metavar="APP=N")
        p.add_argument("count", nargs="?", default=None, metavar="N", help="with APP: the count")
        _common(p)

    if p := sub.add("logs", help="show an app's logs"):
        p.add_argument("app", nargs="?", default=None)
        p.add_argument("--app", dest="app_option", default=None, metavar="NAME")
        p.add_argument("-f", "--follow", action="store_true")
        p.add_argument("--tail", type=int, default=200)
        _common(p)

    if p := sub.add("rollback", help="deploy an earlier version again"):
        p.add_argument("app")
        p.add_argument("--to", type=int, default=None, metavar="VERSION")
        p.add_argument("--no-wait", action="store_true")
        p.add_argument("--timeout", type=float, default=300.0)
        _common(p)

    if p := sub.add(
        "alerts", help="alerts (pending, firing, resolved) and silences: ls, silence, unsilence"
    ):
        p.add_argument("action", choices=["ls", "silence", "silences", "unsilence"])
        p.add_argument("rule", nargs="?", default=None, help="silence: the rule; unsilence: the id")
        p.add_argument("--state", choices=["pending", "firing", "resolved"], default=None)
        p.add_argument("--match", action="append", default=None, help="silence: KEY=VALUE")
        p.add_argument("--for", dest="duration", default="1h", help="silence: 30m, 1h, 2d")
        p.add_argument("--comment", default="", help="silence: why")
        _common(p)

    if p := sub.add("decisions", help="what the controller decided and why, newest first"):
        group = p.add_mutually_exclusive_group()
        group.add_argument("--app", default=None, help="decisions about this app")
        group.add_argument("--node", default=None, help="decisions about this node")
        p.add_argument("--layer", type=int, choices=[1, 2, 3], default=None)
        p.add_argument(
            "--kind",
            choices=["scale", "drain", "undrain", "advice", "rebalance", "agent"],
            default=None,
        )
        p.add_argument("--limit", type=int, default=50)
        _common(p)

    if p := sub.add(
        "audit", help="who did what, newest first; `aether audit verify` checks the hash chain"
    ):
        p.add_argument("check", nargs="?", choices=["verify"], help="verify: walk the hash chain")
        p.add_argument(
            "-f", "--follow", action="store_true", help="then print new events as they come"
        )
        p.add_argument("--actor", default=None, help="a token id, node id, or controller")
        p.add_argument("--action", default=None, help='e.g. "POST /apps/{app}/scale"')
        p.add_argument("--target", default=None, help="e.g. apps/web (and what is under it)")
        p.add_argument("--outcome", choices=["ok", "refused", "failed"], default=None)
        p.add_argument("--since", default=None, help="30m, 2h, 7d, an ISO time or epoch seconds")
        p.add_argument("--limit", type=int, default=50)
        p.add_argument("--format", choices=["text", "json", "jsonl"], default="text")
        _common(p, fmt=False)

    if p := sub.add("migrate", help="move an instance to another node (state and all)"):
        p.add_argument("instance", help="its key, or APP/N (see `aether status`, GET /instances)")
        p.add_argument("--to", default=None, metavar="NODE", help="default: any other node")
        p.add_argument("--no-wait", action="store_true", help="return once it is asked")
        p.add_argument("--timeout", type=float, default=300.0)
        _common(p)
    if p := sub.add("migrations", help="migrations, newest first"):
        p.add_argument("app", nargs="?", default=None)
        p.add_argument("--limit", type=int, default=20)
        _common(p)
    if p := sub.add("drain", help="take no new instances on NODE and move its instances off"):
        p.add_argument("node")
        p.add_argument("--wait", action="store_true", help="until no instance serves on it")
        p.add_argument("--timeout", type=float, default=300.0)
        _common(p)
    if p := sub.add("undrain", help="let NODE take instances again"):
        p.add_argument("node")
        _common(p)
    if p := sub.add("rebalance", help="spread instances evenly over the nodes, one at a time"):
        p.add_argument("app", nargs="?", default=None, help="default: every app of yours")
        p.add_argument("--no-wait", action="store_true", help="return once the first move started")
        p.add_argument("--timeout", type=float, default=600.0)
        _common(p)
    if p := sub.add(
        "snapshots",
        help="snapshots of stateful instances: [ls] [APP] (newest first), restore APP DIGEST",
    ):
        p.add_argument(
            "words",
            nargs="*",
            metavar="[ls] [APP] | restore APP DIGEST",
            help="list (an app's) snapshots, or replace APP's instance by one restored from "
            "DIGEST (a unique prefix will do)",
        )
        p.add_argument("--limit", type=int, default=20)
        p.add_argument(
            "--instance", type=int, default=None, metavar="N", help="restore: instance N"
        )
        p.add_argument("--no-wait", action="store_true", help="restore: return once it is asked")
        p.add_argument("--timeout", type=float, default=300.0)
        _common(p)

    if p := sub.add("deployments", help="an app's deployments, newest first"):
        p.add_argument("app")
        _common(p)

    if p := sub.add("keys", help="Ed25519 signing keys: generate, register, list, rm"):
        keys_sub = p.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", parser_class=_Parser)
        keys_sub.required = True
        q = keys_sub.add_parser("generate", help="write a new private key, print its public key")
        q.add_argument("--out", default=None, help="default ~/.config/aether/signing.key")
        q.add_argument("--force", action="store_true", help="overwrite an existing key file")
        q.add_argument("--format", choices=["text", "json"], default="text")
        q = keys_sub.add_parser("register", help="allow a public key to sign APP's artifacts")
        q.add_argument("app")
        group = q.add_mutually_exclusive_group()
        group.add_argument(
            "--key", default=None, metavar="PATH", help="a key file (default: yours)"
        )
        group.add_argument("--public-key", default=None, metavar="B64", help="base64 public key")
        q.add_argument("--name", default=None)
        _common(q)
        q = keys_sub.add_parser("list", help="APP's registered public keys")
        q.add_argument("app")
        _common(q)
        q = keys_sub.add_parser("rm", help="remove a registered public key")
        q.add_argument("app")
        q.add_argument("id")
        _common(q)
    if p := sub.add(
        "artifacts", help="stored artifacts: verify (digest, signature, provenance, SBOM)"
    ):
        artifacts_sub = p.add_subparsers(
            dest="artifacts_command", metavar="SUBCOMMAND", parser_class=_Parser
        )
        artifacts_sub.required = True
        q = artifacts_sub.add_parser(
            "verify", help="check a stored artifact's digest, signature, provenance and SBOM"
        )
        q.add_argument("digest", help="sha256:… (or 64 hex digits)")
        _common(q)
        q = artifacts_sub.add_parser("provenance", help="print an artifact's provenance statement")
        q.add_argument("digest")
        _common(q)
    return parser


def _agent_parsers(sub: _Commands) -> None:
    """``aether agents …``."""
    if p := sub.add(
        "agents",
        help="AI agents: ls, get, create, deploy, undeploy, disable, enable, versions, "
        "export, import",
    ):
        agents = p.add_subparsers(dest="agents_command", metavar="SUBCOMMAND", parser_class=_Parser)
        agents.required = True
        q = agents.add_parser("ls", help="the tenant's agents")
        q.add_argument("--status", choices=["created", "deployed", "disabled"], default=None)
        _common(q)
        for name, text in (
            ("get", "one agent: its config in use"),
            ("disable", "stop the agent: no new runs, its replicas withdrawn"),
            ("enable", "enable a disabled agent again (deploy it to serve it)"),
            ("versions", "every version of the agent's config"),
            ("undeploy", "withdraw the agent's replicas"),
        ):
            q = agents.add_parser(name, help=text)
            q.add_argument("id", help="the agent's id (agt_…) or name")
            _common(q)
        q = agents.add_parser(
            "deploy", help="deploy the agent: replicas on nodes, a version pinned"
        )
        q.add_argument("id", metavar="AGENT", help="the agent's id (agt_…) or name")
        q.add_argument("--replicas", type=int, default=None, help="1 to 64 (default 1)")
        q.add_argument(
            "--version", type=int, default=None, help="the version to pin (default: the one in use)"
        )
        _common(q)
        q = agents.add_parser("create", help="create an agent (from a recipe, or from flags)")
        q.add_argument("name", help="a-z, 0-9, '.', '_', '-' (up to 63), unique in the tenant")
        q.add_argument("--recipe", default=None, help="start from this catalog recipe")
        q.add_argument("--model", default=None, help="model://NAME")
        q.add_argument("--tool", action="append", default=None, help="a tool id (repeat)")
        q.add_argument("--policy", action="append", default=None, help="a policy id (repeat)")
        q.add_argument("--system-prompt", default=None)
        q.add_argument(
            "--config", default=None, metavar="JSON", help="e.g. '{\"max_tokens\": 1024}'"
        )
        _common(q)
        q = agents.add_parser("export", help="write the agent as a file (JSON, no secrets)")
        q.add_argument("id")
        q.add_argument("-o", "--output", required=True, metavar="FILE", help="- : stdout")
        _common(q)
        q = agents.add_parser("import", help="create an agent from an agent FILE (- : stdin)")
        q.add_argument("file")
        _common(q)
        q = agents.add_parser("catalog", help="the recipes to start from, or one of them")
        q.add_argument("id", nargs="?", default=None)
        _common(q)


def _agent_policy_parsers(sub: _Commands) -> None:
    """``aether tools …`` and ``aether policies …``."""
    if p := sub.add("tools", help="tools agents may call: ls, get, search, add, rm, sync"):
        tools = p.add_subparsers(dest="tools_command", metavar="SUBCOMMAND", parser_class=_Parser)
        tools.required = True
        _common(tools.add_parser("ls", help="the built-in tools and this tenant's own"))
        q = tools.add_parser("get", help="one tool: its kind, configuration and parameters")
        q.add_argument("id")
        _common(q)
        q = tools.add_parser("search", help="tools whose id or description match QUERY")
        q.add_argument("query")
        _common(q)
        q = tools.add_parser("add", help="add a tool defined in FILE (YAML or JSON; - : stdin)")
        q.add_argument("file")
        _common(q)
        q = tools.add_parser("rm", help="delete one of this tenant's tools")
        q.add_argument("id")
        _common(q)
        q = tools.add_parser("discover", help="the tools an MCP server offers (--add: as yours)")
        where = q.add_mutually_exclusive_group(required=True)
        where.add_argument("--url", default=None, help="an MCP server over streamable HTTP")
        where.add_argument(
            "--command",
            dest="mcp_command",
            default=None,
            metavar="CMD",
            help="a stdio MCP server's command line (run in a sandbox on a node)",
        )
        q.add_argument("--add", action="store_true", help="add the tools the tenant lacks")
        _common(q)
        q = tools.add_parser("sync", help="add or replace the tools of a YAML FILE (if enabled)")
        q.add_argument("file")
        _common(q)

    if p := sub.add(
        "policies", help="agent policies: ls, get, create, set, rm, evaluate, simulate"
    ):
        pols = p.add_subparsers(dest="policies_command", metavar="SUBCOMMAND", parser_class=_Parser)
        pols.required = True
        _common(pols.add_parser("ls", help="default-safe and this tenant's own policies"))
        q = pols.add_parser("get", help="one policy, and its Cedar translation")
        q.add_argument("id")
        _common(q)
        q = pols.add_parser("create", help="create the policy defined in FILE (YAML or JSON)")
        q.add_argument("file")
        _common(q)
        q = pols.add_parser("set", help="change policy ID to the fields of FILE (a new version)")
        q.add_argument("id")
        q.add_argument("file")
        _common(q)
        q = pols.add_parser("rm", help="delete one of this tenant's policies")
        q.add_argument("id")
        _common(q)
        q = pols.add_parser("evaluate", help="what policy ID decides on a call (kept, audited)")
        q.add_argument("id")
        q.add_argument("--tool", required=True, help="the tool's id")
        q.add_argument("--args", default="{}", help="the call's arguments as a JSON object")
        q.add_argument("--agent", default=None, help="decide for this agent (default: you)")
        _common(q)
        q = pols.add_parser(
            "simulate", help="replay policy ID's past decisions under the changed policy of FILE"
        )
        q.add_argument("id")
        q.add_argument("--file", required=True, help="the changed policy (YAML or JSON; - : stdin)")
        q.add_argument("--limit", type=int, default=None, metavar="N", help="the newest N (1000)")
        q.add_argument("--since", default=None, metavar="TIME", help="only decisions since (ISO)")
        _common(q)


def _memory_parsers(sub: _Commands) -> None:
    """``aether memory …``."""
    if p := sub.add("memory", help="agents' memories: add, search, ls, rm"):
        mem = p.add_subparsers(dest="memory_command", metavar="SUBCOMMAND", parser_class=_Parser)
        mem.required = True
        thread = "the thread's own memory (default: the agent's, shared by its threads)"
        q = mem.add_parser("add", help="keep TEXT for agent AGENT")
        q.add_argument("agent", help="the agent's id (agt_…)")
        q.add_argument("text")
        q.add_argument("--thread", default=None, metavar="T", help=thread)
        q.add_argument("--embedding-model", default=None, metavar="NAME", help="embed it now")
        _common(q)
        q = mem.add_parser("search", help="the agent's memories best matching QUERY")
        q.add_argument("agent")
        q.add_argument("query")
        q.add_argument("--thread", default=None, metavar="T", help="also this thread's memories")
        q.add_argument("--mode", choices=["text", "vector", "hybrid"], default="text")
        q.add_argument(
            "--embedding-model", default=None, metavar="NAME", help="a model of /api/v1/models"
        )
        q.add_argument("--limit", type=int, default=10, metavar="N")
        _common(q)
        q = mem.add_parser("ls", help="the agent's memories, newest first")
        q.add_argument("agent")
        q.add_argument("--thread", default=None, metavar="T", help="also this thread's memories")
        q.add_argument("--limit", type=int, default=100, metavar="N")
        _common(q)
        q = mem.add_parser("rm", help="delete a memory")
        q.add_argument("id", help="mem_…")
        _common(q)


def _run_parsers(sub: _Commands) -> None:
    """``aether run …`` and ``aether runs …``."""
    if p := sub.add("run", help="run an agent on INPUT and print its answer"):
        p.add_argument("agent", help="the agent's name or id")
        p.add_argument("input")
        p.add_argument("--thread", default=None, metavar="T", help="continue conversation T")
        p.add_argument("--follow", action="store_true", help="print each step as it happens")
        p.add_argument(
            "--concurrency",
            choices=["reject", "enqueue", "interrupt"],
            default="reject",
            help="when the thread has a run under way (default: refuse)",
        )
        p.add_argument("--wait", type=float, default=120.0, metavar="S", help="seconds to wait")
        _common(p)
    if p := sub.add("runs", help="agents' runs: ls, get, cancel, approve"):
        runs = p.add_subparsers(dest="runs_command", metavar="SUBCOMMAND", parser_class=_Parser)
        runs.required = True
        q = runs.add_parser("ls", help="runs, newest first")
        q.add_argument("--agent", default=None, help="of this agent (name or id)")
        q.add_argument("--thread", default=None, metavar="T")
        q.add_argument("--status", default=None)
        q.add_argument("--limit", type=int, default=50, metavar="N")
        _common(q)
        for name, text in (("get", "one run and its steps"), ("cancel", "cancel a run")):
            q = runs.add_parser(name, help=text)
            q.add_argument("id", help="run_…")
            _common(q)
        q = runs.add_parser("files", help="the files a run's sandbox tools kept")
        q.add_argument("id", help="run_…")
        _common(q)
        q = runs.add_parser("file", help="download one kept file")
        q.add_argument("id", help="run_…")
        q.add_argument("step", type=int)
        q.add_argument("name")
        q.add_argument("-o", "--output", default="-", metavar="FILE", help="- : stdout (default)")
        _common(q)
        q = runs.add_parser("approve", help="approve (or --reject) the tool call waiting")
        q.add_argument("id", help="run_…")
        q.add_argument("--reject", action="store_true")
        q.add_argument("--step", type=int, default=None, help="which waiting step (default: first)")
        q.add_argument("--reason", default="")
        _common(q)


_MODULES = {
    "up": "up",
    "server": "daemons",
    "node": "daemons",
    "doctor": "doctor",
    "install": "install",
    "login": "session_cmds",
    "whoami": "session_cmds",
    "users": "users",
    "deploy": "deploy",
    "status": "views",
    "apps": "views",
    "nodes": "views",
    "nodes-revoke": "tokens",
    "nodes-allow": "tokens",
    "tokens": "tokens",
    "ca": "ca",
    "limits": "limits",
    "tenants": "tenants",
    "models": "models",
    "secrets": "secrets",
    "slice": "slices",
    "blueprint": "blueprints",
    "agents": "agents",
    "tools": "agent_policies",
    "policies": "agent_policies",
    "memory": "memory",
    "run": "runs",
    "runs": "runs",
    "deployments": "views",
    "scale": "actions",
    "list": "views",
    "events": "events",
    "promote": "actions",
    "gc": "actions",
    "task": "tasks",
    "vm": "tasks",
    "completions": "completions",
    "shell": "shell",
    "backup": "backup",
    "diag": "diag",
    "rollback": "actions",
    "logs": "actions",
    "keys": "keys",
    "apps-set": "keys",
    "artifacts": "artifacts",
    "apps-rm": "actions",
    "migrate": "migrate",
    "migrations": "migrate",
    "drain": "migrate",
    "undrain": "migrate",
    "snapshots": "migrate",
    "rebalance": "migrate",
    "decisions": "decisions",
    "alerts": "alerts",
    "audit": "audit",
    "metrics": "metrics",
    "risk": "risk",
    "drill": "risk",
    "signal": "risk",
    "plugins": "plugins",
}


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_of(words), every=False)
    args = parser.parse_args(words)
    from aether.cli.output import EXIT, configure_logging, run_command

    if args.command is None:
        parser.print_help()
        return EXIT["usage"]
    from aether.cli.session import setting

    configure_logging(
        args.log_level or setting("log_level") or "warning",
        args.log_format or setting("log_format") or "auto",
    )
    module = importlib.import_module(f"aether.cli.commands.{_MODULES[args.command]}")
    from aether import tracing

    service = _SERVICES.get(args.command, "aether-cli")
    if not tracing.configure(service) or service != "aether-cli":
        return run_command(module, args)
    try:  # one trace per command: its requests, and what the server does for them
        with tracing.span(f"aether {args.command}", kind="client"):
            return run_command(module, args)
    finally:
        tracing.shutdown()


# the commands that are long-running processes: their spans are their work's, not theirs
_SERVICES = {"server": "aether-server", "node": "aether-node"}


if __name__ == "__main__":
    sys.exit(main())
