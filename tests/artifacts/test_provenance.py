"""Provenance statements: built, signed (DSSE), verified; tampering and other digests refused."""

from __future__ import annotations

import base64
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aether.artifacts.provenance import (
    BUILD_TYPE,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    BuildFacts,
    ProvenanceInvalidError,
    ProvenanceMismatchError,
    SourceFacts,
    TrustedKey,
    make_statement,
    pae,
    sbom_digest,
    sign_statement,
    verify_envelope,
)
from aether.artifacts.signing import Ed25519PrivateKey, fingerprint, generate_key, public_key_b64
from aether.artifacts.source_facts import public_remote, read_source_facts, tree_digest

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
SBOM = {"bomFormat": "CycloneDX", "components": [{"name": "flask", "version": "3.0.0"}]}


def trusted(key: Ed25519PrivateKey) -> TrustedKey:
    return TrustedKey(fingerprint=fingerprint(key), public_key=public_key_b64(key))


def statement(digest: str = DIGEST, **source: Any) -> dict[str, Any]:
    facts = SourceFacts(
        tree_digest="sha256:" + "11" * 32,
        lockfiles=(("requirements.txt", "22" * 32),),
        **source,
    )
    build = BuildFacts(
        app="shop",
        runtime="python",
        command=("aether", "deploy", ".", "--app", "shop"),
        builder_version="1.2.3",
        started_on=datetime(2026, 12, 4, 4, 0, 0, tzinfo=UTC),
        finished_on=datetime(2026, 12, 4, 4, 0, 9, tzinfo=UTC),
        sbom_digest=sbom_digest(SBOM),
    )
    return make_statement(digest, facts, build)


def test_the_statement_is_in_toto_v1_with_a_slsa_v1_predicate() -> None:
    made = statement(git_commit="a" * 40, git_remote="https://example.com/x.git", git_dirty=True)
    assert made["_type"] == STATEMENT_TYPE
    assert made["predicateType"] == PREDICATE_TYPE
    assert made["subject"] == [{"name": "shop", "digest": {"sha256": "ab" * 32}}]
    definition = made["predicate"]["buildDefinition"]
    assert definition["buildType"] == BUILD_TYPE
    assert definition["externalParameters"] == {
        "command": ["aether", "deploy", ".", "--app", "shop"],
        "app": "shop",
        "runtime": "python",
    }
    deps = {d["name"]: d for d in definition["resolvedDependencies"]}
    assert deps["source"]["digest"] == {"sha256": "11" * 32}
    assert deps["requirements.txt"]["digest"] == {"sha256": "22" * 32}
    assert deps["git"]["digest"] == {"gitCommit": "a" * 40}
    assert deps["git"]["uri"] == "git+https://example.com/x.git"
    assert deps["git"]["annotations"] == {"dirty": True}
    run = made["predicate"]["runDetails"]
    assert run["builder"] == {"id": "aether-cli/1.2.3"}
    assert run["metadata"] == {
        "startedOn": "2026-12-04T04:00:00Z",
        "finishedOn": "2026-12-04T04:00:09Z",
    }
    assert run["byproducts"][0]["digest"] == {"sha256": sbom_digest(SBOM).removeprefix("sha256:")}
    # outside a git repository there is no git dependency
    assert "git" not in {
        d["name"] for d in statement()["predicate"]["buildDefinition"]["resolvedDependencies"]
    }


def test_round_trip_through_a_signed_envelope() -> None:
    key = generate_key()
    made = statement()
    envelope = sign_statement(made, key)
    assert envelope["payloadType"] == PAYLOAD_TYPE
    assert envelope["signatures"][0]["keyid"] == fingerprint(key)
    # the signature is over the DSSE PAE of the payload, not the bare payload
    payload = base64.b64decode(envelope["payload"])
    key.public_key().verify(
        base64.b64decode(envelope["signatures"][0]["sig"]), pae(PAYLOAD_TYPE, payload)
    )
    verified = verify_envelope(envelope, DIGEST, [trusted(generate_key()), trusted(key)])
    assert verified.signed_by == fingerprint(key)
    assert verified.statement == made
    assert verified.sbom_digest == sbom_digest(SBOM)
    # the envelope survives a JSON round trip (as it is stored)
    assert verify_envelope(json.loads(json.dumps(envelope)), DIGEST, [trusted(key)]).signed_by


