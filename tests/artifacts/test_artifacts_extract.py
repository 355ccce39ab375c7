"""``safe_extract`` against hostile archives: each is refused with its code, all or nothing."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from aether.artifacts import pack, safe_extract
from aether.artifacts.extract import MAX_ARCHIVE_BYTES, MAX_ARCHIVE_ENTRIES
from aether.errors import ConflictError, UnsafeArchiveError
from aether.node.contents import ContentStore

Member = tuple[tarfile.TarInfo, bytes | None]


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs: object) -> Member:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in attrs.items():
        setattr(ti, key, value)
    if kind in (tarfile.REGTYPE, tarfile.AREGTYPE):
        ti.size = len(data)
        return ti, data
    return ti, None


def tar_bytes(members: list[Member], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def write_archive(tmp_path: Path, members: list[Member], fmt: int = tarfile.PAX_FORMAT) -> Path:
    p = tmp_path / "archive.tar.gz"
    p.write_bytes(gzip.compress(tar_bytes(members, fmt)))
    return p


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """Parent of the destination: must be empty after a refusal (no dest, no temp dir)."""
    d = tmp_path / "out"
    d.mkdir()
    return d


def assert_refused(archive: Path, out: Path, code: str, **limits: int) -> UnsafeArchiveError:
    """Refused with ``code``, both written out and placed as links to shared contents
    (what a node does for an instance with its own uid): the same rules either way."""
    dest = out / "dest"
    errors = []
    for shared in (None, ContentStore(out.parent / "shared-contents")):
        with pytest.raises(UnsafeArchiveError) as exc:
            safe_extract(
                archive,
                dest,
                max_bytes=limits.get("max_bytes", MAX_ARCHIVE_BYTES),
                max_entries=limits.get("max_entries", MAX_ARCHIVE_ENTRIES),
                shared=shared,
            )
        assert exc.value.code == code, exc.value.message
        assert exc.value.status == 400
        assert not os.path.lexists(dest)
        assert os.listdir(out) == [], "a temp dir or a file escaped into the parent"
        errors.append(exc.value)
    assert errors[0].message == errors[1].message
    return errors[0]


# --- paths -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a/../../x", "ok/../../../../tmp/x", "a/.."])
def test_dotdot_is_refused(tmp_path: Path, out: Path, name: str) -> None:
    archive = write_archive(tmp_path, [entry("fine.txt", data=b"ok"), entry(name, data=b"evil")])
    err = assert_refused(archive, out, "path_traversal")
    assert name in err.message


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_absolute_path_is_refused(tmp_path: Path, out: Path, fmt: int) -> None:
    archive = write_archive(tmp_path, [entry("/etc/x", data=b"evil")], fmt)
    assert_refused(archive, out, "absolute_path")


def test_absolute_path_hidden_in_pax_header_is_refused(tmp_path: Path, out: Path) -> None:
    ti, data = entry("harmless", data=b"evil")
    ti.pax_headers = {"path": "/tmp/evil"}
    assert_refused(write_archive(tmp_path, [(ti, data)]), out, "absolute_path")


def test_long_gnu_name_with_traversal_is_refused(tmp_path: Path, out: Path) -> None:
    name = "a" * 150 + "/../../" + "b" * 150
    archive = write_archive(tmp_path, [entry(name, data=b"x")], tarfile.GNU_FORMAT)
    assert_refused(archive, out, "path_traversal")


# --- links -----------------------------------------------------------------------------


def test_symlink_to_absolute_path_is_refused(tmp_path: Path, out: Path) -> None:
    archive = write_archive(tmp_path, [entry("passwd", tarfile.SYMTYPE, linkname="/etc/passwd")])
    assert_refused(archive, out, "link_escape")


@pytest.mark.parametrize(("name", "target"), [("a", "../../x"), ("d/a", "../../x"), ("a", "..")])
def test_symlink_leaving_dest_is_refused(tmp_path: Path, out: Path, name: str, target: str) -> None:
    archive = write_archive(tmp_path, [entry(name, tarfile.SYMTYPE, linkname=target)])
    assert_refused(archive, out, "link_escape")


def test_symlink_chain_through_dot_is_refused(tmp_path: Path, out: Path) -> None:
    # ``e -> d/..`` is "." lexically, but d is the root, so e is the root's parent.
    archive = write_archive(
        tmp_path,
        [
            entry("d", tarfile.SYMTYPE, linkname="."),
            entry("e", tarfile.SYMTYPE, linkname="d/.."),
            entry("e/evil", data=b"written outside?"),
        ],
    )
    assert_refused(archive, out, "link_escape")


def test_symlink_redirected_by_a_later_link_is_refused(tmp_path: Path, out: Path) -> None:
    # x looks inside when created (y does not exist yet); y -> "." makes it escape.
    archive = write_archive(
        tmp_path,
        [
            entry("x", tarfile.SYMTYPE, linkname="y/../outside"),
            entry("y", tarfile.SYMTYPE, linkname="."),
        ],
    )
    assert_refused(archive, out, "link_escape")


def test_write_through_a_symlinked_directory_is_refused(tmp_path: Path, out: Path) -> None:
    archive = write_archive(
        tmp_path,
        [
            entry("real", tarfile.DIRTYPE),
            entry("alias", tarfile.SYMTYPE, linkname="real"),
            entry("alias/f", data=b"via link"),
        ],
    )
    assert_refused(archive, out, "link_escape")


@pytest.mark.parametrize("target", ["../../etc/passwd", "/etc/passwd", "a/../../x"])
def test_hardlink_escape_is_refused(tmp_path: Path, out: Path, target: str) -> None:
    archive = write_archive(
        tmp_path, [entry("a", data=b"a"), entry("h", tarfile.LNKTYPE, linkname=target)]
    )
    assert_refused(archive, out, "link_escape")


def test_hardlink_to_a_symlink_is_refused(tmp_path: Path, out: Path) -> None:
    archive = write_archive(
        tmp_path,
        [
            entry("a", data=b"a"),
            entry("s", tarfile.SYMTYPE, linkname="a"),
            entry("h", tarfile.LNKTYPE, linkname="s"),
        ],
    )
    assert_refused(archive, out, "link_escape")


def test_hardlink_to_missing_entry_is_corrupt(tmp_path: Path, out: Path) -> None:
    archive = write_archive(tmp_path, [entry("h", tarfile.LNKTYPE, linkname="nothing")])
    assert_refused(archive, out, "corrupt_archive")


def test_links_inside_dest_are_extracted(tmp_path: Path) -> None:
    archive = write_archive(
        tmp_path,
        [
            entry("./", tarfile.DIRTYPE),
            entry("./bin/", tarfile.DIRTYPE),
            entry("./bin/tool", data=b"#!/bin/sh\n", mode=0o4755),
            entry("./bin/hard", tarfile.LNKTYPE, linkname="./bin/tool"),
            entry("./up", tarfile.SYMTYPE, linkname="bin/../bin/tool"),
            entry("./bin/self", tarfile.SYMTYPE, linkname="."),
        ],
    )
    dest = tmp_path / "dest"
    safe_extract(archive, dest)
    assert (dest / "bin/hard").read_bytes() == b"#!/bin/sh\n"
    assert os.stat(dest / "bin/hard").st_ino == os.stat(dest / "bin/tool").st_ino
    assert (dest / "bin/tool").stat().st_mode & 0o7777 == 0o755  # setuid dropped
    assert os.readlink(dest / "up") == "bin/../bin/tool"
    assert (dest / "up").read_bytes() == b"#!/bin/sh\n"


# --- special files ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "attrs"),
    [
        (tarfile.CHRTYPE, {"devmajor": 1, "devminor": 3}),
        (tarfile.BLKTYPE, {"devmajor": 8, "devminor": 0}),
        (tarfile.FIFOTYPE, {}),
        (b"V", {}),  # GNU volume header / unknown type
    ],
)
def test_special_files_are_refused(
    tmp_path: Path, out: Path, kind: bytes, attrs: dict[str, int]
) -> None:
    special = entry("dev/null", kind)
    for key, value in attrs.items():
        setattr(special[0], key, value)
    archive = write_archive(tmp_path, [entry("ok", data=b"x"), special], tarfile.GNU_FORMAT)
    assert_refused(archive, out, "special_file")


# --- sizes -----------------------------------------------------------------------------


def test_gzip_bomb_is_refused_early(tmp_path: Path, out: Path) -> None:
    """50 MB of zeros compress to ~50 KB; with a 1 MB limit it must stop at the header.

    The archive is cut right after the middle of the big member: an extractor that
    read the data before judging it would report ``corrupt_archive`` instead.
    """
    raw = tar_bytes([entry("zeros", data=bytes(50 << 20)), entry("after", data=b"x")])
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(gzip.compress(raw[: 25 << 20], compresslevel=9))
    assert bomb.stat().st_size < 100_000
    err = assert_refused(bomb, out, "archive_too_large", max_bytes=1 << 20)
    assert "1048576" in err.message


def test_many_small_files_over_the_limit_are_refused(tmp_path: Path, out: Path) -> None:
    members = [entry(f"f{i:03}", data=bytes(100_000)) for i in range(30)]
    assert_refused(write_archive(tmp_path, members), out, "archive_too_large", max_bytes=1 << 20)


def test_exactly_at_the_limit_is_accepted(tmp_path: Path) -> None:
    archive = write_archive(tmp_path, [entry("a", data=bytes(600)), entry("b", data=bytes(400))])
    safe_extract(archive, tmp_path / "dest", max_bytes=1000)
    assert (tmp_path / "dest" / "b").stat().st_size == 400


def test_huge_pax_header_is_refused(tmp_path: Path, out: Path) -> None:
    ti, data = entry("f", data=b"x")
    ti.pax_headers = {"comment": "x" * (2 << 20)}
    assert_refused(write_archive(tmp_path, [(ti, data)]), out, "archive_too_large")


def test_too_many_entries(tmp_path: Path, out: Path) -> None:
    members = [entry(f"f{i}", data=b"") for i in range(11)]
    assert_refused(write_archive(tmp_path, members), out, "too_many_entries", max_entries=10)
    safe_extract(write_archive(tmp_path, members[:10]), tmp_path / "ok", max_entries=10)


# --- integrity -------------------------------------------------------------------------


def _valid_archive(tmp_path: Path) -> bytes:
    root = tmp_path / "src"
    root.mkdir()
    for i in range(5):
        (root / f"f{i}.bin").write_bytes(os.urandom(20_000))
    pack(root, tmp_path / "valid.tgz")
    return (tmp_path / "valid.tgz").read_bytes()


@pytest.mark.parametrize("keep", [0.5, 0.99, 10 / 11])
def test_truncated_archive_is_refused(tmp_path: Path, out: Path, keep: float) -> None:
    data = _valid_archive(tmp_path)
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(data[: int(len(data) * keep)])
    assert_refused(cut, out, "corrupt_archive")


def test_tar_without_end_marker_is_refused(tmp_path: Path, out: Path) -> None:
    """A complete gzip stream around a tar cut at a header boundary: tarfile alone
    would call this a valid one-file archive."""
    raw = tar_bytes([entry("a", data=b"a" * 512), entry("b", data=b"b" * 512)])
    p = tmp_path / "short.tgz"
    p.write_bytes(gzip.compress(raw[:1024]))
    assert_refused(p, out, "corrupt_archive")


def test_garbage_after_a_member_is_refused(tmp_path: Path, out: Path) -> None:
    raw = tar_bytes([entry("a", data=b"a" * 512)])
    p = tmp_path / "junk.tgz"
    p.write_bytes(gzip.compress(raw[:1024] + os.urandom(2048)))
    assert_refused(p, out, "corrupt_archive")


def test_trailing_garbage_after_gzip_is_refused(tmp_path: Path, out: Path) -> None:
    p = tmp_path / "trail.tgz"
    p.write_bytes(_valid_archive(tmp_path) + b"garbage!")
    assert_refused(p, out, "corrupt_archive")


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        os.urandom(4096),
        gzip.compress(os.urandom(4096)),
        gzip.compress(b""),
        b"\x1f\x8b" + os.urandom(100),
    ],
    ids=["empty", "random", "gzip-of-random", "gzip-of-nothing", "gzip-magic-then-random"],
)
def test_not_an_archive(tmp_path: Path, out: Path, payload: bytes) -> None:
    p = tmp_path / "x.tgz"
    p.write_bytes(payload)
    assert_refused(p, out, "corrupt_archive")


def test_duplicate_entries_are_refused(tmp_path: Path, out: Path) -> None:
    archive = write_archive(tmp_path, [entry("a", data=b"1"), entry("a", data=b"2")])
    assert_refused(archive, out, "path_conflict")


def test_entry_below_a_file_is_refused(tmp_path: Path, out: Path) -> None:
    archive = write_archive(tmp_path, [entry("a", data=b"1"), entry("a/b", data=b"2")])
    assert_refused(archive, out, "path_conflict")


# --- destination -----------------------------------------------------------------------


def test_existing_dest_is_refused_and_untouched(tmp_path: Path) -> None:
    archive = write_archive(tmp_path, [entry("a", data=b"1")])
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine").write_text("keep")
    with pytest.raises(ConflictError):
        safe_extract(archive, dest)
    assert os.listdir(dest) == ["mine"]
    assert sorted(os.listdir(tmp_path)) == ["archive.tar.gz", "dest"]


def test_dest_parent_is_created(tmp_path: Path) -> None:
    archive = write_archive(tmp_path, [entry("dir/a", data=b"1")])
    safe_extract(archive, tmp_path / "x" / "y" / "dest")
    assert (tmp_path / "x/y/dest/dir/a").read_bytes() == b"1"
    assert os.listdir(tmp_path / "x/y") == ["dest"]


def test_archives_from_other_tools_extract(tmp_path: Path) -> None:
    """tarfile's own ``add`` output (GNU format, real owners, './' prefix) is fine."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.txt").write_text("hello")
    p = tmp_path / "t.tgz"
    with tarfile.open(p, "w:gz", format=tarfile.GNU_FORMAT) as tf:
        tf.add(src, arcname=".")
    safe_extract(p, tmp_path / "dest")
    assert (tmp_path / "dest/sub/f.txt").read_text() == "hello"


