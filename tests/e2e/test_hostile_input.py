"""Bad input, end to end: every hostile artifact is refused with its code and loses nothing.

One real ``aether server`` and one real ``aether node`` serve the whole module, with
a healthy app deployed first. Archive attacks are uploaded with their correct
digest: the server scans the stream by the node's extraction rules and refuses
each with the code a node would give, stores nothing, and the healthy app keeps
serving (the node's own refusal of the same archives is tested in
tests/artifacts/test_artifacts_extract.py). Upload attacks (wrong digest,
truncated body, hostile incremental plan), signature attacks and a provenance
statement replayed onto another artifact are refused by the API before anything is
stored or deployed.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from aether.artifacts import pack_bytes, safe_extract
from aether.artifacts.provenance import BuildFacts, SourceFacts, make_statement, sign_statement
from aether.artifacts.signing import generate_key, public_key_b64, sign_digest
from tests.e2e.hostile import (
    MARKER,
    Member,
    digest_of,
    entry,
    gzip_bomb,
    harmless,
    planted,
    raw_upload_then_hang_up,
    tar_gz,
    tree,
)
from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-python"
HEALTHY = "hello-python"
NODE = "n1"
#: The node extracts with ``safe_extract``'s default limit (the bomb is sized from it).
NODE_EXTRACT_LIMIT: int = inspect.signature(safe_extract).parameters["max_bytes"].default


@dataclass
class Env:
    cluster: Cluster
    http: httpx.Client
    healthy_key: str
    healthy_url: str

    @property
    def root(self) -> Path:
        return self.cluster.root

    @property
    def node_dir(self) -> Path:
        return self.cluster.root / NODE

    @property
    def instances_dir(self) -> Path:
        return self.node_dir / "instances"

    @property
    def artifacts_dir(self) -> Path:
        return self.cluster.server_dir / "artifacts"

    @property
    def blobs_dir(self) -> Path:
        return self.cluster.server_dir / "blobs"

    def object_path(self, digest: str) -> str:
        hex_ = digest.removeprefix("sha256:")
        return f"sha256/{hex_[:2]}/{hex_}"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    cluster = Cluster(tmp_path_factory.mktemp("hostile"))
    try:
        cluster.start_server()
        cluster.start_node(NODE)
        cluster.cli_json("deploy", str(EXAMPLE), "--instances", "1")
        (healthy,) = cluster.active(HEALTHY)
        with httpx.Client(
            base_url=f"{cluster.api}/api/v1",
            headers={"Authorization": f"Bearer {cluster.admin_token}"},
            timeout=30,
        ) as http:
            yield Env(cluster, http, healthy["key"], healthy["url"])
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def _logs_on_failure(env: Env, request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(env.cluster.logs())


# --- helpers -----------------------------------------------------------------------------


def upload(
    env: Env, data: bytes, *, digest: str | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    return env.http.post(
        "/artifacts",
        content=data,
        headers={"X-Aether-Artifact-Digest": digest or digest_of(data), **(headers or {})},
    )


def upload_ok(env: Env, data: bytes, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = upload(env, data, headers=headers)
    assert response.status_code == 201, f"the registry refused plain bytes: {response.text}"
    out: dict[str, Any] = response.json()
    return out


def head_status(env: Env, digest: str) -> int:
    return env.http.head(f"/artifacts/{digest}").status_code


def deploy(env: Env, app: str, digest: str, **spec: Any) -> httpx.Response:
    body = {
        "digest": digest,
        "spec": {"name": app, "start": "python3 app.py", "health": "/", **spec},
        "instances": 1,
    }
    return env.http.post(f"/apps/{app}/deployments", json=body)


def instances_of(env: Env, app: str) -> list[dict[str, Any]]:
    response = env.http.get("/instances", params={"app": app})
    response.raise_for_status()
    out: list[dict[str, Any]] = response.json()
    return out


def assert_healthy_app_untouched(env: Env) -> None:
    """The app deployed before every attack: same instance, still ACTIVE, still serving."""
    active = env.cluster.active(HEALTHY)
    assert [(i["key"], i["url"]) for i in active] == [(env.healthy_key, env.healthy_url)], (
        f"the healthy app's instance changed or stopped: {active}"
    )
    for _ in range(5):
        response = httpx.get(f"{env.cluster.router(NODE)}/apps/{HEALTHY}/", timeout=5)
        assert response.status_code == 200, (
            f"the healthy app stopped serving through the router: "
            f"{response.status_code} {response.text}"
        )


def eventually(check: Callable[[], bool], timeout: float) -> bool:
    """Poll ``check`` until it holds or ``timeout`` passes; the caller asserts with details."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def registry_state(env: Env) -> dict[str, tuple[int, int]]:
    """Every file of the artifact registry (objects and temp files) and the blob store."""
    state = {f"artifacts/{k}": v for k, v in tree(env.artifacts_dir).items()}
    state.update({f"blobs/{k}": v for k, v in tree(env.blobs_dir).items()})
    return state


