"""CycloneDX SBOMs: lockfile versions 1-3, Python dists, purls, licenses, determinism."""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path
from typing import Any

import pytest

from aether.artifacts.build import PYTHON_VENDOR_DIR, build
from aether.artifacts.sbom import (
    make_bom,
    npm_components,
    npm_purl,
    npm_sbom,
    pypi_purl,
    python_components,
    python_sbom,
    sbom_json,
)
from aether.errors import BadRequestError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SHA512 = "sha512-" + "A" * 86 + "=="  # 64 zero bytes


def by_purl(components: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["purl"]: c for c in components}


# --------------------------------------------------------------------------- purls


@pytest.mark.parametrize(
    ("name", "version", "purl"),
    [
        ("express", "5.1.0", "pkg:npm/express@5.1.0"),
        ("@types/node", "20.11.5", "pkg:npm/%40types/node@20.11.5"),
        ("@babel/core", "7.0.0-beta.4", "pkg:npm/%40babel/core@7.0.0-beta.4"),
        ("semver", "1.0.0+build.1", "pkg:npm/semver@1.0.0%2Bbuild.1"),
    ],
)
def test_npm_purl(name: str, version: str, purl: str) -> None:
    assert npm_purl(name, version) == purl


@pytest.mark.parametrize(
    ("name", "purl"),
    [
        ("Flask", "pkg:pypi/flask@1.0"),
        ("zope.interface", "pkg:pypi/zope-interface@1.0"),
        ("typing_extensions", "pkg:pypi/typing-extensions@1.0"),
        ("Foo__Bar-.baz", "pkg:pypi/foo-bar-baz@1.0"),
    ],
)
def test_pypi_purl_normalises_names(name: str, purl: str) -> None:
    assert pypi_purl(name, "1.0") == purl


# --------------------------------------------------------------------------- npm lockfiles

LOCK_V1: dict[str, Any] = {
    "name": "app",
    "version": "1.0.0",
    "lockfileVersion": 1,
    "requires": True,
    "dependencies": {
        "debug": {
            "version": "2.6.9",
            "integrity": SHA512,
            "requires": {"ms": "2.0.0"},
            "dependencies": {"ms": {"version": "2.0.0", "integrity": SHA512}},
        },
        "ms": {"version": "2.1.3"},
        "@scope/util": {"version": "3.0.0"},
        "jest": {"version": "29.0.0", "dev": True},
    },
}

LOCK_V3: dict[str, Any] = {
    "name": "app",
    "version": "1.0.0",
    "lockfileVersion": 3,
    "requires": True,
    "packages": {
        "": {"name": "app", "version": "1.0.0", "dependencies": {"debug": "^2"}},
        "node_modules/debug": {"version": "2.6.9", "license": "MIT", "integrity": SHA512},
        "node_modules/debug/node_modules/ms": {"version": "2.0.0", "license": "MIT"},
        "node_modules/ms": {"version": "2.1.3", "license": "MIT"},
        "node_modules/@scope/util": {"version": "3.0.0", "license": "(MIT OR Apache-2.0)"},
        "node_modules/lodash-alias": {"name": "lodash", "version": "4.17.21", "license": "MIT"},
        "node_modules/fsevents": {"version": "2.3.3", "optional": True, "license": "MIT"},
        "node_modules/jest": {"version": "29.0.0", "dev": True, "license": "MIT"},
        "node_modules/weird": {"version": "1.0.0", "license": "SEE LICENSE IN LICENSE.txt"},
        "node_modules/ws-link": {"resolved": "packages/ws", "link": True},
        "packages/ws": {"name": "ws-pkg", "version": "0.0.1"},
    },
}


def test_lockfile_v1_nested_scoped_and_dev() -> None:
    comps = by_purl(npm_components(LOCK_V1))
    assert set(comps) == {
        "pkg:npm/debug@2.6.9",
        "pkg:npm/ms@2.0.0",
        "pkg:npm/ms@2.1.3",
        "pkg:npm/%40scope/util@3.0.0",
    }
    scoped = comps["pkg:npm/%40scope/util@3.0.0"]
    assert (scoped["group"], scoped["name"], scoped["version"]) == ("@scope", "util", "3.0.0")
    assert comps["pkg:npm/debug@2.6.9"]["hashes"] == [{"alg": "SHA-512", "content": "00" * 64}]


