"""Canonical packing: determinism, normalisation, manifest, refusals, round trip."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from aether.artifacts import (
    ManifestEntry,
    digest_bytes,
    manifest_json,
    pack,
    pack_bytes,
    parse_manifest_json,
    safe_extract,
)
from aether.errors import BadRequestError

FILES: dict[str, tuple[bytes, int]] = {
    "aether.toml": (b'[app]\nname = "demo"\n', 0o644),
    "main.py": (b"print('hello')\n", 0o644),
    "bin/run.sh": (b"#!/bin/sh\nexec python main.py\n", 0o755),
    "lib/pkg/__init__.py": (b"", 0o644),
    "lib/pkg/util.py": (b"X = 1\n" * 1000, 0o644),
    "data/blob.bin": (bytes(range(256)) * 4096, 0o644),
    "unicodé/naïve.txt": ("héllo wörld\n".encode(), 0o644),
    "a-b": (b"sorts before a/", 0o644),
    "deep/" + "/".join(f"level{i}" for i in range(20)) + "/" + "n" * 120: (b"long path", 0o644),
}
LINKS = {"current": "bin/run.sh", "lib/pkg/alias.py": "util.py", "lib/up": "../data"}
EMPTY_DIRS = ("empty", "data/cache")


def build_tree(
    root: Path,
    *,
    reverse: bool = False,
    file_modes: dict[int, int] | None = None,
    dir_mode: int = 0o755,
    mtime: int | None = None,
    owner: int | None = None,
) -> Path:
    """The same logical tree, with on-disk noise controlled by the arguments."""
    file_modes = file_modes or {}
    root.mkdir(parents=True)
    items = sorted(FILES.items(), reverse=reverse)
    for rel, (data, mode) in items:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.chmod(p, file_modes.get(mode, mode))
    for rel in sorted(EMPTY_DIRS, reverse=reverse):
        (root / rel).mkdir(parents=True, exist_ok=True)
    for rel, target in sorted(LINKS.items(), reverse=reverse):
        os.symlink(target, root / rel)
    for p in sorted(root.rglob("*"), reverse=True):
        if p.is_dir() and not p.is_symlink():
            os.chmod(p, dir_mode)
        if mtime is not None:
            os.utime(p, (mtime, mtime), follow_symlinks=False)
        if owner is not None:
            os.lchown(p, owner, owner)
    return root


def test_same_tree_twice_gives_identical_bytes(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "app")
    first = pack(root, tmp_path / "one.tar.gz")
    second = pack(root, tmp_path / "two.tar.gz", workers=1)
    assert first == second
    one = (tmp_path / "one.tar.gz").read_bytes()
    assert one == (tmp_path / "two.tar.gz").read_bytes()
    assert first.digest == digest_bytes(one)
    assert first.size_bytes == len(one)
    assert pack_bytes(root, workers=3) == one


def test_on_disk_noise_does_not_change_the_digest(tmp_path: Path) -> None:
    clean = pack(build_tree(tmp_path / "a"), tmp_path / "a.tgz")
    noisy_root = build_tree(
        tmp_path / "elsewhere" / "b",
        reverse=True,  # different creation order, so a different readdir order
        file_modes={0o644: 0o600, 0o755: 0o701},  # umask/permission noise, exec bit kept
        dir_mode=0o700,
        mtime=1_234_567_890,
        owner=4242 if os.geteuid() == 0 else None,
    )
    # A file with two hard links on disk is still two plain files in the archive.
    os.unlink(noisy_root / "lib/pkg/__init__.py")
    os.link(_empty(tmp_path), noisy_root / "lib/pkg/__init__.py")
    noisy = pack(noisy_root, tmp_path / "b.tgz")
    assert noisy.digest == clean.digest
    assert noisy.manifest == clean.manifest


def _empty(tmp_path: Path) -> Path:
    p = tmp_path / "empty-file"
    p.write_bytes(b"")
    return p


@pytest.mark.parametrize(
    "change",
    ["content", "exec_bit", "rename", "new_empty_dir", "link_target", "remove"],
)
def test_meaningful_changes_change_the_digest(tmp_path: Path, change: str) -> None:
    root = build_tree(tmp_path / "app")
    before = pack(root, tmp_path / "o.tgz").digest
    if change == "content":
        (root / "main.py").write_bytes(b"print('hellp')\n")
    elif change == "exec_bit":
        os.chmod(root / "main.py", 0o744)
    elif change == "rename":
        (root / "main.py").rename(root / "Main.py")
    elif change == "new_empty_dir":
        (root / "another").mkdir()
    elif change == "link_target":
        os.unlink(root / "current")
        os.symlink("main.py", root / "current")
    else:
        os.unlink(root / "a-b")
    assert pack(root, tmp_path / "o.tgz").digest != before


def test_archive_headers_are_normalised(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "app", mtime=1_600_000_000, file_modes={0o644: 0o664})
    data = pack_bytes(root)
    # gzip header: magic, deflate, no flags (so no file name), mtime 0, OS 255.
    assert data[:4] == b"\x1f\x8b\x08\x00"
    assert data[4:8] == b"\x00\x00\x00\x00"
    assert data[9] == 255
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.encode())
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        if m.isdir():
            assert m.mode == 0o755
        elif m.issym():
            assert m.mode == 0o777
        else:
            assert m.isreg()
            assert m.mode == FILES[m.name][1]
    assert {m.name: m.linkname for m in members if m.issym()} == LINKS
    assert {m.name for m in members if m.isdir()} >= set(EMPTY_DIRS)


def test_uncompressed_tar_is_stable(tmp_path: Path) -> None:
    """Golden value of the tar stream (independent of the zlib build): if this changes,
    every existing artifact's digest would change, so it must be deliberate."""
    root = tmp_path / "app"
    root.mkdir()
    (root / "a.txt").write_bytes(b"a\n")
    (root / "x").mkdir()
    (root / "x" / "run").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "x" / "run", 0o755)
    os.symlink("x/run", root / "l")
    raw = gzip.decompress(pack_bytes(root))
    assert len(raw) == 10240
    assert hashlib.sha256(raw).hexdigest() == GOLDEN_TAR_SHA256


