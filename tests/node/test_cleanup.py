"""The sweep of a (re)started node: which instance directories and artifacts go, which stay."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from aether.artifacts import pack
from aether.core.lifecycle import Command
from aether.model.app import AppSpec
from aether.model.cluster import InstanceRecord
from aether.node.cleanup import instance_dir_name, sweep, write_instance_file
from aether.node.runner import RequestLog

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def record(
    app: str, n: int = 0, *, digest: str = DIGEST_A, stateful: bool = False
) -> InstanceRecord:
    spec = AppSpec(
        name=app,
        start="python3 app.py",
        stateful=stateful,
        state_dir="data" if stateful else None,
    )
    return InstanceRecord(
        app=app,
        version=1,
        n=n,
        node="n1",
        tenant="default",
        deployment_id="d1",
        digest=digest,
        spec=spec,
        command=Command.ACTIVATE,
    )


def instance(data_dir: Path, rec: InstanceRecord, *, state: dict[str, str] | None = None) -> Path:
    """An instance directory as the runner leaves it (app/ and run/ the instance uid's)."""
    root = data_dir / "instances" / instance_dir_name(rec)
    (root / "app").mkdir(parents=True)
    (root / "run").mkdir()
    (root / "app" / "app.py").write_text("print('hi')\n")
    (root / "output.log").write_text("started\n")
    write_instance_file(root, rec)
    if state is not None:
        (root / "app" / "data").mkdir()
        for name, text in state.items():
            (root / "app" / "data" / name).write_text(text)
    return root


def hand_to_instance_uid(root: Path) -> None:
    """What ``_hand_over`` does, plus a directory the app made unreadable."""
    locked = root / "app" / "locked"
    locked.mkdir()
    (locked / "inside").write_text("x")
    for dirpath, dirnames, filenames in os.walk(root / "app"):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), 61234, 61234)
    os.lchown(root / "app", 61234, 61234)
    os.lchown(root / "run", 61234, 61234)
    locked.chmod(0)


def test_the_sweep_removes_what_no_assignment_holds_and_keeps_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    held = record("web", 0)
    held_root = instance(tmp_path, held)
    stale = record("web", 1)
    stale_root = instance(tmp_path, stale)
    old_version = record("api", 3, digest=DIGEST_B)
    old_root = instance(tmp_path, old_version)
    if os.geteuid() == 0:
        hand_to_instance_uid(old_root)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / f"{'a' * 64}.tar.gz").write_bytes(b"held")
    (artifacts / f"{'b' * 64}.tar.gz").write_bytes(b"stale")
    (artifacts / f"{'c' * 64}.tar.part1234").write_bytes(b"partial")

    with caplog.at_level(logging.INFO, logger="aether.node.cleanup"):
        result = sweep(tmp_path, [held], set())

    assert sorted(result.removed) == ["api@1-3", "web@1-1"]
    assert result.kept == {}
    assert not stale_root.exists() and not old_root.exists()
    # the held one is untouched, to its log
    assert (held_root / "app" / "app.py").read_text() == "print('hi')\n"
    assert (held_root / "output.log").read_text() == "started\n"
    assert sorted(p.name for p in artifacts.iterdir()) == [f"{'a' * 64}.tar.gz"]
    assert sorted(result.artifacts_removed) == [f"{'b' * 64}.tar.gz", f"{'c' * 64}.tar.part1234"]
    assert "api@1-3, web@1-1" in caplog.text
    # a second start finds nothing more to do
    again = sweep(tmp_path, [held], set())
    assert again.removed == [] and again.artifacts_removed == []
    assert held_root.is_dir()


def test_stateful_state_not_on_the_server_stays_with_one_line_saying_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unsaved = instance(tmp_path, record("db", 0, stateful=True), state={"count": "41"})
    saved = instance(tmp_path, record("db", 1, stateful=True), state={"count": "7"})
    stored = pack(saved / "app" / "data", tmp_path / "stored.tar.gz").digest
    empty = instance(tmp_path, record("db", 2, stateful=True))
    (empty / "app" / "data").mkdir()
    pending = instance(tmp_path, record("db", 3, stateful=True), state={"count": "9"})
    (pending / "snapshot.tar.gz").write_bytes(b"packed, upload cut short")
    stateless = instance(tmp_path, record("web", 0))

    log = RequestLog(tmp_path / "requests.log")
    log.remember("req-1", snapshot=stored)
    log.remember("req-2")
    snapshots = RequestLog(tmp_path / "requests.log").snapshots()  # as a restarted node reads it
    assert snapshots == {stored}

    with caplog.at_level(logging.WARNING, logger="aether.node.cleanup"):
        result = sweep(tmp_path, [], snapshots)

    assert sorted(result.removed) == ["db@1-1", "db@1-2", "web@1-0"]
    assert not saved.exists() and not empty.exists() and not stateless.exists()
    assert sorted(result.kept) == ["db@1-0", "db@1-3"]
    assert "differs from every checkpoint" in result.kept["db@1-0"]
    assert "never stored" in result.kept["db@1-3"]
    assert (unsaved / "app" / "data" / "count").read_text() == "41"
    assert (pending / "app" / "data" / "count").read_text() == "9"
    kept_lines = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(kept_lines) == 2
    assert all("keeping" in r.getMessage() for r in kept_lines)
    assert not list(unsaved.glob(".sweep-*"))  # the comparison leaves nothing behind


def test_a_directory_without_its_instance_file_is_kept_while_it_has_an_app(
    tmp_path: Path,
) -> None:
    older = tmp_path / "instances" / "legacy@1-0"
    (older / "app" / "state").mkdir(parents=True)
    (older / "app" / "state" / "db").write_text("rows")
    husk = tmp_path / "instances" / "legacy@1-1"  # what a torn removal leaves
    husk.mkdir()
    (husk / "output.log").write_text("bye\n")
    stray = tmp_path / "instances" / "notes.txt"
    stray.write_text("an operator's file")

    result = sweep(tmp_path, [], set())

    assert result.removed == ["legacy@1-1"]
    assert "instance.json" in result.kept["legacy@1-0"]
    assert (older / "app" / "state" / "db").read_text() == "rows"
    assert stray.read_text() == "an operator's file"


def test_a_link_in_place_of_a_directory_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    (tmp_path / "instances").mkdir()
    (tmp_path / "instances" / "evil@1-0").symlink_to(outside)
    stale = instance(tmp_path, record("web", 0))
    (stale / "app" / "escape").symlink_to(outside)

    sweep(tmp_path, [], set())

    assert not stale.exists()
    assert (outside / "precious").read_text() == "keep me"
