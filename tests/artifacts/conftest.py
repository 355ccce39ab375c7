"""Fixtures shared by the build, SBOM and runtime tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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