def test_a_tampered_payload_is_not_signed_by_anyone() -> None:
    key = generate_key()
    envelope = sign_statement(statement(), key)
    forged = statement()
    forged["predicate"]["buildDefinition"]["externalParameters"]["command"] = ["curl", "evil"]
    envelope["payload"] = base64.b64encode(json.dumps(forged).encode()).decode()
    assert verify_envelope(envelope, DIGEST, [trusted(key)]).signed_by is None


def test_an_unknown_key_verifies_nothing() -> None:
    envelope = sign_statement(statement(), generate_key())
    assert verify_envelope(envelope, DIGEST, [trusted(generate_key())]).signed_by is None
    assert verify_envelope(envelope, DIGEST, []).signed_by is None


def test_a_statement_for_another_digest_is_refused_naming_both() -> None:
    key = generate_key()
    envelope = sign_statement(statement(OTHER), key)
    with pytest.raises(ProvenanceMismatchError) as caught:
        verify_envelope(envelope, DIGEST, [trusted(key)])
    assert OTHER in caught.value.message and DIGEST in caught.value.message
    assert caught.value.code == "provenance_mismatch"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda e: e.update(payloadType="text/plain"), "payloadType"),
        (lambda e: e.update(payload="not base64!"), "base64"),
        (lambda e: e.update(signatures=[]), "no signatures"),
        (lambda e: e.update(payload=base64.b64encode(b"[1]").decode()), "not a JSON object"),
        (
            lambda e: e.update(
                payload=base64.b64encode(
                    json.dumps({**statement(), "predicateType": "https://x/y"}).encode()
                ).decode()
            ),
            "predicateType",
        ),
        (
            lambda e: e.update(
                payload=base64.b64encode(
                    json.dumps(
                        {**statement(), "_type": "https://in-toto.io/Statement/v0.1"}
                    ).encode()
                ).decode()
            ),
            "_type",
        ),
        (
            lambda e: e.update(
                payload=base64.b64encode(
                    json.dumps({**statement(), "subject": []}).encode()
                ).decode()
            ),
            "no subject",
        ),
    ],
)
def test_malformed_envelopes_are_refused(change: Any, says: str) -> None:
    key = generate_key()
    envelope = sign_statement(statement(), key)
    change(envelope)
    with pytest.raises(ProvenanceInvalidError, match=says):
        verify_envelope(envelope, DIGEST, [trusted(key)])


def test_the_sbom_digest_ignores_key_order() -> None:
    shuffled = {"components": SBOM["components"], "bomFormat": "CycloneDX"}
    assert sbom_digest(shuffled) == sbom_digest(SBOM)
    assert sbom_digest({**SBOM, "components": []}) != sbom_digest(SBOM)


def test_source_facts_of_a_git_checkout(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("print('hi')\n")
    (tmp_path / "requirements.txt").write_text("flask==3.0.0\n")
    plain = read_source_facts(tmp_path)
    assert plain.git_commit is None and plain.git_dirty is None
    assert dict(plain.lockfiles).keys() == {"requirements.txt"}

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@x", *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q")
    git("remote", "add", "origin", "https://user:s3cret@example.com/shop.git")
    git("add", ".")
    git("commit", "-qm", "one")
    facts = read_source_facts(tmp_path)
    assert facts.git_commit == git("rev-parse", "HEAD")
    assert facts.git_dirty is False
    assert facts.git_remote == "https://example.com/shop.git"  # never the token
    # .git is not part of the source tree digest
    assert facts.tree_digest == plain.tree_digest
    (tmp_path / "app.py").write_text("print('changed')\n")
    changed = read_source_facts(tmp_path)
    assert changed.git_dirty is True
    assert changed.tree_digest != facts.tree_digest
    assert tree_digest(tmp_path) == changed.tree_digest


def test_public_remote_strips_credentials_only() -> None:
    assert public_remote("https://tok@github.com/a/b.git") == "https://github.com/a/b.git"
    assert public_remote("git@github.com:a/b.git") == "git@github.com:a/b.git"
    assert public_remote("ssh://git@host/a.git") == "ssh://host/a.git"