# --- shared contents: a node's instances link shipped files instead of writing them --------


def test_shared_contents_are_linked_read_only_and_written_once(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "contents")
    v1 = [
        entry("app", tarfile.DIRTYPE),
        entry("app/server.js", data=b"console.log(1)\n"),
        entry("app/run.sh", data=b"#!/bin/sh\n", mode=0o755),
        entry("app/lib.js", data=b"module.exports = 1\n"),
        entry("data", tarfile.DIRTYPE),
        entry("data/seed.db", data=b"seed"),
    ]
    v2 = [*v1[:3], entry("app/lib.js", data=b"module.exports = 2\n"), *v1[4:]]

    def own(rel: str) -> bool:
        return rel == "data" or rel.startswith("data/")

    safe_extract(write_archive(tmp_path, v1), tmp_path / "v1", shared=store, own=own)
    stored = sorted(p.name for p in store.root.iterdir())
    safe_extract(write_archive(tmp_path, v2), tmp_path / "v2", shared=store, own=own)
    for name in ("app/server.js", "app/run.sh"):  # unchanged: one inode for both versions
        a, b = ((tmp_path / v / name).stat() for v in ("v1", "v2"))
        assert (a.st_ino, a.st_nlink) == (b.st_ino, 3)  # v1, v2 and the store
    assert (tmp_path / "v2/app/lib.js").read_bytes() == b"module.exports = 2\n"
    assert (tmp_path / "v1/app/lib.js").read_bytes() == b"module.exports = 1\n"
    assert (tmp_path / "v1/app/server.js").stat().st_mode & 0o777 == 0o444
    assert (tmp_path / "v1/app/run.sh").stat().st_mode & 0o777 == 0o555
    # the state directory's files are the instance's own: written out, one link
    seed = (tmp_path / "v1/data/seed.db").stat()
    assert (seed.st_nlink, seed.st_mode & 0o777) == (1, 0o644)
    assert len(stored) == 3 and len(list(store.root.iterdir())) == 4  # + the new lib.js
    # the contents no instance links to go; the others stay
    shutil.rmtree(tmp_path / "v1")
    assert store.prune() == 1  # v1's lib.js
    assert len(list(store.root.iterdir())) == 3
    assert (tmp_path / "v2/app/server.js").read_bytes() == b"console.log(1)\n"


def test_a_content_pruned_while_linking_is_stored_again(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "contents")
    members = [entry("a.txt", data=b"same"), entry("b.txt", data=b"same")]
    safe_extract(write_archive(tmp_path, members), tmp_path / "one", shared=store)
    for path in store.root.iterdir():
        path.unlink()  # as if pruned between the check and the link
    safe_extract(write_archive(tmp_path, members), tmp_path / "two", shared=store)
    assert (tmp_path / "two/a.txt").stat().st_ino == (tmp_path / "two/b.txt").stat().st_ino
    assert (tmp_path / "two/a.txt").read_bytes() == b"same"
