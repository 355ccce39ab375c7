"""``aether up``: one server and N nodes on this machine, in the foreground.

``--ha`` tries the HA layout locally: three etcd members, three servers on
them (one leads; the others serve the API and take over within seconds), the
nodes given every server's URL.

Every process it starts is supervised (:mod:`aether.cli.supervisor`): one that
exits is reported and started again with backoff. How the cluster is laid out
(the state URL, each process's command) is written to ``DATA/up.json``, which
``aether backup create --data-dir DATA`` reads. ``--restore ARCHIVE`` restores a
backup into the new cluster's stores (etcd with ``--ha``) before the servers start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aether.cli.output import CliError
from aether.cli.supervisor import Child, Supervisor

if TYPE_CHECKING:
    from aether.store.etcd_local import EtcdCluster
from aether.cli.session import ca_context, config_path, save_config, save_session

__all__ = ["LAYOUT", "run"]

LAYOUT = "up.json"  # in the data dir: how `aether up` laid the cluster out


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports(first: int, count: int, taken: set[int]) -> list[int]:
    ports: list[int] = []
    port = first
    while len(ports) < count:
        if port not in taken and _port_free(port):
            ports.append(port)
        port += 1
        if port > 65535:
            raise CliError("no free ports for the node routers", kind="io")
    return ports


def _demo_app() -> Path | None:
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents):
        candidate = base / "examples" / "hello-python"
        if (candidate / "aether.toml").exists():
            return candidate
    return None


def _shown(args: list[str], log: Path, env: dict[str, str]) -> str:
    """A shell command that starts this process by hand, as ``aether up`` does."""
    prefix = "".join(f"{k}={v} " for k, v in env.items())
    return f"{prefix}{shlex.join(args)} >>{shlex.quote(str(log))} 2>&1"


def _spawn(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    fh = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "aether", *args],
        stdout=fh,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


def _start_etcd(data_dir: Path, base_port: int) -> EtcdCluster:
    from aether.store.etcd_local import EtcdCluster, etcd_binary

    try:
        etcd_binary()
    except RuntimeError as exc:
        raise CliError(f"--ha needs etcd: {exc}", kind="io") from None
    for port in range(base_port, base_port + 6):
        if not _port_free(port):
            raise CliError(f"port {port} (etcd) is in use: pass --etcd-port P", kind="io")
    try:
        return EtcdCluster(size=3, root=data_dir / "etcd", base_port=base_port).start()
    except (RuntimeError, TimeoutError) as exc:
        raise CliError(f"etcd did not start: {exc}", kind="internal") from None


def _respawner(etcd: EtcdCluster, index: int) -> Callable[[], subprocess.Popen[bytes]]:
    return lambda: etcd.respawn(index)


def _wait_started(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with contextlib.suppress(httpx.HTTPError):
            verify = ca_context(url) or True
            if httpx.get(f"{url}/readyz", timeout=1, verify=verify).status_code == 200:
                return
        time.sleep(0.1)
    raise CliError(f"the server did not start; see {log}")


async def _wait_ready(
    url: str, token: str, nodes: int, procs: list[subprocess.Popen[bytes]]
) -> None:
    from aether.client import ApiClient

    deadline = time.monotonic() + 60
    async with ApiClient(url, token, timeout=5, verify=ca_context(url)) as client:
        while time.monotonic() < deadline:
            for proc in procs:
                if proc.poll() is not None:
                    raise CliError(
                        f"a process exited early (code {proc.returncode}); "
                        "see the logs in the data dir",
                        kind="internal",
                    )
            with contextlib.suppress(Exception):
                status = await client.status()
                if status.leader and sum(n.state == "ready" for n in status.nodes) >= nodes:
                    return
            await asyncio.sleep(0.2)
    raise CliError("the cluster did not become ready within 60s; see the logs in the data dir")


def _tls_files(directory: Path) -> dict[str, str]:
    """The cluster CA and the API's certificate (made once, kept in DATA/tls)."""
    import datetime as dt

    from aether.trust.ca import write_authority_files

    if not (directory / "api.crt").exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_authority_files(
            str(directory), "aether", ["127.0.0.1", "localhost"], dt.datetime.now(dt.UTC)
        )
    return {
        "AETHER_CA_CERT_FILE": str(directory / "ca.crt"),
        "AETHER_CA_KEY_FILE": str(directory / "ca.key"),
        "AETHER_TLS_CERT": str(directory / "api.crt"),
        "AETHER_TLS_KEY": str(directory / "api.key"),
    }


