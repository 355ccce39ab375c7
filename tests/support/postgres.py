"""A real PostgreSQL server for tests: ``initdb`` in a temp dir, on a free loopback port.

Uses Debian's ``postgresql`` package (the binaries under /usr/lib/postgresql/N/bin).
PostgreSQL refuses to run as root, so when the tests run as root the server runs
as the ``postgres`` OS user (which the package creates) via ``runuser``.

    with PostgresServer.launched() as pg:
        url = pg.create_database("records")    # postgresql+psycopg://...
        pg.stop(); pg.start()                  # the same data, the same port

The cluster trusts local TCP connections (no password) and runs without fsync:
it is thrown away after the tests, and a clean ``stop`` still writes everything.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aether.ports import free_port

__all__ = ["PostgresServer", "postgres_bin"]

USER = "aether"  # the database superuser initdb creates
INSTALL_HINT = "PostgreSQL is needed for these tests: apt-get install postgresql"


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin directory (fails the test when there is none)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        pytest.fail(INSTALL_HINT)
    return Path(initdb).parent


def _os_user() -> str | None:
    """The OS user to run the server as: None for ourselves, ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(f"running as root needs the 'postgres' OS user; {INSTALL_HINT}")
    return "postgres"


class PostgresServer:
    """One PostgreSQL cluster in a private directory; stop/start keep its data and port."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = port
        self.bin = postgres_bin()
        self.user = _os_user()

    # -- lifecycle ---------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def launched(cls) -> Iterator[PostgresServer]:
        """initdb + start; stop and remove everything on exit."""
        # Not pytest's tmp_path: its parent is private to us, and the server may
        # run as another OS user.
        root = Path(tempfile.mkdtemp(prefix="aether-pg-"))
        server = cls(root, free_port())
        try:
            server.initdb()
            server.start()
            yield server
        finally:
            with contextlib.suppress(Exception):
                server.stop()
            shutil.rmtree(root, ignore_errors=True)

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=self.root, check=False
        )

    def initdb(self) -> None:
        if self.user is not None:
            shutil.chown(self.root, user=self.user)
        done = self._run(
            str(self.bin / "initdb"),
            *("-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8"),
            *("--locale=C", "--no-sync"),
        )
        if done.returncode != 0:
            pytest.fail(f"initdb failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        options = " ".join(
            [
                *("-c listen_addresses=127.0.0.1", f"-c port={self.port}"),
                f"-c unix_socket_directories={self.data}",
                *("-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"),
                "-c max_connections=200",
            ]
        )
        done = self._run(
            str(self.bin / "pg_ctl"),
            *("-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60"),
            "start",
        )
        if done.returncode != 0:
            pytest.fail(f"PostgreSQL did not start:\n{done.stdout}\n{done.stderr}\n{self.logs()}")
        self._wait_accepting()

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast``: disconnects every client, shuts down cleanly."""
        done = self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed:\n{done.stdout}\n{done.stderr}")

    def logs(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def _wait_accepting(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            done = self._run(
                str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), timeout=10
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"PostgreSQL does not accept connections:\n{self.logs()}")
            time.sleep(0.05)

    # -- databases ---------------------------------------------------------------

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{USER}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=USER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql.encode())

    def create_database(self, name: str | None = None, *, template: str | None = None) -> str:
        """A new empty (or copied from ``template``) database; its SQLAlchemy URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        clause = f' TEMPLATE "{template}"' if template else ""
        self.execute(f'CREATE DATABASE "{name}"{clause}')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
