"""CycloneDX 1.5 JSON SBOMs for built apps, from npm lockfiles or installed Python dists.

An SBOM answers "which third-party code is inside this artifact?", so it lists
what the build actually installed: npm packages marked ``dev`` are left out
(the build runs ``--omit=dev``), and when the installed tree is at hand, lock
entries that npm skipped (optional packages for another platform) are left out
too. Python components come from the ``*.dist-info/METADATA`` files that pip
wrote into the vendor directory, which is the ground truth of what ships.

The document is deterministic: no timestamp, components sorted by purl, and a
``serialNumber`` that is a name-based UUID of the content, so the same build
gives byte-identical SBOMs (and the SBOM can be signed or compared like the
artifact itself).
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from email.parser import HeaderParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aether
from aether.errors import BadRequestError

__all__ = [
    "SPEC_VERSION",
    "make_bom",
    "npm_components",
    "npm_purl",
    "npm_sbom",
    "pypi_purl",
    "python_components",
    "python_sbom",
    "sbom_json",
]

SPEC_VERSION = "1.5"

#: Namespace of the name-based serial numbers: a fixed UUID, so that equal
#: content gives an equal serial on every machine.
_SERIAL_NAMESPACE = uuid.UUID("6f1d8a52-3c7e-4b0a-9d4f-ae7e4e5b0b15")

#: SPDX identifiers common in npm and PyPI metadata. CycloneDX validators check
#: ``license.id`` against the SPDX list, so anything else goes in ``license.name``.
_SPDX_IDS = {
    s.lower(): s
    for s in (
        "0BSD",
        "AFL-2.1",
        "AGPL-3.0-only",
        "AGPL-3.0-or-later",
        "Apache-1.1",
        "Apache-2.0",
        "Artistic-2.0",
        "BlueOak-1.0.0",
        "BSD-2-Clause",
        "BSD-3-Clause",
        "BSL-1.0",
        "CC-BY-3.0",
        "CC-BY-4.0",
        "CC0-1.0",
        "EPL-1.0",
        "EPL-2.0",
        "GPL-2.0-only",
        "GPL-2.0-or-later",
        "GPL-3.0-only",
        "GPL-3.0-or-later",
        "HPND",
        "ISC",
        "LGPL-2.1-only",
        "LGPL-2.1-or-later",
        "LGPL-3.0-only",
        "LGPL-3.0-or-later",
        "MIT",
        "MIT-0",
        "MPL-2.0",
        "PSF-2.0",
        "Python-2.0",
        "Unlicense",
        "WTFPL",
        "Zlib",
    )
}

#: Trove classifiers (after ``License :: OSI Approved :: ``) that name one SPDX id.
_CLASSIFIER_IDS = {
    "MIT License": "MIT",
    "MIT No Attribution License (MIT-0)": "MIT-0",
    "ISC License (ISCL)": "ISC",
    "Apache Software License 2.0": "Apache-2.0",
    "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "Python Software Foundation License": "PSF-2.0",
    "The Unlicense (Unlicense)": "Unlicense",
    "Zero-Clause BSD (0BSD)": "0BSD",
    "Boost Software License 1.0 (BSL-1.0)": "BSL-1.0",
}

_HASH_ALGS = {"sha1": "SHA-1", "sha256": "SHA-256", "sha384": "SHA-384", "sha512": "SHA-512"}


def sbom_json(bom: Mapping[str, Any]) -> bytes:
    """Canonical bytes of an SBOM (sorted keys, no spaces): what gets hashed, stored or signed."""
    return json.dumps(bom, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def npm_purl(name: str, version: str) -> str:
    """``pkg:npm/%40scope/name@version``: purl percent-encodes the scope's ``@``."""
    if name.startswith("@") and "/" in name:
        scope, _, base = name.partition("/")
        path = f"{quote(scope, safe='')}/{quote(base, safe='')}"
    else:
        path = quote(name, safe="")
    return f"pkg:npm/{path}@{quote(version, safe='')}"


