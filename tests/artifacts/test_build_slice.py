"""Slice builds: a python app whose artifact carries the slice runtime and pydantic.

Real pip installs (as in test_build.py); the vendored runtime is imported by a plain
``python3`` from the staged tree, the way a node's sandbox imports it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import aether
from aether.artifacts import digest_bytes, pack_bytes
from aether.artifacts.build import PYTHON_VENDOR_DIR, build
from aether.artifacts.build.runtimes import SLICE_HOST
from aether.errors import BadRequestError
from aether.model.app import AppSpec


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


CATALOG = "def price(sku: str) -> int:\n    return len(sku)\n"


def test_a_slice_packs_with_the_slice_runtime_and_pydantic(
    build_cache: Path, tmp_path: Path
) -> None:
    src = write(
        tmp_path / "catalog",
        {
            "aether.toml": 'name = "catalog"\nruntime = "slice"\nslice = "shop.catalog:price"\n',
            "shop/__init__.py": "",
            "shop/catalog.py": CATALOG,
        },
    )
    result = build(src, cache_dir=build_cache)
    spec = result.spec
    assert result.runtime == "slice" and spec.runtime == "slice"
    assert spec.slice == "shop.catalog:price"
    assert spec.start == SLICE_HOST == "python3 -m aether.slices.host"
    assert spec.health == "/healthz"
    assert spec.env["AETHER_SLICE"] == "shop.catalog:price"
    assert spec.env["PYTHONPATH"] == PYTHON_VENDOR_DIR
    vendor = result.root / PYTHON_VENDOR_DIR
    installed = Path(aether.__file__).resolve().parent
    assert (vendor / "aether/__init__.py").read_bytes() == (installed / "__init__.py").read_bytes()
    for module in sorted((installed / "slices").glob("*.py")):
        assert (vendor / "aether/slices" / module.name).read_bytes() == module.read_bytes()
    assert sorted(p.name for p in (vendor / "aether").iterdir()) == ["__init__.py", "slices"]
    assert (vendor / "pydantic/__init__.py").is_file()
    assert result.sbom is not None
    assert any(c["name"] == "pydantic" for c in result.sbom["components"])
    # the sandbox's python3 imports the runtime and pydantic from the artifact alone
    probe = subprocess.run(
        [
            "python3",
            "-I",
            "-c",
            "import sys; sys.path[:0] = [sys.argv[1]]; import aether.slices.wire, pydantic; "
            "print(aether.slices.wire.__file__)",
            str(vendor),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip().startswith(str(vendor))
    # reproducible: the same source packs to the same bytes
    again = build(src, cache_dir=build_cache)
    assert again.cached is True
    assert digest_bytes(pack_bytes(again.root)) == digest_bytes(pack_bytes(result.root))


def test_a_slice_whose_requirements_name_pydantic_gets_no_second_one(
    build_cache: Path, tmp_path: Path
) -> None:
    src = write(
        tmp_path / "pricing",
        {
            "aether.toml": 'runtime = "slice"\nslice = "pricing:quote"\n',
            "requirements.txt": "pydantic>=2.5\nitsdangerous>=2\n",
            "pricing.py": CATALOG.replace("price", "quote"),
        },
    )
    lines: list[str] = []
    result = build(src, cache_dir=build_cache, progress=lines.append)
    pip = next(line for line in lines if line.startswith("$ ") and " pip " in line)
    assert "pydantic>=2,<3" not in pip  # the app's own pin decides
    assert (result.root / PYTHON_VENDOR_DIR / "itsdangerous/__init__.py").is_file()
    assert (result.root / PYTHON_VENDOR_DIR / "pydantic/__init__.py").is_file()
    assert (result.root / PYTHON_VENDOR_DIR / "aether/slices/wire.py").is_file()


@pytest.mark.parametrize(
    "path", ["catalog", "shop.catalog", "shop/catalog:Catalog", "shop.catalog:Cat.log", "1x:y"]
)
def test_bad_slice_import_paths_are_refused(tmp_path: Path, path: str) -> None:
    src = write(
        tmp_path / "bad",
        {"aether.toml": f'runtime = "slice"\nslice = "{path}"\n', "bad.py": ""},
    )
    with pytest.raises(BadRequestError, match="module:attribute"):
        build(src, cache_dir=tmp_path / "cache")


def test_a_slice_without_its_import_path_is_refused(tmp_path: Path) -> None:
    src = write(tmp_path / "bare", {"aether.toml": 'runtime = "slice"\n', "bare.py": ""})
    with pytest.raises(BadRequestError, match="slice"):
        build(src, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="import path"):
        AppSpec(name="x", start="s", runtime="slice")
    with pytest.raises(ValueError, match='runtime "slice"'):
        AppSpec(name="x", start="s", runtime="python", slice="a:b")