GOLDEN_TAR_SHA256 = "4b6c126eab6a84959f51f652c4b071f846143e0b0017c0a01bc5c0afb4a92299"


def test_manifest_lists_files_only_with_hashes_and_modes(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "app")
    result = pack(root, tmp_path / "o.tgz")
    expected = sorted(
        (
            ManifestEntry(rel, len(data), hashlib.sha256(data).hexdigest(), mode)
            for rel, (data, mode) in FILES.items()
        ),
        key=lambda e: e.path.encode(),
    )
    assert list(result.manifest) == expected
    assert result.file_count == len(FILES)


def test_manifest_json_is_canonical_and_round_trips(tmp_path: Path) -> None:
    result = pack(build_tree(tmp_path / "app"), tmp_path / "o.tgz")
    text = manifest_json(result.manifest)
    assert text == manifest_json(reversed(result.manifest))
    assert b" " not in text.replace("héllo".encode(), b"")
    assert text.startswith(b'[{"mode":420,"path":"a-b","sha256":"')
    assert parse_manifest_json(text) == list(result.manifest)
    for bad in (b"{}", b"[1]", b'[{"path":"a"}]', b"not json"):
        with pytest.raises(BadRequestError) as exc:
            parse_manifest_json(bad)
        assert exc.value.code == "bad_manifest"


def test_round_trip_pack_then_extract(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "app")
    result = pack(root, tmp_path / "a.tgz")
    dest = tmp_path / "restored"
    safe_extract(tmp_path / "a.tgz", dest)

    def snapshot(base: Path) -> dict[str, tuple[str, int, bytes | str]]:
        out: dict[str, tuple[str, int, bytes | str]] = {}
        for p in base.rglob("*"):
            st = p.lstat()
            rel = p.relative_to(base).as_posix()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), p.read_bytes())
        return out

    assert snapshot(dest) == snapshot(root)
    # Re-packing the extracted tree reproduces the artifact exactly.
    assert pack(dest, tmp_path / "b.tgz").digest == result.digest
    assert (dest / "current").resolve() == (dest / "bin/run.sh").resolve()


def test_symlink_inside_root_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "app"
    (root / "d").mkdir(parents=True)
    os.symlink("..", root / "d" / "up")  # points at the root itself: fine
    os.symlink("missing", root / "dangling")  # dangling but inside: fine
    with tarfile.open(fileobj=io.BytesIO(pack_bytes(root)), mode="r:gz") as tf:
        assert {m.name: m.linkname for m in tf if m.issym()} == {
            "d/up": "..",
            "dangling": "missing",
        }


@pytest.mark.parametrize(
    "links",
    [
        {"etc": "/etc/passwd"},
        {"esc": "../outside"},
        {"d/esc": "../../outside"},
        {"abs_inside": "ABS_ROOT/main.py"},
        # Lexically inside, but ``d`` resolves to the root so ``d/..`` is its parent.
        {"d": ".", "x": "d/../outside"},
    ],
)
def test_symlink_leaving_root_is_refused(tmp_path: Path, links: dict[str, str]) -> None:
    root = tmp_path / "app"
    root.mkdir()
    (root / "main.py").write_text("x")
    (tmp_path / "outside").write_text("secret")
    for rel, target in links.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target.replace("ABS_ROOT", str(root)), root / rel)
    out = tmp_path / "o.tgz"
    with pytest.raises(BadRequestError) as exc:
        pack(root, out)
    assert exc.value.code == "link_escape"
    assert "symlink" in exc.value.message
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.tgz")] == []


def test_escaping_symlink_can_be_ignored(tmp_path: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()
    os.symlink("/etc/passwd", root / "passwd")
    (root / ".aetherignore").write_text("passwd\n")
    assert pack(root, tmp_path / "o.tgz").file_count == 1


def test_special_files_are_refused_unless_ignored(tmp_path: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()
    os.mkfifo(root / "pipe")
    with pytest.raises(BadRequestError) as exc:
        pack(root, tmp_path / "o.tgz")
    assert exc.value.code == "special_file"
    assert "pipe" in exc.value.message
    assert pack(root, tmp_path / "o.tgz", extra_ignore=["pipe"]).file_count == 0


def test_output_inside_root_is_not_packed(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "app")
    reference = pack(root, tmp_path / "ref.tgz").digest
    first = pack(root, root / "dist" / "app.tgz")
    second = pack(root, root / "dist" / "app.tgz")
    assert first.digest == second.digest
    shutil.rmtree(root / "dist")
    assert pack(root, tmp_path / "again.tgz").digest == reference


def test_empty_tree_packs_and_extracts(tmp_path: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()
    result = pack(root, tmp_path / "o.tgz")
    assert result.file_count == 0 and result.manifest == ()
    safe_extract(tmp_path / "o.tgz", tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []


def test_non_utf8_file_name_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()
    (Path(os.fsdecode(bytes(root) + b"/bad\xff"))).write_text("x")
    with pytest.raises(BadRequestError) as exc:
        pack(root, tmp_path / "o.tgz")
    assert exc.value.code == "bad_path"


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BadRequestError):
        pack(tmp_path / "nope", tmp_path / "o.tgz")