def _normalise_pypi(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pypi_purl(name: str, version: str) -> str:
    """``pkg:pypi/name@version`` with the PEP 503 normalised name, as the purl spec requires."""
    return f"pkg:pypi/{quote(_normalise_pypi(name), safe='')}@{quote(version, safe='')}"


def _licenses(value: str | None) -> list[dict[str, Any]] | None:
    """CycloneDX ``licenses`` for one declared license string (id, expression or name)."""
    if value is None:
        return None
    text = value.strip()
    # npm's "UNLICENSED" (proprietary) and "SEE LICENSE IN <file>" name no licence.
    if not text or text.upper() in {"UNKNOWN", "UNLICENSED"} or text.upper().startswith("SEE "):
        return None
    known = _SPDX_IDS.get(text.lower())
    if known:
        return [{"license": {"id": known}}]
    if re.search(r"\s(OR|AND|WITH)\s", text):
        return [{"expression": text}]
    # Some distributions put the whole licence text in this field: keep a name, not a page.
    first = text.splitlines()[0].strip()
    if len(text) > 100 or not first:
        return None
    return [{"license": {"name": first}}]


def _integrity_hashes(integrity: object) -> list[dict[str, str]]:
    """SRI strings (``sha512-<base64>``, space-separated) as CycloneDX hex hashes."""
    if not isinstance(integrity, str):
        return []
    out = []
    for item in integrity.split():
        alg, _, b64 = item.partition("-")
        name = _HASH_ALGS.get(alg.lower())
        if not name or not b64:
            continue
        try:
            content = base64.b64decode(b64, validate=True).hex()
        except ValueError:
            continue
        out.append({"alg": name, "content": content})
    return out


def _installed_license(pkg_dir: Path) -> str | None:
    """The ``license`` of an installed package.json (old locks do not record it)."""
    try:
        data = json.loads((pkg_dir / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    value = data.get("license")
    if isinstance(value, dict):
        value = value.get("type")
    if value is None and isinstance(data.get("licenses"), list):  # pre-2015 form
        types: list[str] = [
            item["type"]
            for item in data["licenses"]
            if isinstance(item, dict) and isinstance(item.get("type"), str)
        ]
        value = " OR ".join(types) if len(types) > 1 else (types[0] if types else None)
    return value if isinstance(value, str) else None


def _npm_component(
    name: str, entry: Mapping[str, Any], installed_dir: Path | None
) -> dict[str, Any] | None:
    version = entry.get("version")
    if not isinstance(version, str) or not version:
        return None
    purl = npm_purl(name, version)
    component: dict[str, Any] = {"type": "library", "bom-ref": purl}
    if name.startswith("@") and "/" in name:
        group, _, base = name.partition("/")
        component["group"] = group
        component["name"] = base
    else:
        component["name"] = name
    component["version"] = version
    license_value = entry.get("license")
    if not isinstance(license_value, str) and installed_dir is not None:
        license_value = _installed_license(installed_dir)
    licenses = _licenses(license_value if isinstance(license_value, str) else None)
    if licenses:
        component["licenses"] = licenses
    hashes = _integrity_hashes(entry.get("integrity"))
    if hashes:
        component["hashes"] = hashes
    component["purl"] = purl
    return component


def _v1_entries(
    deps: Mapping[str, Any], prefix: str
) -> Iterable[tuple[str, str, Mapping[str, Any]]]:
    """(install path, name, entry) of a lockfileVersion 1 ``dependencies`` tree."""
    for name, entry in deps.items():
        if not isinstance(entry, Mapping):
            continue
        path = f"{prefix}node_modules/{name}"
        yield path, name, entry
        nested = entry.get("dependencies")
        if isinstance(nested, Mapping):
            yield from _v1_entries(nested, path + "/")


def _v2_entries(packages: Mapping[str, Any]) -> Iterable[tuple[str, str, Mapping[str, Any]]]:
    """(install path, name, entry) of a lockfileVersion 2/3 ``packages`` map."""
    for path, entry in packages.items():
        if not isinstance(entry, Mapping) or "node_modules/" not in path:
            continue  # "" is the app itself; other keys are workspace sources
        if entry.get("link"):
            continue  # a symlink to a workspace package listed under its own key
        name = entry.get("name")
        if not isinstance(name, str):  # absent unless the install name is an alias
            name = path.rsplit("node_modules/", 1)[1]
        yield path, name, entry


def npm_components(
    lock: Mapping[str, Any], *, installed_root: Path | None = None
) -> list[dict[str, Any]]:
    """Components of a ``package-lock.json`` / ``npm-shrinkwrap.json`` (lockfileVersion 1-3).

    ``dev`` entries are skipped (the build omits them). With ``installed_root``
    (the directory holding ``node_modules``), an entry counts only if npm actually
    installed it there, and licenses missing from the lock are read from the
    installed ``package.json``.
    """
    version = lock.get("lockfileVersion", 1)
    packages = lock.get("packages")
    if isinstance(packages, Mapping) and version != 1:
        entries = list(_v2_entries(packages))
    elif isinstance(lock.get("dependencies"), Mapping):
        entries = list(_v1_entries(lock["dependencies"], ""))
    else:
        entries = []
    found: dict[str, dict[str, Any]] = {}
    for path, name, entry in entries:
        if entry.get("dev") is True or entry.get("extraneous") is True:
            continue
        installed_dir = None
        if installed_root is not None:
            installed_dir = installed_root / path
            if not installed_dir.is_dir():
                continue
        component = _npm_component(name, entry, installed_dir)
        if component is not None:
            found.setdefault(component["purl"], component)
    return [found[k] for k in sorted(found)]


def _dist_licenses(meta: Any) -> list[dict[str, Any]] | None:
    """Licenses of one METADATA: ``License-Expression``, else ``License``, else classifiers."""
    expression = meta.get("License-Expression")
    if isinstance(expression, str) and expression.strip():
        return _licenses(expression)
    from_field = _licenses(meta.get("License"))
    if from_field:
        return from_field
    out: list[dict[str, Any]] = []
    for classifier in meta.get_all("Classifier") or []:
        parts = [p.strip() for p in str(classifier).split("::")]
        if len(parts) < 2 or parts[0] != "License":
            continue
        label = parts[-1]
        if label in {"OSI Approved", "Other/Proprietary License"} and len(parts) == 2:
            continue
        spdx = _CLASSIFIER_IDS.get(label)
        out.append({"license": {"id": spdx} if spdx else {"name": label}})
    return out or None


def python_components(site: Path) -> list[dict[str, Any]]:
    """Components of the distributions installed in ``site`` (a ``pip --target`` dir)."""
    found: dict[str, dict[str, Any]] = {}
    if not site.is_dir():
        return []
    for dist_info in sorted(site.glob("*.dist-info")):
        try:
            text = (dist_info / "METADATA").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        meta = HeaderParser().parsestr(text)
        name, version = meta.get("Name"), meta.get("Version")
        if not isinstance(name, str) or not isinstance(version, str):
            continue
        name, version = name.strip(), version.strip()
        purl = pypi_purl(name, version)
        component: dict[str, Any] = {
            "type": "library",
            "bom-ref": purl,
            "name": name,
            "version": version,
        }
        licenses = _dist_licenses(meta)
        if licenses:
            component["licenses"] = licenses
        component["purl"] = purl
        found.setdefault(purl, component)
    return [found[k] for k in sorted(found)]


def make_bom(
    app: str,
    components: Iterable[Mapping[str, Any]],
    *,
    version: str | None = None,
    runtime: str | None = None,
) -> dict[str, Any]:
    """A CycloneDX 1.5 document for ``app``; its serialNumber is a UUID of its content."""
    app_component: dict[str, Any] = {"type": "application", "bom-ref": f"app:{app}", "name": app}
    if version:
        app_component["version"] = version
    if runtime:
        app_component["properties"] = [{"name": "aether:runtime", "value": runtime}]
    body: dict[str, Any] = {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "version": 1,
        "metadata": {
            "tools": {
                "components": [
                    {"type": "application", "name": "aether", "version": aether.__version__}
                ]
            },
            "component": app_component,
        },
        "components": sorted(
            (dict(c) for c in components), key=lambda c: (str(c.get("purl", "")), c["name"])
        ),
    }
    serial = uuid.uuid5(_SERIAL_NAMESPACE, sbom_json(body).decode())
    return {
        "bomFormat": body["bomFormat"],
        "specVersion": body["specVersion"],
        "serialNumber": serial.urn,
        "version": body["version"],
        "metadata": body["metadata"],
        "components": body["components"],
    }


def npm_sbom(
    lockfile: Path,
    *,
    app: str,
    version: str | None = None,
    installed_root: Path | None = None,
) -> dict[str, Any]:
    """SBOM of a Node.js app from its lockfile (see ``npm_components``)."""
    try:
        lock = json.loads(lockfile.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadRequestError(f"cannot read {lockfile}: {exc}", code="bad_lockfile") from exc
    if not isinstance(lock, dict):
        raise BadRequestError(f"{lockfile} is not a JSON object", code="bad_lockfile")
    components = npm_components(lock, installed_root=installed_root)
    return make_bom(app, components, version=version, runtime="node")


def python_sbom(site: Path, *, app: str, version: str | None = None) -> dict[str, Any]:
    """SBOM of a Python app from the distributions vendored in ``site``."""
    return make_bom(app, python_components(site), version=version, runtime="python")