@pytest.mark.parametrize("version", [2, 3])
def test_lockfile_v2_v3_packages(version: int) -> None:
    lock = {**LOCK_V3, "lockfileVersion": version}
    if version == 2:  # v2 carries both sections; the packages map wins
        lock["dependencies"] = {"bogus": {"version": "9.9.9"}}
    comps = by_purl(npm_components(lock))
    assert set(comps) == {
        "pkg:npm/debug@2.6.9",
        "pkg:npm/ms@2.0.0",
        "pkg:npm/ms@2.1.3",
        "pkg:npm/%40scope/util@3.0.0",
        "pkg:npm/lodash@4.17.21",  # alias: the real package name
        "pkg:npm/fsevents@2.3.3",
        "pkg:npm/weird@1.0.0",
    }
    assert comps["pkg:npm/ms@2.1.3"]["licenses"] == [{"license": {"id": "MIT"}}]
    assert comps["pkg:npm/%40scope/util@3.0.0"]["licenses"] == [
        {"expression": "(MIT OR Apache-2.0)"}
    ]
    assert "licenses" not in comps["pkg:npm/weird@1.0.0"]
    assert [c["purl"] for c in npm_components(lock)] == sorted(comps)


def test_installed_root_filters_skipped_optionals_and_reads_licenses(tmp_path: Path) -> None:
    for path, pkg in {
        "node_modules/debug": {"name": "debug", "license": "MIT"},
        "node_modules/debug/node_modules/ms": {"name": "ms", "license": "MIT"},
        "node_modules/ms": {"name": "ms", "license": {"type": "ISC"}},
        "node_modules/@scope/util": {"name": "@scope/util", "licenses": [{"type": "BSD-2-Clause"}]},
    }.items():
        (tmp_path / path).mkdir(parents=True)
        (tmp_path / path / "package.json").write_text(json.dumps(pkg))
    comps = by_purl(npm_components(LOCK_V1, installed_root=tmp_path))
    assert comps["pkg:npm/ms@2.1.3"]["licenses"] == [{"license": {"id": "ISC"}}]
    assert comps["pkg:npm/%40scope/util@3.0.0"]["licenses"] == [{"license": {"id": "BSD-2-Clause"}}]
    v3 = by_purl(npm_components(LOCK_V3, installed_root=tmp_path))
    assert "pkg:npm/fsevents@2.3.3" not in v3  # optional, not installed on this platform
    assert "pkg:npm/debug@2.6.9" in v3


def test_npm_sbom_reads_a_lockfile_and_refuses_garbage(tmp_path: Path) -> None:
    lockfile = tmp_path / "package-lock.json"
    lockfile.write_text(json.dumps(LOCK_V3))
    bom = npm_sbom(lockfile, app="app", version="1.0.0")
    assert bom["metadata"]["component"]["version"] == "1.0.0"
    lockfile.write_text("{not json")
    with pytest.raises(BadRequestError) as info:
        npm_sbom(lockfile, app="app")
    assert info.value.code == "bad_lockfile"


# --------------------------------------------------------------------------- python dists


def write_dist(site: Path, dirname: str, metadata: str) -> None:
    (site / dirname).mkdir(parents=True)
    (site / dirname / "METADATA").write_text(metadata)


def test_python_components_from_dist_info(tmp_path: Path) -> None:
    write_dist(
        tmp_path,
        "Flask-3.1.0.dist-info",
        "Metadata-Version: 2.3\nName: Flask\nVersion: 3.1.0\n"
        "Classifier: License :: OSI Approved :: BSD License\n",
    )
    write_dist(
        tmp_path,
        "zope.interface-7.0.dist-info",
        "Metadata-Version: 2.4\nName: zope.interface\nVersion: 7.0\nLicense-Expression: ZPL-2.1\n",
    )
    write_dist(
        tmp_path,
        "requests-2.32.0.dist-info",
        "Metadata-Version: 2.1\nName: requests\nVersion: 2.32.0\nLicense: Apache-2.0\n"
        "Classifier: License :: OSI Approved :: Apache Software License\n",
    )
    write_dist(
        tmp_path,
        "six-1.16.0.dist-info",
        "Metadata-Version: 2.1\nName: six\nVersion: 1.16.0\n"
        "Classifier: License :: OSI Approved :: MIT License\n\nLong description here\n",
    )
    (tmp_path / "broken-1.0.dist-info").mkdir()  # no METADATA: ignored
    comps = by_purl(python_components(tmp_path))
    assert list(comps) == [
        "pkg:pypi/flask@3.1.0",
        "pkg:pypi/requests@2.32.0",
        "pkg:pypi/six@1.16.0",
        "pkg:pypi/zope-interface@7.0",
    ]
    assert comps["pkg:pypi/flask@3.1.0"]["name"] == "Flask"
    assert comps["pkg:pypi/flask@3.1.0"]["licenses"] == [{"license": {"name": "BSD License"}}]
    assert comps["pkg:pypi/zope-interface@7.0"]["licenses"] == [{"license": {"name": "ZPL-2.1"}}]
    assert comps["pkg:pypi/requests@2.32.0"]["licenses"] == [{"license": {"id": "Apache-2.0"}}]
    assert comps["pkg:pypi/six@1.16.0"]["licenses"] == [{"license": {"id": "MIT"}}]
    assert python_components(tmp_path / "missing") == []


