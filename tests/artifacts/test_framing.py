"""The ``aether-tar-gz/2`` framing, the client's pack cache and the server's member reuse.

- the same tree gives the same bytes packed by the client (with or without its
  cache) and assembled by the server from blobs (with or without cached members);
- GNU tar and gzip read the multi-member archive; ``/1`` archives (one gzip
  stream, written before) still extract;
- the pack cache re-reads a file only when its stat changed, and a damaged cache
  never changes an artifact.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from aether.artifacts import PackPlan, digest_bytes, pack, pack_bytes, safe_extract, write_plan
from aether.artifacts.framing import data_member, gzip_member, window_bits
from aether.artifacts.members import MemberCache
from aether.artifacts.pack_cache import PackCache
from aether.artifacts.plan import PLAN_FORMAT_V1
from aether.errors import DigestMismatchError, UnsafeArchiveError
from tests.artifacts.test_artifacts_pack import build_tree

LATER = 10**10  # ns: a save "10 s later", so the files just written are not racy


def blob_opener(root: Path, plan: PackPlan) -> Callable[[str], IO[bytes]]:
    blobs = {e.sha256: (root / e.path).read_bytes() for e in plan.files()}
    return lambda sha: io.BytesIO(blobs[sha])


def cached_pack(root: Path, out: Path, cache_dir: Path, *, later: bool = True) -> bytes:
    cache = PackCache.load(cache_dir, root)
    pack(root, out, cache=cache, durable=False)
    cache.save(time.time_ns() + (LATER if later else 0))
    return out.read_bytes()


def read_bytes_of_process() -> int:
    """Bytes this process has read through read(2) and friends (``/proc/self/io`` rchar)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


# -- the framing ---------------------------------------------------------------------


def test_members_are_gzip_and_depend_only_on_the_content() -> None:
    for data in (b"", b"x", b"hello\n" * 5000, os.urandom(70_000)):
        member = data_member(data)
        assert member == data_member(bytes(data))
        assert member[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
        assert gzip.decompress(member) == data + b"\0" * (-len(data) % 512)
        assert gzip.decompress(gzip_member(data)) == data
    assert [window_bits(n) for n in (0, 1, 512, 513, 32768, 32769, 10**9)] == [
        9,
        9,
        9,
        10,
        15,
        15,
        15,
    ]


def test_client_pack_and_server_assembly_give_the_same_bytes(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "app")
    (root / "big.bin").write_bytes(os.urandom(9 << 20))  # streamed, not held whole
    (root / "empty-file").write_bytes(b"")
    plain = pack_bytes(root)
    packed = pack(root, tmp_path / "a.tar.gz")
    assert (tmp_path / "a.tar.gz").read_bytes() == plain
    assert packed.plan is not None
    # cold and warm pack cache
    assert cached_pack(root, tmp_path / "b.tar.gz", tmp_path / "cache") == plain
    assert cached_pack(root, tmp_path / "c.tar.gz", tmp_path / "cache") == plain
    # the server: from blobs, then with the members cached: only the big file is read
    plan = PackPlan.from_json(packed.plan.to_json())
    members = MemberCache()
    out = io.BytesIO()
    built = write_plan(plan, out, blob_opener(root, plan), members)
    assert out.getvalue() == plain and built.digest == packed.digest == digest_bytes(plain)
    big = next(e for e in plan.files() if e.path == "big.bin")
    small = [e for e in plan.files() if 0 < e.size <= 8 << 20]
    assert all(members.get(e.sha256) is not None for e in small)
    assert members.get(big.sha256) is None  # too large to keep: read from its blob each time
    everything = blob_opener(root, plan)
    read: list[str] = []

    def only_uncached(sha: str) -> IO[bytes]:
        read.append(sha)
        return everything(sha)

    out = io.BytesIO()
    assert write_plan(plan, out, only_uncached, members).digest == packed.digest
    assert out.getvalue() == plain and read == [big.sha256]


def test_assembly_from_wrong_content_is_refused_even_with_members(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "app")
    packed = pack(root, tmp_path / "a.tar.gz")
    assert packed.plan is not None
    plan = packed.plan
    victim = next(e for e in plan.files() if e.size > 0)
    blobs = {e.sha256: (root / e.path).read_bytes() for e in plan.files()}
    blobs[victim.sha256] = blobs[victim.sha256][:-1] + b"?"
    members = MemberCache()
    with pytest.raises(DigestMismatchError):
        write_plan(plan, io.BytesIO(), lambda sha: io.BytesIO(blobs[sha]), members)
    assert members.get(victim.sha256) is None  # a member is kept only once verified


def test_gnu_tar_and_gzip_read_the_archive(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "app")
    archive = tmp_path / "a.tar.gz"
    pack(root, archive)
    subprocess.run(["gzip", "-t", str(archive)], check=True)
    dest = tmp_path / "gnu"
    dest.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(dest)], check=True)
    for path in root.rglob("*"):
        twin = dest / path.relative_to(root)
        if path.is_symlink():
            assert os.readlink(twin) == os.readlink(path)
        elif path.is_file():
            assert twin.read_bytes() == path.read_bytes()
    with tarfile.open(archive) as tf:  # and Python's tarfile, seeking mode
        assert sorted(tf.getnames()) == sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_old_single_stream_artifacts_still_extract(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "app")
    packed = pack(root, tmp_path / "new.tar.gz")
    assert packed.plan is not None
    v1 = PackPlan(packed.plan.entries, PLAN_FORMAT_V1)
    old = tmp_path / "old.tar.gz"
    with old.open("wb") as f:
        built = write_plan(v1, f, blob_opener(root, v1))
    assert built.digest != packed.digest  # another framing, another address
    data = old.read_bytes()
    assert data[:2] == b"\x1f\x8b" and data.count(b"\x1f\x8b\x08\x00") == 1  # one stream
    safe_extract(old, tmp_path / "out")
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert (tmp_path / "out" / path.relative_to(root)).read_bytes() == path.read_bytes()


