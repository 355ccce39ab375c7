"""``aether up``: one server and N nodes on this machine, in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from aether.cli.output import CliError
from aether.cli.session import config_path, save_config, save_session

__all__ = ["run"]


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


async def _wait_ready(
    url: str, token: str, nodes: int, procs: list[subprocess.Popen[bytes]]
) -> None:
    from aether.client import ApiClient

    deadline = time.monotonic() + 60
    async with ApiClient(url, token, timeout=5) as client:
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


def run(args: argparse.Namespace) -> int:
    data_dir = Path(
        args.data_dir
        or Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share") / "aether" / "up"
    ).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if not _port_free(args.port):
        raise CliError(f"port {args.port} is in use: pass --port P", kind="io")
    api = f"http://127.0.0.1:{args.port}"
    server_dir = data_dir / "server"
    procs: list[subprocess.Popen[bytes]] = []

    def stop_all() -> None:
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

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        procs.append(
            _spawn(
                ["server", "--data-dir", str(server_dir), "--port", str(args.port)],
                data_dir / "server.log",
            )
        )
        deadline = time.monotonic() + 30
        while not (server_dir / "join.token").exists() or not (server_dir / "admin.token").exists():
            if procs[0].poll() is not None or time.monotonic() > deadline:
                raise CliError(f"the server did not start; see {data_dir / 'server.log'}")
            time.sleep(0.05)
        join = (server_dir / "join.token").read_text().strip()
        admin = (server_dir / "admin.token").read_text().strip()
        ports = _pick_ports(args.router_port, args.nodes, {args.port})
        for i, port in enumerate(ports):
            procs.append(
                _spawn(
                    [
                        "node",
                        "--server",
                        api,
                        "--data-dir",
                        str(data_dir / f"node-{i + 1}"),
                        "--router-port",
                        str(port),
                        "--id",
                        f"node-{i + 1}",
                    ],
                    data_dir / f"node-{i + 1}.log",
                    env={"AETHER_JOIN_TOKEN": join},
                )
            )
        asyncio.run(_wait_ready(api, admin, args.nodes, procs))
        session = save_session(api, admin)
        save_config({"server": api})
        print(f"Aether is up: 1 server, {args.nodes} node(s)   (data in {data_dir})")
        print(f"  API:        {api}/api/v1      (OpenAPI: {api}/docs)")
        for i, port in enumerate(ports):
            print(f"  node-{i + 1}:     router http://127.0.0.1:{port}/apps/APP/")
        print(f"  admin token {admin}")
        print(f"              (also in {server_dir / 'admin.token'})")
        print(f"  session:    {session}   config: {config_path()}")
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
        reported: set[int] = set()
        while True:
            if procs[0].poll() is not None:
                raise CliError(
                    f"the server exited (code {procs[0].returncode}); see {data_dir / 'server.log'}"
                )
            for i, proc in enumerate(procs[1:], start=1):
                if proc.poll() is not None and i not in reported:
                    reported.add(i)
                    print(
                        f"node-{i} exited (code {proc.returncode}); its instances move to the "
                        f"other nodes. See {data_dir / f'node-{i}.log'}",
                        file=sys.stderr,
                        flush=True,
                    )
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping ...", file=sys.stderr)
        return 0
    finally:
        stop_all()