def added(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> str:
    new = sorted(set(after) - set(before))
    gone = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"new: {new}; gone: {gone}; changed: {changed}"


# --- archive attacks: refused by the node ----------------------------------------------------


@dataclass(frozen=True)
class ArchiveAttack:
    """One hostile archive, the code the node must answer and what it must not create."""

    members: Callable[[Path], list[Member]]
    code: str
    #: Paths (given the cluster root) that exist only if the attack got through.
    escapes: Callable[[Path], list[Path]] = lambda root: []
    fmt: int = tarfile.PAX_FORMAT


# The node extracts into DATA/instances/APP@V-N/.app.*.extracting, four levels below
# the cluster root (the parent of the node's DATA directory): "../" * 4 leaves DATA.
UP = "../" * 4

ATTACKS: dict[str, ArchiveAttack] = {
    "dotdot_path": ArchiveAttack(
        lambda root: [*harmless("dotdot"), entry(f"static/../{UP}{MARKER}-dotdot.txt", data=b"x")],
        "path_traversal",
        lambda root: [root / f"{MARKER}-dotdot.txt"],
    ),
    "absolute_path": ArchiveAttack(
        lambda root: [*harmless("absolute"), entry(f"{root}/{MARKER}-absolute.txt", data=b"x")],
        "absolute_path",
        lambda root: [root / f"{MARKER}-absolute.txt"],
    ),
    "symlink_escape": ArchiveAttack(
        lambda root: [
            *harmless("symlink"),
            entry("static/up", tarfile.SYMTYPE, linkname=f"../{UP}"),
            entry(f"static/up/{MARKER}-symlink.txt", data=b"written through the link"),
        ],
        "link_escape",
        lambda root: [root / f"{MARKER}-symlink.txt"],
    ),
    "hardlink_escape": ArchiveAttack(
        lambda root: [
            *harmless("hardlink"),
            entry(f"{MARKER}-stolen.txt", tarfile.LNKTYPE, linkname=f"{UP}secret.txt"),
            entry(f"{MARKER}-stolen.txt", data=b"overwritten"),  # write through the link
        ],
        "link_escape",
    ),
    "device_file": ArchiveAttack(
        lambda root: [
            *harmless("device"),
            entry(f"{MARKER}-disk", tarfile.BLKTYPE, devmajor=8, devminor=0),  # /dev/sda
        ],
        "special_file",
        fmt=tarfile.GNU_FORMAT,
    ),
    "fifo": ArchiveAttack(
        lambda root: [*harmless("fifo"), entry(f"static/{MARKER}-fifo", tarfile.FIFOTYPE)],
        "special_file",
    ),
}


def refused_upload(env: Env, archive: bytes, code: str) -> str:
    """Upload ``archive``: it must be refused with ``code`` and leave the registry as it was."""
    before = registry_state(env)
    started = time.monotonic()
    response = upload(env, archive)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == code, response.json()
    assert time.monotonic() - started < 30
    after = registry_state(env)
    assert after == before, f"a refused upload left files: {added(before, after)}"
    assert head_status(env, digest_of(archive)) == 404
    message: str = response.json()["message"]
    return message


@pytest.mark.parametrize("name", list(ATTACKS))
def test_hostile_archive_is_refused_at_upload(env: Env, name: str) -> None:
    attack = ATTACKS[name]
    root = env.root
    secret = root / "secret.txt"  # a file next to the node's data dir, for the hardlink
    if not secret.exists():
        secret.write_text("the node's neighbour's secret\n")
    secret_before = (secret.read_text(), secret.stat().st_nlink, secret.stat().st_ino)
    outside = (env.instances_dir, env.node_dir / "artifacts")
    node_files_before = tree(env.node_dir, skip=outside)

    refused_upload(env, tar_gz(attack.members(root), attack.fmt), attack.code)

    # first what matters most: nothing escaped, whatever the node reported
    for escape in attack.escapes(root):
        assert not os.path.lexists(escape), f"{name}: the archive planted {escape}"
    st = secret.stat()
    assert (secret.read_text(), st.st_nlink, st.st_ino) == secret_before, (
        f"{name}: a file outside the node's data dir was linked to or changed "
        f"(links {secret_before[1]} -> {st.st_nlink}, text {secret.read_text()!r})"
    )
    assert planted(root) == [], f"{name}: files named after the attack exist: {planted(root)}"
    node_files = tree(env.node_dir, skip=outside)
    assert set(node_files) >= set(node_files_before), f"{name}: node files vanished"
    assert_healthy_app_untouched(env)


def test_decompression_bomb_is_refused_at_upload(env: Env) -> None:
    expanded = NODE_EXTRACT_LIMIT + (256 << 20)
    bomb = gzip_bomb(expanded)
    assert len(bomb) < 2 << 20, "the bomb should be small on the wire"

    message = refused_upload(env, bomb, "archive_too_large")

    assert str(NODE_EXTRACT_LIMIT) in message, f"the message should name the limit: {message}"
    assert_healthy_app_untouched(env)


# --- upload attacks: refused by the API ------------------------------------------------------


def test_digest_mismatch_stores_nothing(env: Env) -> None:
    data = tar_gz(harmless("mismatch"))
    claimed = digest_of(data + b"tampered")
    before = registry_state(env)

    response = upload(env, data, digest=claimed)

    assert response.status_code == 400, response.text
    assert response.json()["code"] == "digest_mismatch", response.json()
    after = registry_state(env)
    assert after == before, f"a refused upload left files: {added(before, after)}"
    assert head_status(env, claimed) == 404, "the claimed digest became visible"
    assert head_status(env, digest_of(data)) == 404, "the real digest became visible"


def _uploads_in_progress(env: Env) -> float:
    text = httpx.get(f"{env.cluster.api}/metrics", timeout=5).text
    match = re.search(r"^artifact_uploads_in_progress(?:\{[^}]*\})?\s+(\S+)$", text, re.M)
    assert match, "artifact_uploads_in_progress is missing from /metrics"
    return float(match.group(1))


@pytest.mark.parametrize("framing", ["content_length", "chunked"])
def test_truncated_upload_stores_nothing(env: Env, framing: str) -> None:
    data = os.urandom(3 << 20)
    digest = digest_of(data)
    before = registry_state(env)

    answer = raw_upload_then_hang_up(
        env.cluster.api,
        env.cluster.admin_token,
        digest=digest,
        sent=data[: len(data) // 2],
        content_length=len(data) if framing == "content_length" else None,
    )

    assert answer.status in (None, 400), f"a truncated upload was answered {answer.body[:300]!r}"
    assert eventually(lambda: registry_state(env) == before, 10), (
        f"the partial upload was left in the registry: {added(before, registry_state(env))}"
    )
    wait_for(lambda: _uploads_in_progress(env) == 0, 10, "the upload slot to be released")
    assert head_status(env, digest) == 404, "a truncated upload became visible"
    # the server keeps serving, and the same bytes sent whole are stored normally
    assert httpx.get(f"{env.cluster.api}/readyz", timeout=5).status_code == 200
    stored = upload_ok(env, data)
    assert (stored["digest"], stored["duplicate"]) == (digest, False), stored
    assert head_status(env, digest) == 200


@pytest.mark.parametrize(
    ("path", "code"),
    [
        (f"app/../../{MARKER}-plan.txt", "path_traversal"),
        (f"{{root}}/{MARKER}-plan.txt", "absolute_path"),
    ],
)
def test_hostile_incremental_plan_is_refused(env: Env, path: str, code: str) -> None:
    path = path.format(root=env.root)
    content = b"print('from a blob')\n"
    blob = digest_of(content)
    put = env.http.put(f"/blobs/{blob}", content=content)
    assert put.status_code == 201, put.text
    before = registry_state(env)
    plan = {
        "format": "aether-tar-gz/1",
        "entries": [
            {"type": "dir", "path": "app"},
            {
                "type": "file",
                "path": path,
                "sha256": blob.removeprefix("sha256:"),
                "size": len(content),
                "mode": 0o644,
            },
        ],
    }
    claimed = digest_of(b"whatever the client says")

    response = env.http.post("/artifacts/assemble", json={"digest": claimed, "plan": plan})

    assert response.status_code == 400, response.text
    assert response.json()["code"] == code, response.json()
    after = registry_state(env)
    assert after == before, f"a refused plan left files: {added(before, after)}"
    assert head_status(env, claimed) == 404
    assert planted(env.root) == [], f"a refused plan planted files: {planted(env.root)}"


def test_hostile_incremental_plan_symlink_escape_is_refused(env: Env) -> None:
    before = registry_state(env)
    plan = {
        "format": "aether-tar-gz/1",
        "entries": [
            {"type": "dir", "path": "app"},
            {"type": "symlink", "path": "app/here", "target": "."},
            {"type": "symlink", "path": "app/out", "target": "here/../../.."},
        ],
    }
    claimed = digest_of(b"a plan with a link chain")

    response = env.http.post("/artifacts/assemble", json={"digest": claimed, "plan": plan})

    assert response.status_code == 400, response.text
    assert response.json()["code"] == "link_escape", response.json()
    assert registry_state(env) == before
    assert head_status(env, claimed) == 404


# --- signature attacks: refused at deployment -----------------------------------------------


def _signed_app_tree(tmp_path: Path, label: str) -> bytes:
    app = tmp_path / label
    shutil.copytree(EXAMPLE, app)
    (app / "VERSION").write_text(label)
    return pack_bytes(app)


@pytest.fixture(scope="module")
def signed_app(env: Env, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An app that requires signatures, one trusted key, and v1 (signed by it) running."""
    app = "signed-app"
    trusted = generate_key()
    settings = env.http.put(f"/apps/{app}/settings", json={"require_signature": True})
    assert settings.status_code == 200, settings.text
    key = env.http.post(
        f"/apps/{app}/public-keys", json={"public_key": public_key_b64(trusted), "name": "ci"}
    )
    assert key.status_code == 201, key.text
    v1 = _signed_app_tree(tmp_path_factory.mktemp("signed"), "v1")
    digest = digest_of(v1)
    out = upload_ok(
        env, v1, {"X-Aether-Signature": sign_digest(trusted, digest), "X-Aether-App": app}
    )
    assert out["verified"] is True, out
    response = deploy(env, app, digest, health="/healthz")
    assert response.status_code == 201, response.text
    wait_for(lambda: len(env.cluster.active(app)) == 1, 30, f"{app} v1 to be ACTIVE")
    return {"app": app, "blueprint": env.cluster.api_get(f"/blueprints/{app}")}


def _assert_signature_refusal(
    env: Env, signed_app: dict[str, Any], data: bytes, headers: dict[str, str], code: str
) -> None:
    app = signed_app["app"]
    deployments_before = env.http.get(f"/apps/{app}/deployments").json()
    instances_before = instances_of(env, app)
    out = upload_ok(env, data, headers)
    assert out["verified"] is False, f"the upload claims a verified signature: {out}"

    response = deploy(env, app, out["digest"], health="/healthz")

    assert response.status_code == 400, f"the deployment was not refused: {response.text}"
    assert response.json()["code"] == code, response.json()
    assert env.cluster.api_get(f"/blueprints/{app}") == signed_app["blueprint"], (
        "the refused deployment changed the blueprint"
    )
    assert env.http.get(f"/apps/{app}/deployments").json() == deployments_before, (
        "the refused deployment was recorded"
    )
    time.sleep(0.5)  # give a wrongly started rollout the time to place something
    assert instances_of(env, app) == instances_before, "the refused artifact was placed"
    assert_healthy_app_untouched(env)


def test_artifact_signed_by_an_unregistered_key_is_refused(
    env: Env, signed_app: dict[str, Any], tmp_path: Path
) -> None:
    v2 = _signed_app_tree(tmp_path, "v2-forged")
    forger = generate_key()
    headers = {
        "X-Aether-Signature": sign_digest(forger, digest_of(v2)),
        "X-Aether-App": signed_app["app"],
    }
    _assert_signature_refusal(env, signed_app, v2, headers, "signature_invalid")


def test_unsigned_artifact_is_refused(env: Env, signed_app: dict[str, Any], tmp_path: Path) -> None:
    v2 = _signed_app_tree(tmp_path, "v2-unsigned")
    _assert_signature_refusal(env, signed_app, v2, {}, "signature_required")


# --- provenance attacks: a statement replayed onto another artifact ---------------------------


def test_provenance_for_another_digest_is_refused(env: Env, tmp_path: Path) -> None:
    """A genuine statement, signed by the app's trusted key, about v1, sent for v2: refused
    naming both digests, nothing stored, and v2 cannot deploy under require_provenance."""
    app = "proven-app"
    trusted = generate_key()
    settings = env.http.put(f"/apps/{app}/settings", json={"require_provenance": True})
    assert settings.status_code == 200, settings.text
    key = env.http.post(f"/apps/{app}/public-keys", json={"public_key": public_key_b64(trusted)})
    assert key.status_code == 201, key.text
    v1 = _signed_app_tree(tmp_path, "v1-proven")
    v2 = _signed_app_tree(tmp_path, "v2-replayed")
    signed = {"X-Aether-App": app}
    for data in (v1, v2):
        upload_ok(
            env, data, {**signed, "X-Aether-Signature": sign_digest(trusted, digest_of(data))}
        )
    now = datetime.now(UTC)
    facts = BuildFacts(
        app=app,
        runtime="python",
        command=("aether", "deploy"),
        builder_version="test",
        started_on=now,
        finished_on=now,
    )
    genuine = sign_statement(
        make_statement(digest_of(v1), SourceFacts(tree_digest=digest_of(v1)), facts), trusted
    )

    replayed = env.http.put(f"/artifacts/{digest_of(v2)}/provenance", json=genuine, headers=signed)

    assert replayed.status_code == 400, replayed.text
    error = replayed.json()
    assert error["code"] == "provenance_mismatch", error
    assert digest_of(v1) in error["message"] and digest_of(v2) in error["message"], error
    assert env.http.get(f"/artifacts/{digest_of(v2)}/provenance").status_code == 404
    refused = deploy(env, app, digest_of(v2), health="/healthz")
    assert refused.status_code == 400, refused.text
    assert refused.json()["code"] == "provenance_required", refused.json()
    assert env.http.get(f"/apps/{app}/deployments").json() == []
    assert_healthy_app_untouched(env)
