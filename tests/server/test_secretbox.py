"""Secrets at rest: sealed with a key file outside the database, named by key id."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from aether.errors import InternalError
from aether.server.services.secretbox import SecretBox, key_path


def test_the_key_file_is_created_private_once(tmp_path: Path) -> None:
    path = tmp_path / "data" / "secrets.key"
    box = SecretBox.load(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_bytes()
    again = SecretBox.load(path)  # the same key, not a new one
    assert path.read_bytes() == first and again.key_id == box.key_id
    assert again.unseal(box.seal("sk-abc")) == "sk-abc"


def test_a_sealed_secret_names_its_key_and_hides_the_secret(tmp_path: Path) -> None:
    box = SecretBox.load(tmp_path / "secrets.key")
    sealed = box.seal("sk-very-secret")
    assert sealed.startswith(f"v1:{box.key_id}:") and "sk-very-secret" not in sealed
    assert box.seal("sk-very-secret") != sealed  # a fresh IV each time
    assert "sk-very-secret" not in repr(box) and box.key_id in repr(box)


def test_another_key_or_an_altered_secret_is_refused_clearly(tmp_path: Path) -> None:
    box = SecretBox.load(tmp_path / "a.key")
    other = SecretBox.load(tmp_path / "b.key")
    sealed = box.seal("sk-1")
    with pytest.raises(InternalError, match=f"sealed with key {box.key_id}"):
        other.unseal(sealed)
    version, key_id, token = sealed.split(":", 2)
    altered = f"{version}:{key_id}:{token[:-6]}AAAAAA"
    with pytest.raises(InternalError, match="altered or corrupt"):
        box.unseal(altered)
    with pytest.raises(InternalError, match="not in a known format"):
        box.unseal("sk-plain")


def test_a_broken_key_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "secrets.key"
    path.write_text("not a key\n")
    with pytest.raises(InternalError, match="holds no Fernet key"):
        SecretBox.load(path)


def test_the_key_path_default_and_override(tmp_path: Path) -> None:
    assert key_path(tmp_path) == tmp_path / "secrets.key"
    assert key_path(tmp_path, str(tmp_path / "k")) == tmp_path / "k"
