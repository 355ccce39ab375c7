"""Digest spelling and hashing helpers."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aether.artifacts import Hasher, digest_bytes, digest_file, digest_hex, parse_digest
from aether.errors import BadRequestError

EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_digest_bytes_known_vector() -> None:
    assert digest_bytes(b"") == EMPTY
    assert parse_digest(EMPTY) == EMPTY
    assert digest_hex(EMPTY) == EMPTY.removeprefix("sha256:")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sha256:",
        EMPTY.upper(),  # the prefix is lower case
        "SHA256:" + EMPTY[7:],
        EMPTY[8:],  # bare hex, one digit short
        EMPTY + "0",
        EMPTY[:-1],
        EMPTY[:-1] + "g",
        "sha512:" + EMPTY[7:],
        " " + EMPTY,
        EMPTY + "\n",
        "sha256:../../etc/passwd",
    ],
)
def test_parse_digest_rejects(bad: str) -> None:
    with pytest.raises(BadRequestError) as exc:
        parse_digest(bad)
    assert exc.value.code == "invalid_digest"
    assert "sha256:" in exc.value.message and "64" in exc.value.message


@pytest.mark.parametrize(
    "spelling",
    [EMPTY, EMPTY[7:], EMPTY[7:].upper(), "sha256:" + EMPTY[7:].upper()],
)
def test_parse_digest_accepts_bare_and_upper_case_hex_and_answers_canonically(
    spelling: str,
) -> None:
    assert parse_digest(spelling) == EMPTY
    assert digest_hex(spelling) == EMPTY[7:]


def test_parse_digest_rejects_non_string() -> None:
    with pytest.raises(BadRequestError):
        parse_digest(None)  # type: ignore[arg-type]


@given(st.binary(max_size=2048), st.lists(st.integers(min_value=0, max_value=2048), max_size=8))
def test_hasher_matches_one_shot_for_any_chunking(data: bytes, cuts: list[int]) -> None:
    h = Hasher()
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for a, b in itertools.pairwise(points):
        h.update(data[a:b])
    assert h.digest() == digest_bytes(data)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert h.size == len(data)
    assert parse_digest(h.digest()) == h.digest()


def test_digest_file(tmp_path: Path) -> None:
    p = tmp_path / "f"
    data = b"x" * (3 << 20) + b"tail"
    p.write_bytes(data)
    assert digest_file(p) == (digest_bytes(data), len(data))
