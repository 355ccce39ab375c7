"""The node's probes, run for real against this machine and against small stand-ins."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from aether.node.capabilities import NODE_FEATURES, cgroup_version, criu_check, fingerprint


def _script(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_criu_check_passes_when_criu_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _script(tmp_path, "criu", 'echo "Looks good."\nexit 0\n')
    monkeypatch.setenv("PATH", str(tmp_path))
    assert criu_check() == (True, "Looks good.")


def test_criu_check_reports_criu_s_own_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _script(
        tmp_path,
        "criu",
        'echo "Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds" >&2\n'
        'echo "Error (criu/crtools.c:260): Could not initialize kernel features detection." >&2\n'
        "exit 1\n",
    )
    monkeypatch.setenv("PATH", str(tmp_path))
    ok, detail = criu_check()
    assert not ok
    assert detail == "Error (criu/crtools.c:260): Could not initialize kernel features detection."


def test_criu_check_without_criu_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert criu_check() == (False, "criu is not installed (apt-get install criu)")


def test_cgroup_version_reads_the_hierarchy(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu memory\n")
    assert cgroup_version(v2) == ("v2" if os.access(v2, os.W_OK) else "none")
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "tasks").write_text("")
    assert cgroup_version(v1) == "v1"
    assert cgroup_version(tmp_path / "nothing") == "none"


def test_fingerprint_of_this_machine_is_consistent() -> None:
    caps = fingerprint(["process"], {"zone": "a"}, ["process"])
    assert caps.features == NODE_FEATURES
    assert caps.cpus >= 1 and caps.memory_mb > 0
    assert caps.cgroup == cgroup_version()
    assert caps.criu == criu_check()[0]
    if not caps.criu:
        assert caps.criu_detail  # an operator sees why
    assert caps.labels == {"zone": "a"}
