"""Fixtures shared by the build, SBOM and runtime tests, and the registry tests' S3 server."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.s3 import S3Server, s3_server_process

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One dependency cache for the whole session (npm and pip run once per lockfile)."""
    path = tmp_path_factory.getbasetemp() / "aether-build-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def npm() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail(
            "node and npm are required to build Node.js apps and are not on PATH: "
            "apt-get install nodejs npm"
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server_process(tmp_path_factory.mktemp("s3") / "root") as server:
        yield server


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return s3_server.make_bucket(f"t-{uuid.uuid4().hex[:16]}")