def _check_layout(data_dir: Path, server_dir: Path, ha: bool) -> None:
    """Refuse a data dir whose state the cluster about to start would not read."""
    etcd_data = any((data_dir / "etcd").glob("m*/member"))
    if ha and (server_dir / "state.db").exists() and not etcd_data:
        raise CliError(
            f"{server_dir / 'state.db'} holds a state that `aether up --ha` does not read "
            "(its state lives in etcd): run `aether up` without --ha on this data dir, or "
            "start an HA cluster from a backup: aether up --ha --data-dir NEW --restore ARCHIVE",
            kind="usage",
        )
    if not ha and etcd_data and not (server_dir / "state.db").exists():
        raise CliError(
            f"{data_dir} holds an `aether up --ha` cluster (its state is in etcd): pass --ha",
            kind="usage",
        )


def _restore(archive: Path, server_dir: Path, state_url: str | None) -> None:
    """Restore ``archive`` into the stores the servers will use, before they start."""
    from aether.backup.archive import BackupError, restore_backup
    from aether.server.config import ConfigError, load_config

    overrides: dict[str, object] = {"data_dir": server_dir}
    if state_url is not None:
        overrides["state_url"] = state_url
    try:
        settings = load_config(None, overrides)
        summary = asyncio.run(restore_backup(archive, settings))
    except (BackupError, ConfigError) as exc:
        raise CliError(f"--restore {archive}: {exc}", kind="io", code="restore_failed") from None
    print(
        f"restored {archive} (taken {summary['backup_created_at']}) into "
        + ", ".join(sorted(summary["parts"])),
        flush=True,
    )


