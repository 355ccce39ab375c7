"""Ed25519 signing of artifacts: keys, their text forms, signatures over digests.

- a **signature** is Ed25519 over the artifact digest's UTF-8 bytes
  (``b"sha256:ab…"``), sent and stored as standard base64 of its 64 bytes;
- a **public key** travels as base64 of its 32 raw bytes; its **fingerprint** is
  ``sha256:`` + hex of the sha256 of those raw bytes;
- a **private key** is kept as PEM (PKCS8, unencrypted, mode 0600), by default in
  ``${XDG_CONFIG_HOME:-~/.config}/aether/signing.key``; ``AETHER_SIGNING_KEY``
  overrides it with a path to a PEM file, the PEM text itself, or base64 of the
  32 raw private bytes.

Malformed key material raises ``KeyFormatError`` (a ``ValueError``): callers turn
it into their own error (a CLI config error, an API 400).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = [
    "SIGNING_KEY_ENV",
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "KeyFormatError",
    "decode_signature",
    "default_key_path",
    "fingerprint",
    "generate_key",
    "load_private_key",
    "load_signing_key",
    "parse_public_key",
    "private_key_pem",
    "public_key_b64",
    "read_public_key",
    "sign_digest",
    "verify_digest",
]

SIGNING_KEY_ENV = "AETHER_SIGNING_KEY"
PUBLIC_KEY_BYTES = 32
PRIVATE_KEY_BYTES = 32
SIGNATURE_BYTES = 64
_PEM_MARK = "-----BEGIN"


class KeyFormatError(ValueError):
    """Key material (or a signature) that is not what it claims to be."""


# -- keys -------------------------------------------------------------------


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """PEM, PKCS8, unencrypted: what ``aether keys generate`` writes."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Base64 of the 32 raw public bytes: how a public key is registered."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return base64.b64encode(_raw_public(public)).decode("ascii")


def fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey | str) -> str:
    """``sha256:`` + hex sha256 of the raw public key (a key object or its base64)."""
    if isinstance(key, str):
        key = parse_public_key(key)
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return "sha256:" + hashlib.sha256(_raw_public(public)).hexdigest()


def _b64(value: str, size: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError(f"{what} is not valid base64") from None
    if len(raw) != size:
        raise KeyFormatError(f"{what} must be base64 of {size} bytes, got {len(raw)} bytes")
    return raw


def parse_public_key(value: str) -> Ed25519PublicKey:
    """A public key from base64 of its 32 raw bytes."""
    return Ed25519PublicKey.from_public_bytes(_b64(value, PUBLIC_KEY_BYTES, "the public key"))


def load_private_key(data: str | bytes) -> Ed25519PrivateKey:
    """A private key from unencrypted PEM (PKCS8) or base64 of its 32 raw bytes."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if _PEM_MARK in text:
        try:
            key = serialization.load_pem_private_key(text.strip().encode(), password=None)
        except TypeError:
            raise KeyFormatError(
                "the private key is encrypted; Aether needs an unencrypted PKCS8 PEM key"
            ) from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyFormatError(f"the private key PEM cannot be read: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFormatError(
                f"the private key is {type(key).__name__.removeprefix('_')}, not Ed25519"
            )
        return key
    return Ed25519PrivateKey.from_private_bytes(
        _b64(text, PRIVATE_KEY_BYTES, "the private key (not PEM)")
    )


def read_public_key(data: str | bytes) -> Ed25519PublicKey:
    """A public key from a private key (PEM or base64), a public PEM, or base64 of 32 bytes."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if "PUBLIC KEY-----" in text:
        try:
            key = serialization.load_pem_public_key(text.strip().encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyFormatError(f"the public key PEM cannot be read: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFormatError("the public key is not Ed25519")
        return key
    # a private PEM, or 32 base64 bytes: in a key file those are the private half
    return load_private_key(text).public_key()


def default_key_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "aether" / "signing.key"


def load_signing_key(environ: Mapping[str, str] | None = None) -> Ed25519PrivateKey | None:
    """The key deploys sign with: ``AETHER_SIGNING_KEY``, else the default file, else None."""
    env = os.environ if environ is None else environ
    value = env.get(SIGNING_KEY_ENV, "").strip()
    if not value:
        path = default_key_path(env)
        if not path.is_file():
            return None
        return _load_file(path)
    if _PEM_MARK in value:
        return load_private_key(value)
    path = Path(value).expanduser()
    if path.is_file():
        return _load_file(path)
    try:
        return load_private_key(value)
    except KeyFormatError:
        raise KeyFormatError(
            f"{SIGNING_KEY_ENV} is neither an existing file, PEM text, nor base64 of a "
            f"32-byte Ed25519 private key"
        ) from None


def _load_file(path: Path) -> Ed25519PrivateKey:
    try:
        return load_private_key(path.read_bytes())
    except KeyFormatError as exc:
        raise KeyFormatError(f"{path}: {exc}") from None


# -- signatures -------------------------------------------------------------


def sign_digest(key: Ed25519PrivateKey, digest: str) -> str:
    """Base64 Ed25519 signature over the digest string's UTF-8 bytes."""
    return base64.b64encode(key.sign(digest.encode("utf-8"))).decode("ascii")


def decode_signature(signature: str) -> bytes:
    """The 64 signature bytes of a base64 signature; KeyFormatError if it is not one."""
    return _b64(signature, SIGNATURE_BYTES, "the signature")


def verify_digest(public_key: Ed25519PublicKey | str, digest: str, signature: str | bytes) -> bool:
    """True iff ``signature`` (base64 or raw bytes) is ``public_key``'s over ``digest``."""
    key = parse_public_key(public_key) if isinstance(public_key, str) else public_key
    raw = decode_signature(signature) if isinstance(signature, str) else signature
    try:
        key.verify(raw, digest.encode("utf-8"))
    except InvalidSignature:
        return False
    return True
