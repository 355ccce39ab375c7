"""The README's two commands install what each needs: `make run` the demo's, `make test` all.

``make -n -B`` prints what a fresh checkout would run, without running it; the
Debian packages of each profile are read from scripts/system-deps.sh itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_ONLY = {"qemu-system-x86", "etcd-server", "redis-server", "nodejs", "wrk"}


def _dry_run(target: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.fail("make is needed: apt-get install make")
    # as a user runs it, also when the suite itself runs under `make test`
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", target],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def _packages(profile: str) -> set[str]:
    """The Debian packages the profile checks for, as the script lists them."""
    script = (REPO / "scripts" / "system-deps.sh").read_text()
    lists = dict(re.findall(r"^(RUN|TEST)=\((.*?)^\)", script, re.M | re.S))
    names = lists["RUN"] + (lists["TEST"] if profile == "test" else "")
    return set(re.findall(r'"[^":]+:([^"]+)"', names))


def test_make_run_installs_only_what_the_demo_uses() -> None:
    lines = _dry_run("run")
    assert "bash scripts/system-deps.sh run" in lines
    installs = [line for line in lines if "pip install" in line and "--upgrade pip" not in line]
    assert installs == [".venv/bin/pip install --quiet -e ."], installs
    assert lines[-1] == ".venv/bin/aether up --demo"
    assert "bubblewrap" in _packages("run")
    assert not _packages("run") & TEST_ONLY


def test_make_test_installs_the_rest() -> None:
    lines = _dry_run("setup")
    assert "bash scripts/system-deps.sh test" in lines
    assert ".venv/bin/pip install --quiet -e '.[test]'" in lines
    assert _packages("test") >= TEST_ONLY
    assert _packages("run") <= _packages("test")
    script = (REPO / "scripts" / "system-deps.sh").read_text()
    assert 'if [ "$profile" = test ]; then' in script  # the kernel and PostgreSQL, by file


def test_an_unknown_profile_is_refused() -> None:
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "system-deps.sh"), "everything"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown profile 'everything' (run or test)" in done.stderr