def test_a_hostile_member_appended_after_the_end_is_refused(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "app")
    archive = tmp_path / "a.tar.gz"
    pack(root, archive)
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tf:
        info = tarfile.TarInfo("../escaped")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"evil"))
    with archive.open("ab") as f:
        f.write(gzip_member(evil.getvalue()))
    dest = tmp_path / "box" / "out"
    dest.parent.mkdir()
    with pytest.raises(UnsafeArchiveError) as refused:
        safe_extract(archive, dest)
    assert refused.value.code == "corrupt_archive"  # data after the end: all or nothing
    assert not (tmp_path / "box" / "escaped").exists() and not dest.exists()


# -- the client's pack cache ---------------------------------------------------------------


def _tree_with_a_big_file(root: Path) -> Path:
    build_tree(root)
    (root / "big.txt").write_bytes(b"a line of text that compresses well\n" * 200_000)  # 7 MB
    return root


def test_an_unchanged_tree_is_not_read_again(tmp_path: Path) -> None:
    root = _tree_with_a_big_file(tmp_path / "app")
    first = cached_pack(root, tmp_path / "a.tar.gz", tmp_path / "cache")
    before = read_bytes_of_process()
    again = cached_pack(root, tmp_path / "b.tar.gz", tmp_path / "cache")
    read = read_bytes_of_process() - before
    assert again == first
    assert read < 1 << 20, f"read {read} bytes: the 7 MB file was read again"


def test_a_changed_stat_means_the_file_is_hashed_again(tmp_path: Path) -> None:
    root = _tree_with_a_big_file(tmp_path / "app")
    cache_dir = tmp_path / "cache"
    cached_pack(root, tmp_path / "a.tar.gz", cache_dir)
    target = root / "big.txt"
    st = target.stat()
    # same size, mtime put back: only the ctime tells (and the inode, when replaced)
    data = bytearray(target.read_bytes())
    data[0:1] = b"A"
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_mtime_ns == st.st_mtime_ns
    changed = cached_pack(root, tmp_path / "b.tar.gz", cache_dir)
    assert changed == pack_bytes(root)
    # replaced by another file (new inode), mode bit flipped
    shutil.copyfile(root / "big.txt", tmp_path / "copy")
    os.replace(tmp_path / "copy", target)
    os.chmod(root / "main.py", 0o755)
    assert cached_pack(root, tmp_path / "c.tar.gz", cache_dir) == pack_bytes(root)


def test_racy_files_are_not_trusted_to_the_table(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "app")
    cache_dir = tmp_path / "cache"
    cached_pack(root, tmp_path / "a.tar.gz", cache_dir, later=False)  # saved "now"
    cache = PackCache.load(cache_dir, root)
    assert cache.files == {}  # every file was written less than 2 s before the save
    assert cache.members  # the members are by content: kept


def test_a_damaged_cache_costs_time_never_correctness(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "app")
    cache_dir = tmp_path / "cache"
    expected = cached_pack(root, tmp_path / "a.tar.gz", cache_dir)
    for bin_file in cache_dir.glob("*.bin"):  # every member flipped
        bin_file.write_bytes(bytes(b ^ 0x55 for b in bin_file.read_bytes()))
    assert cached_pack(root, tmp_path / "b.tar.gz", cache_dir) == expected
    for index in cache_dir.glob("*.json"):
        index.write_text("{not json")
    assert cached_pack(root, tmp_path / "c.tar.gz", cache_dir) == expected


def test_server_blobs_are_remembered_per_tree(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "app")
    cache_dir = tmp_path / "cache"
    cache = PackCache.load(cache_dir, root)
    pack(root, tmp_path / "a.tar.gz", cache=cache)
    cache.set_server_blobs("http://a", {"sha256:" + "0" * 64})
    cache.save()
    again = PackCache.load(cache_dir, root)
    assert again.server_blobs("http://a") == {"sha256:" + "0" * 64}
    assert again.server_blobs("http://b") == set()
