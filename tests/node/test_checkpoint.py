"""Checkpoints of a real process: the cooperative protocol, the CRIU path and its fallback.

The app is a small Python process started by the real ``process`` driver. CRIU
cannot dump here (``criu check`` fails on this VM's vDSO), so the CRIU path runs
against stand-in ``criu`` scripts: one that fails the way the real one does (the
node must fall back to the cooperative protocol) and one that "dumps" by writing
images and ending the process (the snapshot must carry the images).
"""

from __future__ import annotations

import asyncio
import io
import stat
import sys
import tarfile
import time
from pathlib import Path

import pytest

from aether.artifacts import digest_file, pack
from aether.errors import UnsafeArchiveError
from aether.node.checkpoint import CRIU_DIR, checkpoint, criu_meta, restore_snapshot
from aether.node.drivers.base import Handle, LaunchSpec
from aether.node.drivers.process import ProcessDriver

APP = """
import os, pathlib, signal, sys, time
state = pathlib.Path(os.environ["AETHER_STATE_DIR"])
ack = pathlib.Path(os.environ["AETHER_CHECKPOINT_ACK"])
mode = sys.argv[1]

def on_usr1(*_):
    (state / "count").write_text("41")
    ack.touch()

def on_term(*_):
    (state / "stopped").write_text("by SIGTERM")
    if mode == "ignore":
        (state / "count").write_text("40")
    sys.exit(0)

signal.signal(signal.SIGUSR1, on_usr1 if mode == "ack" else signal.SIG_IGN)
signal.signal(signal.SIGTERM, on_term)
(state / "ready").write_text("yes")
while True:
    time.sleep(0.05)
"""


async def start_app(tmp: Path, mode: str) -> tuple[ProcessDriver, Handle, Path, Path]:
    state, ack = tmp / "app" / "data", tmp / "checkpoint.ack"
    state.mkdir(parents=True)
    (tmp / "app" / "app.py").write_text(APP)
    driver = ProcessDriver()
    handle = await driver.start(
        LaunchSpec(
            command=f"{sys.executable} app.py {mode}",
            cwd=tmp / "app",
            env={"AETHER_STATE_DIR": str(state), "AETHER_CHECKPOINT_ACK": str(ack)},
            log_path=tmp / "output.log",
        )
    )
    deadline = time.monotonic() + 10
    while not (state / "ready").exists():
        assert handle.returncode is None, (tmp / "output.log").read_text()
        assert time.monotonic() < deadline, "the app did not start"
        await asyncio.sleep(0.02)
    return driver, handle, state, ack


