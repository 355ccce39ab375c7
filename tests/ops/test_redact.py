"""The one redaction every file of a diagnostics bundle goes through."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from urllib.parse import quote

from aether.ops.diag_bundle import pack
from aether.ops.redact import REDACTED, redact

TOKEN = "ae_" + "Qx7" * 12
PEM = (
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n"
    "-----END PRIVATE KEY-----"
)


def test_tokens_keys_url_passwords_and_headers_are_hidden() -> None:
    text = "\n".join(
        [
            f"joined with {TOKEN} ok",
            f"key file: {PEM}",
            "records_url = postgresql+psycopg://aether:hunter2-pw@db:5432/aether",
            "Authorization: Bearer abcdef123456",
            '{"authorization": "Basic dXNlcjpwYXNz"}',
            "calling with bearer xyz987654321",
        ]
    )
    out = redact(text)
    for secret in (TOKEN, "MIIEvQIBADANBgkq", "hunter2-pw", "abcdef123456", "dXNlcjpwYXNz"):
        assert secret not in out, (secret, out)
    assert "xyz987654321" not in out
    assert "postgresql+psycopg://aether:<redacted>@db:5432/aether" in out
    assert "joined with <redacted> ok" in out


def test_values_of_secret_keys_in_every_form_are_hidden() -> None:
    text = "\n".join(
        [
            's3_secret_key = "wJalrXUtnFEMI"',
            "AETHER_S3_ACCESS_KEY=AKIAEXAMPLE1",
            '{"etcd_password": "etcd-pw-1", "oidc_client_secret": "oidc-2"}',
            "api_key: sk-live-3",
            "join_token = 'jt-4'",
        ]
    )
    out = redact(text)
    for secret in ("wJalrXUtnFEMI", "AKIAEXAMPLE1", "etcd-pw-1", "oidc-2", "sk-live-3", "jt-4"):
        assert secret not in out, (secret, out)
    assert 's3_secret_key = "<redacted>' in out


def test_what_is_not_a_secret_stays() -> None:
    text = "tls_key_file = /etc/aether/tls.key\ntoken_ttl = <redacted>\nnodes = 3\n"
    text += "secrets_key_file: /x"
    assert redact(text) == text


def test_known_values_are_hidden_plain_base64_and_url_encoded() -> None:
    secret = "p@ss/word+42"
    text = " ".join(
        [secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode(), "kept"]
    )
    out = redact(text, known=[secret])
    assert out == " ".join([REDACTED] * 3 + ["kept"])


def test_pack_redacts_every_file_and_lists_what_is_missing() -> None:
    files = {
        "server/log.txt": f"token {TOKEN}\n".encode(),
        "nodes/n1/config.toml": b"join_token = 'plain-join'\nplanted = 'known-value-1'\n",
        "server/big.txt": b"x" * (5 * 1024 * 1024),
    }
    data = pack(files, ["known-value-1"], {"nodes/n2/": "did not answer"}, 3600)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        read = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    whole = b"".join(read.values())
    for secret in (TOKEN, "plain-join", "known-value-1"):
        assert secret.encode() not in whole
    manifest = json.loads(read["aether-diag/manifest.json"])
    assert manifest["missing"] == {"nodes/n2/": "did not answer"}
    assert set(manifest["files"]) == set(files)
    assert len(read["aether-diag/server/big.txt"]) < 4 * 1024 * 1024 + 100  # capped
