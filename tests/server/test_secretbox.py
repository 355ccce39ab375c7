"""Secrets at rest: envelope encryption (a data key per value, wrapped by a key from a
key file outside the database), named by key id; rotation re-wraps data keys."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

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
    assert sealed.startswith(f"v2:{box.key_id}:") and "sk-very-secret" not in sealed
    assert box.seal("sk-very-secret") != sealed  # a fresh IV each time
    assert "sk-very-secret" not in repr(box) and box.key_id in repr(box)


def test_another_key_or_an_altered_secret_is_refused_clearly(tmp_path: Path) -> None:
    box = SecretBox.load(tmp_path / "a.key")
    other = SecretBox.load(tmp_path / "b.key")
    sealed = box.seal("sk-1")
    with pytest.raises(InternalError, match=f"sealed with key {box.key_id}"):
        other.unseal(sealed)
    version, key_id, wrapped, token = sealed.split(":")
    altered = f"{version}:{key_id}:{wrapped}:{token[:-6]}AAAAAA"
    with pytest.raises(InternalError, match="altered or corrupt"):
        box.unseal(altered)
    with pytest.raises(InternalError, match="not in a known format"):
        box.unseal("sk-plain")


def test_a_broken_key_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "secrets.key"
    path.write_text("not a key\n")
    with pytest.raises(InternalError, match="holds a malformed key"):
        SecretBox.load(path)


def test_the_key_path_default_and_override(tmp_path: Path) -> None:
    assert key_path(tmp_path) == tmp_path / "secrets.key"
    assert key_path(tmp_path, str(tmp_path / "k")) == tmp_path / "k"


def test_each_value_has_its_own_data_key(tmp_path: Path) -> None:
    box = SecretBox.load(tmp_path / "secrets.key")
    one, two = box.seal("same"), box.seal("same")
    assert one.split(":")[2] != two.split(":")[2]  # two wrapped data keys
    # a wrapped data key moved onto another value does not open it (authenticated)
    v, k, _, body = one.split(":")
    with pytest.raises(InternalError, match="altered or corrupt"):
        box.unseal(f"{v}:{k}:{two.split(':')[2]}:{body}")


def test_values_sealed_with_fernet_before_envelopes_still_open(tmp_path: Path) -> None:
    path = tmp_path / "secrets.key"
    line = Fernet.generate_key()
    path.write_bytes(line + b"\n")
    key_id = hashlib.sha256(line).hexdigest()[:8]
    old = f"v1:{key_id}:{Fernet(line).encrypt(b'sk-legacy').decode()}"
    box = SecretBox.load(path)
    assert box.key_id == key_id and box.unseal(old) == "sk-legacy"
    resealed = box.rewrap(old)
    assert resealed is not None and resealed.startswith(f"v2:{key_id}:")
    assert box.unseal(resealed) == "sk-legacy"


def test_rotation_rewraps_and_every_value_opens_throughout(tmp_path: Path) -> None:
    path = tmp_path / "secrets.key"
    box = SecretBox.load(path)
    other_server = SecretBox.load(path)  # a second server sharing the key file
    first = box.key_id
    sealed = [box.seal(f"value-{i}") for i in range(3)]
    new = box.add_key()
    assert new != first and box.key_ids[0] == new and first in box.key_ids
    assert (tmp_path / "secrets.key.old").read_bytes().split()[0] != path.read_bytes().split()[0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # during: old values open, new ones are wrapped with the new key
    assert [box.unseal(s) for s in sealed] == ["value-0", "value-1", "value-2"]
    assert box.seal("during").startswith(f"v2:{new}:")
    rewrapped = [box.rewrap(s) for s in sealed]
    assert all(r is not None and r.startswith(f"v2:{new}:") for r in rewrapped)
    assert [r.split(":")[3] for r in rewrapped if r] == [s.split(":")[3] for s in sealed]
    assert box.rewrap(rewrapped[0] or "") is None  # already the current key
    assert box.keep_only_current() == [first]
    assert path.read_bytes().split() == [path.read_bytes().split()[0]]
    # after: the rewrapped values open; so does a straggler sealed with the old key
    # (secrets.key.old still opens), on this server and on the one that shares the file
    assert [box.unseal(r or "") for r in rewrapped] == ["value-0", "value-1", "value-2"]
    assert [other_server.unseal(r or "") for r in rewrapped] == ["value-0", "value-1", "value-2"]
    assert other_server.seal("x").startswith(f"v2:{new}:")  # it read the changed file
    assert box.unseal(sealed[0]) == "value-0"
    # without the old file, an old value names the key it needs
    (tmp_path / "secrets.key.old").unlink()
    with pytest.raises(InternalError, match=f"sealed with key {first}"):
        SecretBox.load(path).unseal(sealed[0])
