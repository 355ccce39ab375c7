"""Installer profiles: systemd units, configuration and a hardening checklist, as data.

``render(profile, options)`` is pure: it returns every file to write, keyed by its
path relative to the output directory, with its mode. Nothing here touches the
machine; :mod:`aether.ops.install_apply` writes the files and installs them.

The output has one directory per *machine* and, beside them, ``HARDENING.md``::

    user        local/          the server and a node on one machine, embedded stores
    pro         server/ node/   one server (embedded stores, HTTPS), nodes elsewhere
    enterprise  server-1/ … node/   N servers on etcd + PostgreSQL + S3, with TLS

A machine's directory mirrors the file system (``local/etc/systemd/system/…``),
so installing is copying it onto ``/``. Environment files hold the secrets
(placeholders: nothing real is ever rendered) and are mode 0600; they are the
operator's to fill in, so an install never replaces one that exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from importlib.resources import files
from typing import Any, NamedTuple
from urllib.parse import urlsplit

__all__ = [
    "HARDENING",
    "PROFILES",
    "InstallOptions",
    "OptionsError",
    "Rendered",
    "machines",
    "render",
]

PROFILES = ("user", "pro", "enterprise")
HARDENING = "HARDENING.md"
PLACEHOLDER = "CHANGE_ME"
_UNITS = "etc/systemd/system"

_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


class OptionsError(ValueError):
    """The options cannot be rendered; ``problems`` lists each one (an option and why)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class Rendered(NamedTuple):
    """One file: its text, its mode, and whether it is the operator's to edit (``keep``:
    an install never replaces it once it exists; secrets files are)."""

    content: str
    mode: int
    keep: bool = False


@dataclass(frozen=True)
class InstallOptions:
    """What a profile is rendered with. Empty strings and tuples mean "the profile's
    default" (see :func:`resolved`)."""

    aether_bin: str
    user: str = "aether"
    node_user: str = "root"
    data_dir: str = "/var/lib/aether"
    node_data_dir: str = "/var/lib/aether-node"
    config_dir: str = "/etc/aether"
    port: int = 7070
    node_port: int = 7071
    router_port: int = 8080
    https_port: int = 8443
    server_url: str = ""  # user, pro: the API URL nodes and the CLI use
    servers: tuple[str, ...] = ()  # enterprise: the servers' host names
    etcd: tuple[str, ...] = ()  # enterprise: HOST:PORT of each etcd member
    etcd_prefix: str = "aether"
    etcd_ca_file: str = ""  # enterprise: CONFIG_DIR/etcd/ca.pem
    postgres: str = "postgresql://aether@db.internal:5432/aether"
    s3: str = "s3://aether-artifacts/aether"
    s3_endpoint: str = ""
    router_host: str = ""  # user: 127.0.0.1; else 0.0.0.0


def resolved(profile: str, options: InstallOptions) -> InstallOptions:
    """``options`` with the profile's defaults filled in."""
    changes: dict[str, Any] = {}
    if not options.server_url:
        changes["server_url"] = {
            "user": f"http://127.0.0.1:{options.port}",
            "pro": f"https://aether-server.internal:{options.port}",
            "enterprise": "",
        }[profile]
    if profile == "enterprise" and not options.servers:
        changes["servers"] = tuple(f"aether-{i}.internal" for i in (1, 2, 3))
    servers = changes.get("servers", options.servers)
    if profile == "enterprise" and not options.etcd:
        changes["etcd"] = tuple(f"{host}:2379" for host in servers)
    if profile == "enterprise" and not options.etcd_ca_file:
        changes["etcd_ca_file"] = f"{options.config_dir}/etcd/ca.pem"
    if not options.router_host:
        changes["router_host"] = "127.0.0.1" if profile == "user" else "0.0.0.0"
    return replace(options, **changes)


