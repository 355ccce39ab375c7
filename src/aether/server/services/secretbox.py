"""Small secrets encrypted at rest (models' API keys), with a key kept outside the database.

The key is a Fernet key (AES-128-CBC with HMAC-SHA256: authenticated encryption) in
its own file, ``DATA_DIR/secrets.key`` unless ``AETHER_SECRETS_KEY_FILE`` names
another path; the server creates it 0600 at its first start. A copy of the records
database alone (a backup, a stolen disk image of the database server) reveals no
secret; the key file must be backed up with the records: without it the stored
secrets are lost. Servers sharing records must share the key file.

A sealed secret is ``v1:KEY_ID:TOKEN``: ``KEY_ID`` is the first 8 hex digits of the
SHA-256 of the key, so a secret names the key that opens it.

Rotation (not built yet) fits this format: the key file holds several keys, one a
line, the first the current one; :meth:`SecretBox.seal` uses the first, and
:meth:`SecretBox.unseal` picks the key by ``KEY_ID``. Rotating is then: prepend a
new key, re-seal every stored secret (a records query over the columns that hold
sealed values), then drop the old line once none names it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from aether.errors import InternalError

__all__ = ["KEY_FILE", "SecretBox", "key_path"]

KEY_FILE = "secrets.key"
_VERSION = "v1"


def key_path(data_dir: Path, override: str = "") -> Path:
    """Where the key is: ``override`` (AETHER_SECRETS_KEY_FILE), else DATA_DIR/secrets.key."""
    return Path(override).expanduser() if override else data_dir / KEY_FILE


def _key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def _create(path: Path) -> None:
    """Write a new key, 0600, unless another process just did (O_EXCL)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(Fernet.generate_key() + b"\n")
    os.chmod(path, 0o600)


class SecretBox:
    """Seals and unseals small secrets with one key (see the module's docstring)."""

    def __init__(self, key: bytes, *, source: str = "the secrets key") -> None:
        self._fernet = Fernet(key)
        self.key_id = _key_id(key)
        self.source = source  # the key file, for messages

    def __repr__(self) -> str:
        return f"SecretBox(key_id={self.key_id!r}, source={self.source!r})"

    @classmethod
    def load(cls, path: Path) -> SecretBox:
        """The box of the key file at ``path``, created (0600) if it does not exist."""
        if not path.exists():
            _create(path)
        lines = path.read_bytes().split()
        if not lines:
            raise InternalError(f"the secrets key file {path} is empty")
        try:
            return cls(lines[0], source=str(path))
        except ValueError:
            raise InternalError(f"the secrets key file {path} holds no Fernet key") from None

    def seal(self, secret: str) -> str:
        token = self._fernet.encrypt(secret.encode()).decode()
        return f"{_VERSION}:{self.key_id}:{token}"

    def unseal(self, sealed: str) -> str:
        version, _, rest = sealed.partition(":")
        key_id, _, token = rest.partition(":")
        if version != _VERSION or not token:
            raise InternalError("a stored secret is not in a known format")
        if key_id != self.key_id:
            raise InternalError(
                f"a stored secret was sealed with key {key_id}, but {self.source} is key "
                f"{self.key_id}: restore the secrets key that goes with these records"
            )
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise InternalError(
                f"a stored secret does not open with {self.source} (altered or corrupt)"
            ) from None
