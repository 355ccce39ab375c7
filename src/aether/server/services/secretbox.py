"""Secrets encrypted at rest by envelope encryption, with the keys kept outside the database.

**Envelope.** Each value is sealed with its own random 256-bit data key (AES-256-GCM);
the data key is wrapped (AES-256-GCM again) by the key-encryption key (KEK), and the
stored form names the KEK that wraps it::

    v2:KEK_ID:WRAPPED_DATA_KEY:CIPHERTEXT      (each part urlsafe base64, nonce first)

Rotating the KEK re-wraps data keys only (:meth:`SecretBox.rewrap`): the ciphertext
of a value never changes, and no plain value is handled.

**The key file** (``DATA_DIR/secrets.key`` unless ``AETHER_SECRETS_KEY_FILE`` names
another path; created 0600 at the first start) is a keyring: one key a line, 32
random bytes in urlsafe base64 (the format of a Fernet key), the first line the
current one (it wraps new data keys); the others only open. A ``secrets.key.old``
next to it (what rotation keeps of the keyring it replaced) is read as more keys that
only open. The KEK of a key line is derived from it with HKDF-SHA256; its id
(``KEK_ID``) is the first 8 hex digits of the SHA-256 of the line's bytes.

Values sealed before envelope encryption (``v1:KEY_ID:FERNET_TOKEN``) still open with
the key line of that id; rotation re-seals them as ``v2``.

A copy of the records database alone reveals no secret; the key file must be backed
up with the records. Servers sharing records must share the keyring: the box reads
the file again when it meets a key id it does not hold, and before it seals when the
file changed, so servers sharing one file follow a rotation without a restart.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from aether.errors import InternalError

__all__ = ["KEY_FILE", "OLD_SUFFIX", "SecretBox", "key_path", "sealed_key_id"]

KEY_FILE = "secrets.key"
OLD_SUFFIX = ".old"  # secrets.key.old: the keyring a rotation replaced (opens only)
_V1 = "v1"
_V2 = "v2"
_NONCE = 12
_KEK_INFO = b"aether secrets key-encryption key v2"
_AAD_VALUE = b"aether secret v2"


def key_path(data_dir: Path, override: str = "") -> Path:
    """Where the key is: ``override`` (AETHER_SECRETS_KEY_FILE), else DATA_DIR/secrets.key."""
    return Path(override).expanduser() if override else data_dir / KEY_FILE


def _key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def new_key() -> bytes:
    """A new key line: 32 random bytes, urlsafe base64 (a valid Fernet key too)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32))


def sealed_key_id(sealed: str) -> str:
    """The id of the key a sealed value names (``""`` if it is in no known format)."""
    parts = sealed.split(":")
    return parts[1] if len(parts) >= 3 and parts[0] in (_V1, _V2) else ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text.encode())


@dataclass(frozen=True)
class _Key:
    """One key line: its id, the KEK derived from it, and the Fernet of ``v1`` values."""

    id: str
    kek: AESGCM
    fernet: Fernet

    @classmethod
    def of(cls, line: bytes) -> _Key:
        raw = base64.urlsafe_b64decode(line)  # binascii.Error is a ValueError
        if len(raw) != 32:
            raise ValueError("a key is 32 bytes")
        kek = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEK_INFO).derive(raw)
        return cls(id=_key_id(line), kek=AESGCM(kek), fernet=Fernet(line))

    def wrap(self, data_key: bytes) -> str:
        nonce = secrets.token_bytes(_NONCE)
        return _b64(nonce + self.kek.encrypt(nonce, data_key, self.id.encode()))

    def unwrap(self, wrapped: str) -> bytes:
        blob = _unb64(wrapped)
        return self.kek.decrypt(blob[:_NONCE], blob[_NONCE:], self.id.encode())


def _read_lines(path: Path) -> list[bytes]:
    try:
        return path.read_bytes().split()
    except FileNotFoundError:
        return []


def _write_private(path: Path, lines: list[bytes]) -> None:
    """Replace ``path`` with ``lines`` (0600), atomically: a reader sees the old or the new."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"".join(line + b"\n" for line in lines))
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def _create(path: Path) -> None:
    """Write a new key, 0600, unless another process just did (O_EXCL)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(new_key() + b"\n")
    os.chmod(path, 0o600)