def _problems(profile: str, o: InstallOptions) -> list[str]:
    problems = []
    if profile not in PROFILES:
        problems.append(f"--profile: {profile!r} is not one of {', '.join(PROFILES)}")
    if not o.aether_bin.startswith("/"):
        problems.append(f"--aether-bin: {o.aether_bin!r} is not an absolute path")
    elif o.aether_bin.startswith(("/home/", "/root/", "/run/user/")):
        problems.append(
            f"--aether-bin: {o.aether_bin} is in a home directory, which the units hide "
            "(ProtectHome=) and the service user cannot read: install aether system-wide "
            "(a venv in /opt/aether, or pipx with PIPX_HOME=/opt/pipx PIPX_BIN_DIR=/usr/local/bin)"
        )
    for name in ("user", "node_user"):
        if not _USER.match(getattr(o, name)):
            problems.append(f"--{name.replace('_', '-')}: {getattr(o, name)!r} is not a user name")
    for name in ("data_dir", "node_data_dir", "config_dir"):
        value = getattr(o, name)
        if not value.startswith("/") or any(c.isspace() for c in value) or "%" in value:
            problems.append(
                f"--{name.replace('_', '-')}: {value!r} must be an absolute path without "
                "spaces or '%'"
            )
    ports = {"port": o.port, "node_port": o.node_port}
    ports |= {"router_port": o.router_port, "https_port": o.https_port}
    for name, port in ports.items():
        if not 1 <= port <= 65535:
            problems.append(f"--{name.replace('_', '-')}: {port} is not a port")
    if o.port == o.node_port:
        problems.append("--port and --node-port must differ")
    if o.router_port == o.https_port:
        problems.append("--router-port and --https-port must differ")
    if profile == "user" and len(set(ports.values())) != len(ports):  # one machine
        problems.append("--port, --node-port, --router-port and --https-port must differ")
    if profile == "user" and o.node_user not in ("root", o.user):
        problems.append(
            f"--node-user: on one machine the node reads the server's join token in "
            f"{o.data_dir}, so it runs as root or as --user {o.user}, not {o.node_user}"
        )
    if profile == "user" and o.server_url and not o.server_url.startswith("http"):
        problems.append(f"--server-url: {o.server_url!r} is not an http(s) URL")
    if profile == "pro" and not o.server_url.startswith("https://"):
        problems.append(f"--server-url: the pro profile serves HTTPS, not {o.server_url!r}")
    if profile == "enterprise":
        if len(o.servers) < 2:
            problems.append("--servers: name at least two servers (three is the usual)")
        for host in (*o.servers, *(member.rpartition(":")[0] for member in o.etcd)):
            if not _HOST.match(host):
                problems.append(f"--servers/--etcd: {host!r} is not a host name")
        for member in o.etcd:
            if not member.rpartition(":")[2].isdigit():
                problems.append(f"--etcd: {member!r} is not HOST:PORT")
        pg = urlsplit(o.postgres)
        if pg.scheme not in ("postgresql", "postgresql+psycopg") or not pg.hostname:
            problems.append(f"--postgres: {o.postgres!r} is not a postgresql://USER@HOST/DB URL")
        if pg.password:
            problems.append(
                "--postgres: leave the password out (it would land in a readable file and your "
                f"shell history); put it in {o.config_dir}/server.env after rendering"
            )
        if not o.s3.startswith("s3://") or len(o.s3) <= len("s3://"):
            problems.append(f"--s3: {o.s3!r} is not s3://BUCKET/PREFIX")
        if o.s3_endpoint and not o.s3_endpoint.startswith(("http://", "https://")):
            problems.append(f"--s3-endpoint: {o.s3_endpoint!r} is not an http(s) URL")
    return problems


def _environment() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    loader = FileSystemLoader(str(files("aether.ops") / "templates" / "install"))
    env = Environment(
        loader=loader,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # config files and units, not HTML
    )
    env.filters["toml"] = _toml
    return env


def _toml(value: Any) -> str:
    """A TOML value: strings as basic strings (JSON's escaping is TOML's)."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def _state_directory(path: str) -> str:
    """``StateDirectory=`` for a path under /var/lib, else empty (created at install)."""
    return path.removeprefix("/var/lib/") if path.startswith("/var/lib/") else ""


def _with_password(url: str, password: str) -> str:
    """``url`` with ``password`` after its user (``aether`` when it names none)."""
    parts = urlsplit(url)
    user = parts.username or "aether"
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:{password}@{host}").geturl()


def _url_host(url: str) -> str:
    return urlsplit(url).hostname or ""


def render(profile: str, options: InstallOptions) -> dict[str, Rendered]:
    """Every file of ``profile``, by its path relative to the output directory.

    Raises :class:`OptionsError` listing every bad option.
    """
    o = resolved(profile, options) if profile in PROFILES else options
    problems = _problems(profile, o)
    if problems:
        raise OptionsError(problems)
    env = _environment()
    base: dict[str, Any] = {
        "profile": profile,
        "o": o,
        "placeholder": PLACEHOLDER,
        "state_directory": _state_directory(o.data_dir),
        "node_state_directory": _state_directory(o.node_data_dir),
        "records_env_url": _with_password(o.postgres, PLACEHOLDER),
    }
    out: dict[str, Rendered] = {}
    conf = o.config_dir.lstrip("/")

    def put(path: str, template: str, mode: int, values: dict[str, Any]) -> None:
        text = env.get_template(template).render(**base, **values)
        out[path] = Rendered(text, mode, keep=path.endswith(".env"))

    def server(machine: str, public_url: str, host: str) -> None:
        values = {"machine": machine, "public_url": public_url, "host": host}
        put(f"{machine}/{_UNITS}/aether-server.service", "server.service.j2", 0o644, values)
        put(f"{machine}/{conf}/server.toml", "server.toml.j2", 0o644, values)
        put(f"{machine}/{conf}/server.env", "server.env.j2", 0o600, values)

    def node(machine: str, servers: str) -> None:
        values = {"machine": machine, "node_servers": servers, "local_server": machine == "local"}
        put(f"{machine}/{_UNITS}/aether-node.service", "node.service.j2", 0o644, values)
        put(f"{machine}/{conf}/node.env", "node.env.j2", 0o600, values)

    if profile == "user":
        server("local", o.server_url, "127.0.0.1")
        node("local", o.server_url)
        hosts = ["127.0.0.1"]
    elif profile == "pro":
        server("server", o.server_url, "0.0.0.0")
        node("node", o.server_url)
        hosts = [_url_host(o.server_url)]
    else:
        urls = [f"https://{host}:{o.port}" for host in o.servers]
        for i, url in enumerate(urls, 1):
            server(f"server-{i}", url, "0.0.0.0")
        node("node", ",".join(urls))
        hosts = list(o.servers)
    put(HARDENING, "HARDENING.md.j2", 0o644, {"machines": machines(out), "hosts": hosts})
    return out


def machines(rendered: dict[str, Rendered]) -> list[str]:
    """The machines' directories of a rendering (``local``; ``server``, ``node``; …)."""
    return sorted({path.split("/", 1)[0] for path in rendered if "/" in path})