def files_of(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


async def nothing_to_stop() -> None:
    return None


def fake_criu(directory: Path, body: str) -> Path:
    path = directory / "criu"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


async def test_cooperative_checkpoint_waits_for_the_apps_acknowledgement(tmp_path: Path) -> None:
    driver, handle, state, ack = await start_app(tmp_path, "ack")
    made = await checkpoint(
        handle=handle,
        stop=lambda: driver.stop(handle, grace=5),
        state_dir=state,
        ack=ack,
        out=tmp_path / "snap.tar.gz",
        timeout=10,
        use_criu=False,
    )
    assert handle.returncode is not None  # stopped
    assert made.kind == "cooperative"
    assert made.detail == "the app flushed its state (SIGUSR1 acknowledged)"
    assert made.digest == digest_file(made.archive)[0]
    assert made.size_bytes == made.archive.stat().st_size
    files = files_of(made.archive)
    assert files["count"] == b"41"  # written on SIGUSR1
    assert files["stopped"] == b"by SIGTERM"  # then stopped as always
    assert not ack.exists()


async def test_no_acknowledgement_still_captures_what_the_app_left(tmp_path: Path) -> None:
    driver, handle, state, ack = await start_app(tmp_path, "ignore")
    made = await checkpoint(
        handle=handle,
        stop=lambda: driver.stop(handle, grace=5),
        state_dir=state,
        ack=ack,
        out=tmp_path / "snap.tar.gz",
        timeout=0.3,
        use_criu=False,
    )
    assert "no acknowledgement of SIGUSR1 within 0.3s" in made.detail
    assert files_of(made.archive)["count"] == b"40"  # what it flushed on SIGTERM


async def test_same_state_packs_to_the_same_digest(tmp_path: Path) -> None:
    state = tmp_path / "data"
    (state / "sub").mkdir(parents=True)
    (state / "count").write_text("7")
    (state / "sub" / "log").write_text("a\nb\n")
    digests = []
    for i in range(2):
        made = await checkpoint(
            handle=None,
            stop=nothing_to_stop,
            state_dir=state,
            ack=tmp_path / "ack",
            out=tmp_path / f"snap{i}.tar.gz",
            timeout=1,
            use_criu=False,
        )
        assert made.detail == "the app was not running: its state directory as it left it"
        digests.append(made.digest)
        (state / "count").touch()  # a new mtime changes nothing
    assert digests[0] == digests[1]


async def test_failing_criu_dump_falls_back_to_the_cooperative_protocol(tmp_path: Path) -> None:
    criu = fake_criu(
        tmp_path,
        'echo "Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds" >&2\nexit 1\n',
    )
    driver, handle, state, ack = await start_app(tmp_path, "ack")
    made = await checkpoint(
        handle=handle,
        stop=lambda: driver.stop(handle, grace=5),
        state_dir=state,
        ack=ack,
        out=tmp_path / "snap.tar.gz",
        timeout=10,
        use_criu=True,
        criu_binary=str(criu),
    )
    assert made.kind == "cooperative"
    assert "CRIU dump failed (criu dump exited 1: Error (criu/vdso.c:381)" in made.detail
    assert made.detail.endswith("the app flushed its state (SIGUSR1 acknowledged)")
    assert files_of(made.archive)["count"] == b"41"
    assert not any(name.startswith(CRIU_DIR) for name in files_of(made.archive))


async def test_missing_criu_falls_back_too(tmp_path: Path) -> None:
    driver, handle, state, ack = await start_app(tmp_path, "ack")
    made = await checkpoint(
        handle=handle,
        stop=lambda: driver.stop(handle, grace=5),
        state_dir=state,
        ack=ack,
        out=tmp_path / "snap.tar.gz",
        timeout=10,
        use_criu=True,
        criu_binary=str(tmp_path / "no-such-criu"),
    )
    assert made.kind == "cooperative" and "could not run" in made.detail


async def test_criu_snapshot_carries_the_images_beside_the_state(tmp_path: Path) -> None:
    # a stand-in that does what a successful dump does: images in -D, the process ended
    criu = fake_criu(
        tmp_path,
        'while [ $# -gt 0 ]; do case "$1" in -t) pid=$2;; -D) dir=$2;; esac; shift; done\n'
        'echo "core of $pid" > "$dir/core-$pid.img"\nkill -9 "$pid"\nexit 0\n',
    )
    driver, handle, state, ack = await start_app(tmp_path, "ack")
    (state / "count").write_text("9")
    made = await checkpoint(
        handle=handle,
        stop=lambda: driver.stop(handle, grace=5),
        state_dir=state,
        ack=ack,
        out=tmp_path / "snap.tar.gz",
        timeout=10,
        use_criu=True,
        criu_binary=str(criu),
        meta={"port": 4242},
    )
    assert made.kind == "criu" and made.detail == "process dumped with CRIU"
    files = files_of(made.archive)
    assert files["count"] == b"9"  # no SIGUSR1 was needed
    assert files[f"{CRIU_DIR}/core-{handle.pid}.img"] == f"core of {handle.pid}\n".encode()
    assert not (state / CRIU_DIR).exists()  # the images left the state directory

    # restoring puts the state back and the images aside for `criu restore`
    target, images = tmp_path / "restored" / "data", tmp_path / "restored" / "criu-images"
    assert restore_snapshot(made.archive, target, images) is True
    assert (target / "count").read_text() == "9" and not (target / CRIU_DIR).exists()
    assert (images / f"core-{handle.pid}.img").exists()
    assert criu_meta(images) == {"port": 4242}


def test_restore_replaces_the_state_directory(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "count").write_text("5")
    archive = tmp_path / "snap.tar.gz"
    pack(source, archive)
    target = tmp_path / "app" / "data"
    target.mkdir(parents=True)
    (target / "stale").write_text("from the artifact")
    assert restore_snapshot(archive, target, tmp_path / "images") is False
    assert sorted(p.name for p in target.iterdir()) == ["count"]
    assert (target / "count").read_text() == "5"


def test_a_hostile_snapshot_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"owned"
        info = tarfile.TarInfo("../../escape")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(UnsafeArchiveError):
        restore_snapshot(archive, tmp_path / "app" / "data", tmp_path / "images")
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "app" / "data").exists()
