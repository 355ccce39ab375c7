"""Ed25519 keys, their text forms, and signatures over artifact digests."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from aether.artifacts import digest_bytes
from aether.artifacts.signing import (
    SIGNING_KEY_ENV,
    Ed25519PrivateKey,
    KeyFormatError,
    decode_signature,
    default_key_path,
    fingerprint,
    generate_key,
    load_private_key,
    load_signing_key,
    parse_public_key,
    private_key_pem,
    public_key_b64,
    read_public_key,
    sign_digest,
    verify_digest,
)

DIGEST = digest_bytes(b"an artifact")
KEY = generate_key()  # Ed25519 generation is cheap, but one is enough for most tests


def raw_private(key: Ed25519PrivateKey) -> str:
    raw = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return base64.b64encode(raw).decode()


def same_key(a: Ed25519PrivateKey | None, b: Ed25519PrivateKey) -> bool:
    assert a is not None
    return public_key_b64(a) == public_key_b64(b)


# -- key serialisation -------------------------------------------------------


def test_pem_is_unencrypted_pkcs8_and_round_trips() -> None:
    pem = private_key_pem(KEY)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS8, not "ENCRYPTED"
    assert same_key(load_private_key(pem), KEY)
    assert same_key(load_private_key(pem.decode()), KEY)


def test_public_key_is_base64_of_32_raw_bytes_and_fingerprint_is_its_sha256() -> None:
    public = public_key_b64(KEY)
    raw = base64.b64decode(public, validate=True)
    assert len(raw) == 32
    assert public_key_b64(KEY.public_key()) == public
    expected = "sha256:" + hashlib.sha256(raw).hexdigest()
    assert fingerprint(KEY) == fingerprint(KEY.public_key()) == fingerprint(public) == expected
    assert public_key_b64(parse_public_key(public)) == public
    assert fingerprint(generate_key()) != expected


@pytest.mark.parametrize(
    "value",
    ["", "not base64!", base64.b64encode(b"x" * 31).decode(), base64.b64encode(b"x" * 33).decode()],
)
def test_malformed_public_keys_are_refused(value: str) -> None:
    with pytest.raises(KeyFormatError):
        parse_public_key(value)


def test_read_public_key_accepts_every_form_a_key_file_has() -> None:
    public = public_key_b64(KEY)
    public_pem = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for form in (private_key_pem(KEY), raw_private(KEY), public_pem, public_pem.decode()):
        assert public_key_b64(read_public_key(form)) == public


def test_non_ed25519_and_encrypted_pems_are_refused() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    rsa_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(KeyFormatError, match="not Ed25519"):
        load_private_key(rsa_pem)
    encrypted = KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(KeyFormatError, match="encrypted"):
        load_private_key(encrypted)
    with pytest.raises(KeyFormatError):
        load_private_key("-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")


# -- where a deploy's key comes from ------------------------------------------


def test_signing_key_from_a_path_in_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "deploy.key"
    path.write_bytes(private_key_pem(KEY))
    env = {SIGNING_KEY_ENV: str(path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    assert same_key(load_signing_key(env), KEY)


def test_signing_key_from_pem_text_in_the_environment(tmp_path: Path) -> None:
    env = {SIGNING_KEY_ENV: private_key_pem(KEY).decode(), "XDG_CONFIG_HOME": str(tmp_path)}
    assert same_key(load_signing_key(env), KEY)


def test_signing_key_from_base64_raw_bytes_in_the_environment(tmp_path: Path) -> None:
    env = {SIGNING_KEY_ENV: raw_private(KEY), "XDG_CONFIG_HOME": str(tmp_path)}
    assert same_key(load_signing_key(env), KEY)


def test_default_key_file_is_used_only_without_the_variable(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert default_key_path(env) == tmp_path / "aether" / "signing.key"
    assert load_signing_key(env) is None  # no variable, no file: deploys go unsigned
    default_key_path(env).parent.mkdir(parents=True)
    default_key_path(env).write_bytes(private_key_pem(KEY))
    assert same_key(load_signing_key(env), KEY)
    assert same_key(load_signing_key({**env, SIGNING_KEY_ENV: "  "}), KEY)  # blank = unset
    other = generate_key()
    assert same_key(load_signing_key({**env, SIGNING_KEY_ENV: raw_private(other)}), other)


@pytest.mark.parametrize(
    "value", ["/no/such/key.pem", "garbage", base64.b64encode(b"k" * 16).decode()]
)
def test_a_signing_key_variable_that_is_nothing_usable_is_an_error(
    tmp_path: Path, value: str
) -> None:
    with pytest.raises(KeyFormatError, match=SIGNING_KEY_ENV):
        load_signing_key({SIGNING_KEY_ENV: value, "XDG_CONFIG_HOME": str(tmp_path)})


def test_a_key_file_with_garbage_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.key"
    path.write_text("hello\n")
    with pytest.raises(KeyFormatError, match=r"bad\.key"):
        load_signing_key({SIGNING_KEY_ENV: str(path)})


# -- signatures ------------------------------------------------------------------


def test_signature_is_ed25519_over_the_digest_string() -> None:
    signature = sign_digest(KEY, DIGEST)
    raw = decode_signature(signature)
    assert len(raw) == 64
    KEY.public_key().verify(raw, DIGEST.encode("utf-8"))  # raises if not
    assert sign_digest(KEY, DIGEST) == signature  # Ed25519 is deterministic
    assert verify_digest(public_key_b64(KEY), DIGEST, signature)
    assert verify_digest(KEY.public_key(), DIGEST, raw)


def test_a_wrong_key_a_wrong_digest_or_a_flipped_bit_fail() -> None:
    signature = sign_digest(KEY, DIGEST)
    assert not verify_digest(public_key_b64(generate_key()), DIGEST, signature)
    assert not verify_digest(public_key_b64(KEY), digest_bytes(b"another"), signature)
    raw = bytearray(decode_signature(signature))
    raw[10] ^= 1
    assert not verify_digest(public_key_b64(KEY), DIGEST, bytes(raw))


@pytest.mark.parametrize("value", ["", "!!!!", base64.b64encode(b"s" * 63).decode()])
def test_malformed_signatures_are_refused(value: str) -> None:
    with pytest.raises(KeyFormatError):
        decode_signature(value)
    with pytest.raises(KeyFormatError):
        verify_digest(public_key_b64(KEY), DIGEST, value)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=64))
def test_every_digest_signs_and_verifies_only_itself(data: bytes) -> None:
    digest = digest_bytes(data)
    signature = sign_digest(KEY, digest)
    assert verify_digest(KEY.public_key(), digest, signature)
    assert not verify_digest(KEY.public_key(), digest_bytes(data + b"!"), signature)