def _write_layout(data_dir: Path, layout: dict[str, object]) -> None:
    path = data_dir / LAYOUT
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(layout, indent=2) + "\n")
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    data_dir = Path(
        args.data_dir
        or Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share") / "aether" / "up"
    ).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    server_ports = [args.port, args.port + 1, args.port + 2] if args.ha else [args.port]
    for port in server_ports:
        if not _port_free(port):
            raise CliError(f"port {port} is in use: pass --port P", kind="io")
    scheme = "https" if args.tls else "http"
    urls = [f"{scheme}://127.0.0.1:{port}" for port in server_ports]
    api = ",".join(urls)  # nodes and the CLI fail over between the servers
    server_dir = data_dir / "server"
    restore = Path(args.restore).resolve() if getattr(args, "restore", None) else None
    if restore is not None and not restore.is_file():
        raise CliError(f"--restore {restore}: no such file", kind="usage")
    _check_layout(data_dir, server_dir, args.ha)
    supervisor = Supervisor()
    etcd = _start_etcd(data_dir, args.etcd_port) if args.ha else None
    state_url = etcd.url + "/aether" if etcd is not None else None
    server_env = {"AETHER_STATE_URL": state_url} if state_url is not None else {}
    node_args: list[str] = []
    ca_file: Path | None = None
    if args.tls:  # the API over HTTPS, its certificate from the cluster CA made here
        server_env.update(_tls_files(data_dir / "tls"))
        ca_file = data_dir / "tls" / "ca.crt"
        node_args = ["--server-ca", str(ca_file)]
        os.environ["AETHER_CA_FILE"] = str(ca_file)  # this process's own calls
    aether = [sys.executable, "-m", "aether"]

    def stop_all() -> None:
        procs = [c.proc for c in supervisor.children if not c.name.startswith("etcd")]
        for proc in reversed(procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        if etcd is not None:
            etcd.stop()  # its data stays in DATA/etcd for the next `aether up --ha`

    def supervise(name: str, argv: list[str], log: Path, env: dict[str, str]) -> Child:
        def spawn() -> subprocess.Popen[bytes]:
            return _spawn(argv, log, env)

        child = Child(name, spawn, _shown([*aether, *argv], log, env), str(log), spawn())
        supervisor.add(child)
        return child

    def layout(ports: list[int]) -> dict[str, object]:
        return {
            "ha": args.ha,
            "state_url": state_url,
            "server_data_dir": str(server_dir),
            "servers": urls,
            "etcd": etcd.endpoints if etcd is not None else [],
            "routers": [f"http://127.0.0.1:{port}" for port in ports],
            "processes": [
                {"name": c.name, "command": c.command, "log": c.log} for c in supervisor.children
            ],
        }

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        if etcd is not None:
            for i, member in enumerate(etcd.members):
                assert member.process is not None
                supervisor.add(
                    Child(
                        f"etcd {member.name}",
                        _respawner(etcd, i),
                        _shown(etcd.command(i), member.log_path, {}),
                        str(member.log_path),
                        member.process,
                    )
                )
        if restore is not None:
            _restore(restore, server_dir, state_url)
        _write_layout(data_dir, layout([]))  # `backup create` can find the state from now on
        for i, port in enumerate(server_ports):  # one at a time: the first migrates the records
            log = data_dir / ("server.log" if i == 0 else f"server-{i + 1}.log")
            argv = ["server", "--data-dir", str(server_dir), "--port", str(port)]
            child = supervise(f"server {i + 1}", argv, log, server_env)
            _wait_started(urls[i], child.proc, log)
        join = (server_dir / "join.token").read_text().strip()
        admin = (server_dir / "admin.token").read_text().strip()
        ports = _pick_ports(args.router_port, args.nodes, set(server_ports))
        for i, port in enumerate(ports):
            argv = [
                "node",
                "--server",
                api,
                "--data-dir",
                str(data_dir / f"node-{i + 1}"),
                "--router-port",
                str(port),
                "--id",
                f"node-{i + 1}",
                *node_args,
            ]
            child = supervise(
                f"node-{i + 1}", argv, data_dir / f"node-{i + 1}.log", {"AETHER_JOIN_TOKEN": join}
            )
            # by hand, read the token from its file rather than print it
            child.command = child.command.replace(
                f"AETHER_JOIN_TOKEN={join}",
                f'AETHER_JOIN_TOKEN="$(cat {shlex.quote(str(server_dir / "join.token"))})"',
            )
        _write_layout(data_dir, layout(ports))
        asyncio.run(_wait_ready(api, admin, args.nodes, [c.proc for c in supervisor.children]))
        session = save_session(api, admin)
        save_config({"server": api, "ca_file": str(ca_file) if ca_file else ""})
        print(f"Aether is up: {len(urls)} server(s), {args.nodes} node(s)   (data in {data_dir})")
        print(f"  console:    {urls[0]}/ui/      (sign in with the admin token below)")
        for url in urls:
            print(f"  API:        {url}/api/v1      (OpenAPI: {url}/docs)")
        if etcd is not None:
            print(f"  etcd:       {', '.join(etcd.endpoints)}   (state store; data in DATA/etcd)")
            print(f"  state:      {state_url}")
        for i, port in enumerate(ports):
            print(f"  node-{i + 1}:     router http://127.0.0.1:{port}/apps/APP/")
        print(f"  admin token {admin}")
        print(f"              (also in {server_dir / 'admin.token'})")
        print(f"  session:    {session}   config: {config_path()}")
        print(f"  supervised: a process that exits is restarted; by hand (also in {LAYOUT}):")
        for child in supervisor.children:
            print(f"    {child.name} (pid {child.proc.pid}): {child.command}")
        if args.demo:
            demo = _demo_app()
            if demo is None:
                print("  demo: examples/hello-python not found; skipped", file=sys.stderr)
            else:
                from aether.cli.main import main as cli_main

                print(f"  deploying the demo app from {demo} ...", flush=True)
                code = cli_main(["deploy", str(demo), "--instances", "2"])
                if code != 0:
                    print("  the demo deploy failed; the cluster is still up", file=sys.stderr)
                else:
                    print(f"  try: curl http://127.0.0.1:{ports[0]}/apps/hello-python/")
        print("Next: aether status | aether deploy PATH | aether logs APP -f   (Ctrl-C stops)")
        sys.stdout.flush()
        while True:
            supervisor.tick()
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("stopping ...", file=sys.stderr)
        return 0
    finally:
        stop_all()