# --------------------------------------------------------------------------- document


def test_bom_shape_and_deterministic_serial() -> None:
    comps = npm_components(LOCK_V3)
    bom = make_bom("app", comps, version="1.0.0", runtime="node")
    assert bom["bomFormat"] == "CycloneDX"
    assert bom["specVersion"] == "1.5"
    assert bom["version"] == 1
    assert re.fullmatch(
        r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
        bom["serialNumber"],
    )
    assert "timestamp" not in bom["metadata"]
    assert bom["metadata"]["component"] == {
        "type": "application",
        "bom-ref": "app:app",
        "name": "app",
        "version": "1.0.0",
        "properties": [{"name": "aether:runtime", "value": "node"}],
    }
    refs = [c["bom-ref"] for c in bom["components"]]
    assert len(refs) == len(set(refs))
    same = make_bom("app", list(reversed(comps)), version="1.0.0", runtime="node")
    assert sbom_json(same) == sbom_json(bom)
    other = make_bom("app", comps[1:], version="1.0.0", runtime="node")
    assert other["serialNumber"] != bom["serialNumber"]
    assert json.loads(sbom_json(bom)) == bom


# --------------------------------------------------------------------------- real builds


def test_express_build_sbom_matches_lockfile(npm: None, build_cache: Path) -> None:
    first = build(EXAMPLES / "express-app", cache_dir=build_cache)
    second = build(EXAMPLES / "express-app", cache_dir=build_cache)
    assert first.sbom is not None and second.sbom is not None
    assert sbom_json(first.sbom) == sbom_json(second.sbom)
    lock = json.loads((EXAMPLES / "express-app/package-lock.json").read_text())
    expected = {
        npm_purl(entry.get("name") or path.rsplit("node_modules/", 1)[1], entry["version"])
        for path, entry in lock["packages"].items()
        if path and not entry.get("dev")
    }
    comps = by_purl(first.sbom["components"])
    assert set(comps) == expected
    express_version = lock["packages"]["node_modules/express"]["version"]
    express = comps[f"pkg:npm/express@{express_version}"]
    assert express["version"] == express_version
    assert express["licenses"] == [{"license": {"id": "MIT"}}]
    assert express["hashes"][0]["alg"] == "SHA-512"
    assert {"morgan", "ms"} <= {c["name"] for c in comps.values()}
    assert first.sbom["metadata"]["component"]["name"] == "express-app"
    assert first.sbom["metadata"]["component"]["version"] == "1.0.0"


def test_flask_build_sbom_matches_installed_dists(build_cache: Path) -> None:
    first = build(EXAMPLES / "flask-app", cache_dir=build_cache)
    second = build(EXAMPLES / "flask-app", cache_dir=build_cache)
    assert first.sbom is not None and second.sbom is not None
    assert sbom_json(first.sbom) == sbom_json(second.sbom)
    site = first.root / PYTHON_VENDOR_DIR
    installed = {
        pypi_purl(d.metadata["Name"], d.version)
        for d in importlib.metadata.distributions(path=[str(site)])
    }
    comps = by_purl(first.sbom["components"])
    assert set(comps) == installed
    flask = next(c for c in comps.values() if c["purl"].startswith("pkg:pypi/flask@"))
    assert flask["version"] == "3.1.3"  # pinned in requirements.txt
    assert {"werkzeug", "jinja2", "click"} <= {p.split("/")[1].split("@")[0] for p in comps}
    assert python_sbom(site, app="flask-app") == first.sbom
