"""Hostile archives are refused at upload, with the codes nodes give, and nothing is stored."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterator

import httpx
import pytest

from aether.artifacts.extract import MAX_ARCHIVE_ENTRIES
from tests.e2e.hostile import MARKER, Member, entry, gzip_bomb, harmless, tar_gz
from tests.support.api import DIGEST_HEADER, assert_envelope, bearer, sha256_of
from tests.support.server import RunningServer, running_server

UP = "../" * 4

HOSTILE: dict[str, tuple[list[Member], str, int]] = {
    "dotdot_path": (
        [*harmless("dotdot"), entry(f"static/../{UP}{MARKER}.txt", data=b"x")],
        "path_traversal",
        tarfile.PAX_FORMAT,
    ),
    "absolute_path": (
        [*harmless("absolute"), entry(f"/tmp/{MARKER}-absolute.txt", data=b"x")],
        "absolute_path",
        tarfile.PAX_FORMAT,
    ),
    "symlink_escape": (
        [
            *harmless("symlink"),
            entry("static/up", tarfile.SYMTYPE, linkname=f"../{UP}"),
            entry(f"static/up/{MARKER}.txt", data=b"written through the link"),
        ],
        "link_escape",
        tarfile.PAX_FORMAT,
    ),
    "symlink_chain": (
        [
            entry("d", tarfile.SYMTYPE, linkname="."),
            entry("x", tarfile.SYMTYPE, linkname="d/../y"),
        ],
        "link_escape",
        tarfile.PAX_FORMAT,
    ),
    "hardlink_escape": (
        [
            *harmless("hardlink"),
            entry(f"{MARKER}-stolen.txt", tarfile.LNKTYPE, linkname=f"{UP}secret.txt"),
            entry(f"{MARKER}-stolen.txt", data=b"overwritten"),
        ],
        "link_escape",
        tarfile.PAX_FORMAT,
    ),
    "device_file": (
        [*harmless("device"), entry(f"{MARKER}-disk", tarfile.BLKTYPE, devmajor=8, devminor=0)],
        "special_file",
        tarfile.GNU_FORMAT,
    ),
    "fifo": (
        [*harmless("fifo"), entry(f"static/{MARKER}-fifo", tarfile.FIFOTYPE)],
        "special_file",
        tarfile.PAX_FORMAT,
    ),
}


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server whose registry takes archives as large as a node extracts."""
    with running_server(tmp_path_factory.mktemp("aether-scan"), max_artifact_bytes=4 << 30) as s:
        yield s


def stored(server: RunningServer) -> list[str]:
    root = server.data_dir / "artifacts"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def upload(server: RunningServer, data: bytes) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as http:
        return await http.post(
            "/api/v1/artifacts",
            content=data,
            headers={**bearer(server.admin_token), DIGEST_HEADER: sha256_of(data)},
        )


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_a_hostile_archive_is_refused_at_upload(big: RunningServer, name: str) -> None:
    members, code, fmt = HOSTILE[name]
    data = tar_gz(members, fmt)
    before = stored(big)
    err = assert_envelope(await upload(big, data), 400, code)
    assert "pwned" in err["message"] or code == "link_escape", err
    assert stored(big) == before, "a refused upload left files in the registry"


async def test_a_decompression_bomb_is_refused_at_upload(big: RunningServer) -> None:
    bomb = gzip_bomb((1 << 30) + (256 << 20))
    before = stored(big)
    err = assert_envelope(await upload(big, bomb), 400, "archive_too_large")
    assert str(1 << 30) in err["message"]
    assert stored(big) == before


def many_entries(count: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|gz") as tf:
        for i in range(count):
            tf.addfile(tarfile.TarInfo(f"f{i}"))
    return buf.getvalue()


async def test_an_archive_of_200000_entries_is_refused_at_upload(big: RunningServer) -> None:
    data = many_entries(2 * MAX_ARCHIVE_ENTRIES)
    started = time.monotonic()
    response = await upload(big, data)
    seconds = time.monotonic() - started
    err = assert_envelope(response, 400, "too_many_entries")
    assert str(MAX_ARCHIVE_ENTRIES) in err["message"]
    print(f"200,000-entry archive refused in {seconds:.1f} s")


async def test_safe_archives_and_plain_bytes_are_still_stored(big: RunningServer) -> None:
    for data in (tar_gz(harmless("fine")), b"not an archive: the node will say corrupt_archive"):
        response = await upload(big, data)
        assert response.status_code == 201, response.text
        assert response.json()["digest"] == sha256_of(data)