class SecretBox:
    """Seals and unseals secrets with a keyring (see the module's docstring)."""

    def __init__(self, keys: list[bytes], *, source: str = "the secrets key") -> None:
        self.source = source  # the key file, for messages
        self.path: Path | None = None  # the key file, when the box reads one
        self._stamp: tuple[int, int] | None = None
        self._set(keys)

    def _set(self, lines: list[bytes], old: list[bytes] | None = None) -> None:
        if not lines:
            raise InternalError(f"the secrets key file {self.source} is empty")
        try:
            keys = [_Key.of(line) for line in lines]
        except ValueError:
            raise InternalError(
                f"the secrets key file {self.source} holds a malformed key"
            ) from None
        extra: list[_Key] = []
        for line in old or []:
            with contextlib.suppress(ValueError):  # a damaged old file never stops the server
                extra.append(_Key.of(line))
        self._current = keys[0]
        self._keys = {k.id: k for k in [*extra, *reversed(keys)]}  # the keyring's win
        self.key_id = self._current.id

    def __repr__(self) -> str:
        return f"SecretBox(key_id={self.key_id!r}, source={self.source!r})"

    @property
    def key_ids(self) -> list[str]:
        """The ids of every key that opens (the current one first)."""
        return [self.key_id, *sorted(k for k in self._keys if k != self.key_id)]

    @classmethod
    def load(cls, path: Path) -> SecretBox:
        """The box of the key file at ``path``, created (0600) if it does not exist."""
        if not path.exists():
            _create(path)
        box = cls(_read_lines(path), source=str(path))
        box.path = path
        box.reload()
        return box

    def _file_stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def reload(self) -> None:
        """Read the key file (and ``secrets.key.old``) again."""
        if self.path is None:
            return
        stamp = self._file_stamp()
        self._set(_read_lines(self.path), _read_lines(self._old_path(self.path)))
        self._stamp = stamp

    def _reload_if_changed(self) -> None:
        if self.path is not None and self._file_stamp() != self._stamp:
            self.reload()

    @staticmethod
    def _old_path(path: Path) -> Path:
        return path.with_name(path.name + OLD_SUFFIX)

    # -- sealing --

    def seal(self, secret: str) -> str:
        self._reload_if_changed()
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = secrets.token_bytes(_NONCE)
        body = _b64(nonce + AESGCM(data_key).encrypt(nonce, secret.encode(), _AAD_VALUE))
        return f"{_V2}:{self.key_id}:{self._current.wrap(data_key)}:{body}"

    def _key(self, key_id: str) -> _Key:
        key = self._keys.get(key_id)
        if key is None:
            self.reload()  # another server may have rotated the shared file
            key = self._keys.get(key_id)
        if key is None:
            raise InternalError(
                f"a stored secret was sealed with key {key_id}, but {self.source} holds "
                f"key(s) {', '.join(self.key_ids)}: restore the secrets key that goes with "
                "these records"
            )
        return key

    def _corrupt(self) -> InternalError:
        return InternalError(
            f"a stored secret does not open with {self.source} (altered or corrupt)"
        )

    def unseal(self, sealed: str) -> str:
        parts = sealed.split(":")
        if len(parts) == 3 and parts[0] == _V1 and parts[2]:
            try:
                return self._key(parts[1]).fernet.decrypt(parts[2].encode()).decode()
            except InvalidToken:
                raise self._corrupt() from None
        if len(parts) != 4 or parts[0] != _V2:
            raise InternalError("a stored secret is not in a known format")
        _, key_id, wrapped, body = parts
        key = self._key(key_id)
        try:
            data_key = key.unwrap(wrapped)
            blob = _unb64(body)
            return AESGCM(data_key).decrypt(blob[:_NONCE], blob[_NONCE:], _AAD_VALUE).decode()
        except (InvalidTag, ValueError):
            raise self._corrupt() from None

    def rewrap(self, sealed: str) -> str | None:
        """``sealed`` with its data key wrapped by the current key; None if it already is.
        A ``v1`` value is sealed again as ``v2``."""
        parts = sealed.split(":")
        if parts[0] == _V2 and len(parts) == 4:
            if parts[1] == self.key_id:
                return None
            try:
                data_key = self._key(parts[1]).unwrap(parts[2])
            except (InvalidTag, ValueError):
                raise self._corrupt() from None
            return f"{_V2}:{self.key_id}:{self._current.wrap(data_key)}:{parts[3]}"
        return self.seal(self.unseal(sealed))

    # -- rotation (the key file) --

    def add_key(self) -> str:
        """Start a rotation: a new key first in the keyring, the others kept (they still
        open); the keyring as it was is copied to ``secrets.key.old``. The new key's id."""
        if self.path is None:
            raise InternalError("this secrets box has no key file to rotate")
        lines = _read_lines(self.path)
        line = new_key()
        _write_private(self._old_path(self.path), lines)
        _write_private(self.path, [line, *lines])
        self.reload()
        return self.key_id

    def keep_only_current(self) -> list[str]:
        """End a rotation: the keyring holds the current key only (``secrets.key.old``
        keeps the others, and still opens with them). The ids dropped."""
        if self.path is None:
            raise InternalError("this secrets box has no key file to rotate")
        lines = _read_lines(self.path)
        if not lines:
            return []
        dropped = [_key_id(line) for line in lines[1:]]
        if dropped:
            _write_private(self.path, lines[:1])
            self.reload()
        return dropped
