"""Incremental uploads against a real server: blobs, assembly, refusals, the upload bound."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aether.artifacts import PackPlan, digest_bytes, pack
from aether.artifacts.blobs import TenantBlobs
from aether.artifacts.sync import MANY_BLOBS, missing_blobs, upload_blob, upload_incremental
from aether.client import ApiClient
from aether.errors import BadRequestError
from tests.support.api import (
    DIGEST_HEADER,
    assert_envelope,
    bearer,
    sha256_of,
    unique,
)
from tests.support.server import RunningServer, running_server


def make_app(root: Path, files: int = 12) -> Path:
    """A small app: distinct contents, a subdirectory, an executable, a symlink."""
    (root / "lib").mkdir(parents=True)
    (root / "aether.toml").write_text(f'name = "{root.name}"\nstart = "python3 main.py"\n')
    (root / "main.py").write_text("import lib.util\nprint('v1')\n")
    for i in range(files):
        (root / "lib" / f"mod{i}.py").write_text(f"# module {i}\n" + f"X{i} = {i}\n" * 200)
    (root / "run.sh").write_text("#!/bin/sh\nexec python3 main.py\n")
    os.chmod(root / "run.sh", 0o755)
    os.symlink("lib/mod0.py", root / "alias.py")
    return root


def packed(root: Path, out: Path) -> tuple[str, PackPlan, Path]:
    result = pack(root, out)
    assert result.plan is not None
    return result.digest, result.plan, out


async def test_first_upload_sends_every_blob_then_only_what_changed(
    server: RunningServer, tmp_path: Path
) -> None:
    token = server.new_tenant()
    root = make_app(tmp_path / unique("incr"))
    digest, plan, archive = packed(root, tmp_path / "v1.tar.gz")
    files = plan.file_count

    async with ApiClient(server.base_url, token) as client:
        assert not await client.has_artifact(digest)
        first = await upload_incremental(client, plan, root, digest, archive=archive)
        assert first["digest"] == digest
        assert first["size_bytes"] == archive.stat().st_size
        assert first["duplicate"] is False
        assert first["fallback"] is None
        assert first["uploaded_files"] == files
        assert first["reused_files"] == 0
        assert first["uploaded_bytes"] == plan.file_bytes
        assert await client.has_artifact(digest)
        back = tmp_path / "back.tar.gz"
        await client.download_artifact(digest, back)
        assert back.read_bytes() == archive.read_bytes()

        # a one-line change: one blob is missing, and the assembled bytes are pack()'s
        (root / "main.py").write_text("import lib.util\nprint('v2')\n")
        digest2, plan2, archive2 = packed(root, tmp_path / "v2.tar.gz")
        assert digest2 != digest
        changed = digest_bytes((root / "main.py").read_bytes())
        assert await missing_blobs(client, plan2.blob_digests()) == [changed]
        progress: list[int] = []
        second = await upload_incremental(
            client, plan2, root, digest2, archive=archive2, progress=progress.append
        )
        assert (second["digest"], second["fallback"]) == (digest2, None)
        assert second["uploaded_files"] == 1
        assert second["reused_files"] == files - 1
        assert second["uploaded_bytes"] == sum(progress) == len((root / "main.py").read_bytes())
        await client.download_artifact(digest2, back)
        assert back.read_bytes() == archive2.read_bytes()

        # the same plan again: nothing to send, the artifact is a duplicate
        third = await upload_incremental(client, plan2, root, digest2, archive=archive2)
        assert (third["uploaded_bytes"], third["duplicate"]) == (0, True)


async def test_assemble_with_a_missing_blob_is_refused(
    server: RunningServer, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    token = server.new_tenant()
    root = make_app(tmp_path / unique("miss"), files=3)
    digest, plan, _ = packed(root, tmp_path / "a.tar.gz")
    async with ApiClient(server.base_url, token) as client:
        # upload all blobs but one
        skipped = plan.blob_digests()[-1]
        by_digest = {"sha256:" + e.sha256: root / e.path for e in plan.files()}
        for blob in plan.blob_digests()[:-1]:
            await upload_blob(client, by_digest[blob], blob)
    response = await http.post(
        "/api/v1/artifacts/assemble",
        content=json.dumps({"digest": digest, "plan": plan.to_dict()}),
        headers=bearer(token),
    )
    body = assert_envelope(response, 400, "missing_blobs")
    assert skipped in body["message"] and "1 blob(s)" in body["message"]
    assert (
        await http.head(f"/api/v1/artifacts/{digest}", headers=bearer(token))
    ).status_code == 404
    assert not server.run(server.ctx.registry.exists(digest))


async def test_a_wrong_digest_is_refused_and_nothing_becomes_visible(
    server: RunningServer, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    token = server.new_tenant()
    root = make_app(tmp_path / unique("wrong"), files=2)
    digest, plan, _ = packed(root, tmp_path / "a.tar.gz")
    before = server.run(server.ctx.registry.list_digests())
    async with ApiClient(server.base_url, token) as client:
        for entry in plan.files():
            await upload_blob(client, root / entry.path, "sha256:" + entry.sha256)
    claimed = sha256_of(b"not this archive " + os.urandom(8))
    response = await http.post(
        "/api/v1/artifacts/assemble",
        content=json.dumps({"digest": claimed, "plan": plan.to_dict()}),
        headers=bearer(token),
    )
    body = assert_envelope(response, 400, "digest_mismatch")
    assert digest in body["message"]  # what the plan did assemble to
    assert (
        await http.head(f"/api/v1/artifacts/{claimed}", headers=bearer(token))
    ).status_code == 404
    assert (
        await http.head(f"/api/v1/artifacts/{digest}", headers=bearer(token))
    ).status_code == 404
    assert server.run(server.ctx.registry.list_digests()) == before
    store = server.ctx.blobs.for_tenant(_tenant_id(server, token))
    assert isinstance(store, TenantBlobs)
    tmp_dir = store.root / "tmp"
    assert list(tmp_dir.iterdir()) == []  # no assembly leftovers


def _tenant_id(server: RunningServer, token: str) -> str:
    principal = server.run(server.ctx.records.authenticate(token))
    assert principal is not None
    return principal.tenant_id


async def test_a_blob_that_does_not_match_its_digest_is_not_stored(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    token = server.new_tenant()
    data = os.urandom(300)
    wrong = sha256_of(data + b"!")
    response = await http.put(f"/api/v1/blobs/{wrong}", content=data, headers=bearer(token))
    assert_envelope(response, 400, "digest_mismatch")
    missing = await http.post(
        "/api/v1/blobs/missing", json={"digests": [wrong, sha256_of(data)]}, headers=bearer(token)
    )
    assert missing.json() == {"missing": [wrong, sha256_of(data)]}

    ok = await http.put(f"/api/v1/blobs/{sha256_of(data)}", content=data, headers=bearer(token))
    assert ok.status_code == 201, ok.text
    assert ok.json() == {"digest": sha256_of(data), "size_bytes": 300, "duplicate": False}
    again = await http.put(f"/api/v1/blobs/{sha256_of(data)}", content=data, headers=bearer(token))
    assert again.json()["duplicate"] is True
    missing = await http.post(
        "/api/v1/blobs/missing",
        json={"digests": [wrong, sha256_of(data), wrong]},
        headers=bearer(token),
    )
    assert missing.json() == {"missing": [wrong]}


async def test_blob_routes_validate_and_need_an_operator(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    data = b"hello"
    good = sha256_of(data)
    assert_envelope(
        await http.post("/api/v1/blobs/missing", json={"digests": []}), 401, "unauthorized"
    )
    assert_envelope(await http.put(f"/api/v1/blobs/{good}", content=data), 401, "unauthorized")
    viewer = bearer(server.token("viewer"))
    assert_envelope(
        await http.put(f"/api/v1/blobs/{good}", content=data, headers=viewer), 403, "forbidden"
    )
    assert_envelope(
        await http.post("/api/v1/artifacts/assemble", content=b"{}", headers=viewer),
        403,
        "forbidden",
    )
    op = bearer(server.token("operator"))
    assert_envelope(
        await http.post("/api/v1/blobs/missing", json={"digests": ["sha256:XY"]}, headers=op),
        400,
        "invalid_digest",
    )
    assert_envelope(
        await http.put("/api/v1/blobs/nope", content=data, headers=op), 400, "invalid_digest"
    )
    assert_envelope(
        await http.post("/api/v1/artifacts/assemble", content=b"{not json", headers=op),
        400,
        "bad_request",
    )


@pytest.mark.parametrize(
    ("entries", "code"),
    [
        (
            [{"type": "file", "path": "../x", "sha256": "0" * 64, "size": 1, "mode": 420}],
            "path_traversal",
        ),
        ([{"type": "symlink", "path": "l", "target": "/etc/passwd"}], "link_escape"),
        ([{"type": "dir", "path": "a"}, {"type": "dir", "path": "a"}], "path_conflict"),
        (
            [{"type": "file", "path": "big", "sha256": "0" * 64, "size": 1 << 40, "mode": 420}],
            "archive_too_large",
        ),
    ],
    ids=["traversal", "absolute-link", "duplicate", "oversized"],
)
async def test_hostile_plans_are_refused_over_http(
    server: RunningServer, http: httpx.AsyncClient, entries: list[dict[str, object]], code: str
) -> None:
    body = {"digest": sha256_of(b"x"), "plan": {"format": "aether-tar-gz/1", "entries": entries}}
    response = await http.post(
        "/api/v1/artifacts/assemble",
        content=json.dumps(body),
        headers=bearer(server.token("operator")),
    )
    assert_envelope(response, 400, code)


async def test_blobs_are_per_tenant(server: RunningServer, tmp_path: Path) -> None:
    a, b = server.new_tenant(), server.new_tenant()
    root = make_app(tmp_path / unique("tenancy"), files=2)
    digest, plan, archive = packed(root, tmp_path / "a.tar.gz")
    async with ApiClient(server.base_url, a) as client:
        await upload_incremental(client, plan, root, digest, archive=archive)
        assert await missing_blobs(client, plan.blob_digests()) == []
    async with ApiClient(server.base_url, b) as client:
        # B learns nothing about A's files, and cannot assemble A's artifact from them
        assert await missing_blobs(client, plan.blob_digests()) == plan.blob_digests()
        assert not await client.has_artifact(digest)
        with pytest.raises(BadRequestError) as refused:
            await client.json(
                "POST",
                "/api/v1/artifacts/assemble",
                json={"digest": digest, "plan": plan.to_dict()},
            )
        assert refused.value.code == "missing_blobs"
        # once B sends the contents itself, the artifact becomes B's too
        again = await upload_incremental(client, plan, root, digest, archive=archive)
        assert again["duplicate"] is True and await client.has_artifact(digest)


async def test_a_stale_plan_falls_back_to_the_whole_archive(
    server: RunningServer, tmp_path: Path
) -> None:
    """The server assembles other bytes than claimed (as with another zlib): send it whole."""
    token = server.new_tenant()
    root = make_app(tmp_path / unique("fallback"), files=2)
    _, stale_plan, _ = packed(root, tmp_path / "v1.tar.gz")
    (root / "main.py").write_text("print('v2')\n")
    digest, _, archive = packed(root, tmp_path / "v2.tar.gz")
    async with ApiClient(server.base_url, token) as client:
        result = await upload_incremental(client, stale_plan, root, digest, archive=archive)
        assert result["fallback"] == "digest_mismatch"
        assert (result["digest"], result["duplicate"]) == (digest, False)
        assert result["uploaded_bytes"] >= archive.stat().st_size
        back = tmp_path / "back.tar.gz"
        await client.download_artifact(digest, back)
        assert back.read_bytes() == archive.read_bytes()
        # no plan at all: straight to the whole upload
        whole = await upload_incremental(client, None, root, digest, archive=archive)
        assert (whole["fallback"], whole["duplicate"]) == ("no_plan", True)


def _tenant_blobs(server: RunningServer, token: str) -> TenantBlobs:
    store = server.ctx.blobs.for_tenant(_tenant_id(server, token))
    assert isinstance(store, TenantBlobs)
    return store


async def test_blobs_lost_before_assembly_are_sent_again(
    server: RunningServer, tmp_path: Path
) -> None:
    """Garbage collection drops a blob between upload and assembly: the client resends it."""
    token = server.new_tenant()
    store = _tenant_blobs(server, token)
    root = make_app(tmp_path / unique("lost"), files=4)
    digest, plan, archive = packed(root, tmp_path / "v1.tar.gz")
    blobs = plan.blob_digests()
    victim = blobs[0]
    victim_size = next(e.size for e in plan.files() if "sha256:" + e.sha256 == victim)
    sent: list[int] = []

    def lose_one_after_the_last_upload(n: int) -> None:
        sent.append(n)
        if len(sent) == len(blobs):  # every blob is on the server, assembly is next
            store.path(victim).unlink()

    async with ApiClient(server.base_url, token) as client:
        result = await upload_incremental(
            client, plan, root, digest, archive=archive, progress=lose_one_after_the_last_upload
        )
        assert (result["digest"], result["fallback"], result["duplicate"]) == (digest, None, False)
        assert len(sent) == len(blobs) + 1  # the lost one went twice
        assert result["uploaded_bytes"] == plan.file_bytes + victim_size
        assert result["uploaded_files"] == plan.file_count and result["reused_files"] == 0
        back = tmp_path / "back.tar.gz"
        await client.download_artifact(digest, back)
        assert back.read_bytes() == archive.read_bytes()


async def test_blobs_lost_again_fall_back_to_the_whole_archive(
    server: RunningServer, tmp_path: Path
) -> None:
    token = server.new_tenant()
    store = _tenant_blobs(server, token)
    root = make_app(tmp_path / unique("lost-again"), files=3)
    digest, plan, archive = packed(root, tmp_path / "v1.tar.gz")

    def lose_everything(n: int) -> None:  # as if gc ran after every upload
        for path in (store.root / "sha256").rglob("*"):
            if path.is_file():
                path.unlink()

    async with ApiClient(server.base_url, token) as client:
        result = await upload_incremental(
            client, plan, root, digest, archive=archive, progress=lose_everything
        )
        assert (result["digest"], result["fallback"]) == (digest, "missing_blobs")
        assert result["uploaded_bytes"] >= 2 * plan.file_bytes + archive.stat().st_size
        back = tmp_path / "back.tar.gz"
        await client.download_artifact(digest, back)
        assert back.read_bytes() == archive.read_bytes()


class RecordingClient(ApiClient):
    """The real client, noting which digests each ``blobs/missing`` request asked about."""

    asked: list[list[str]]

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        if path.endswith("/blobs/missing"):
            self.asked.append(list(kwargs["json"]["digests"]))
        return await super().json(method, path, **kwargs)


async def test_blobs_known_to_the_server_are_not_asked_about_again(
    server: RunningServer, tmp_path: Path
) -> None:
    token = server.new_tenant()
    store = _tenant_blobs(server, token)
    root = make_app(tmp_path / unique("known"), files=4)
    digest, plan, archive = packed(root, tmp_path / "v1.tar.gz")
    known: set[str] = set()
    client = RecordingClient(server.base_url, token)
    async with client:
        client.asked = []
        first = await upload_incremental(client, plan, root, digest, archive=archive, known=known)
        assert first["fallback"] is None and known == set(plan.blob_digests())
        assert client.asked == [plan.blob_digests()]

        # a one-line change: only the new content is asked about and sent
        (root / "main.py").write_text("import lib.util\nprint('v2')\n")
        digest2, plan2, archive2 = packed(root, tmp_path / "v2.tar.gz")
        changed = digest_bytes((root / "main.py").read_bytes())
        client.asked = []
        second = await upload_incremental(
            client, plan2, root, digest2, archive=archive2, known=known
        )
        assert (second["digest"], second["fallback"], second["uploaded_files"]) == (
            digest2,
            None,
            1,
        )
        assert client.asked == [[changed]]

        # a wrong hint (the server lost a blob the client believes it has): the
        # assembly says so, the client asks about everything and sends it; no failure
        victim = "sha256:" + next(e.sha256 for e in plan2.files() if e.path == "lib/mod1.py")
        store.path(victim).unlink()
        (root / "main.py").write_text("import lib.util\nprint('v3')\n")
        digest3, plan3, archive3 = packed(root, tmp_path / "v3.tar.gz")
        client.asked = []
        third = await upload_incremental(
            client, plan3, root, digest3, archive=archive3, known=known
        )
        assert (third["digest"], third["fallback"], third["uploaded_files"]) == (digest3, None, 2)
        assert len(client.asked) == 2 and client.asked[1] == plan3.blob_digests()
        assert victim not in client.asked[0]
        back = tmp_path / "back.tar.gz"
        await client.download_artifact(digest3, back)
        assert back.read_bytes() == archive3.read_bytes()
        assert known == set(plan3.blob_digests())


async def test_a_first_deploy_of_many_files_is_one_archive_whose_files_become_blobs(
    server: RunningServer, tmp_path: Path
) -> None:
    """More than MANY_BLOBS missing: the whole archive goes; its files are kept as blobs."""
    token = server.new_tenant()
    root = make_app(tmp_path / unique("many"), files=MANY_BLOBS + 5)
    digest, plan, archive = packed(root, tmp_path / "v1.tar.gz")
    known: set[str] = set()
    async with ApiClient(server.base_url, token) as client:
        first = await upload_incremental(client, plan, root, digest, archive=archive, known=known)
        assert (first["digest"], first["fallback"]) == (digest, "many_blobs")
        assert first["uploaded_bytes"] == archive.stat().st_size
        # the server keeps the archive's files as blobs (in the background)
        deadline = time.monotonic() + 30
        while await missing_blobs(client, plan.blob_digests()):
            assert time.monotonic() < deadline, "the archive's files never became blobs"
            await asyncio.sleep(0.05)
        # so a one-line change is incremental: one blob sent
        (root / "main.py").write_text("import lib.util\nprint('v2')\n")
        digest2, plan2, archive2 = packed(root, tmp_path / "v2.tar.gz")
        second = await upload_incremental(
            client, plan2, root, digest2, archive=archive2, known=known
        )
        assert (second["digest"], second["fallback"], second["uploaded_files"]) == (
            digest2,
            None,
            1,
        )
        back = tmp_path / "back.tar.gz"
        await client.download_artifact(digest2, back)
        assert back.read_bytes() == archive2.read_bytes()


# -- AETHER_MAX_CONCURRENT_UPLOADS -------------------------------------------------------

LIMIT = 2


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(
        tmp_path_factory.mktemp("aether-limited"), max_concurrent_uploads=LIMIT
    ) as running:
        yield running


def gauges(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.labels:
                out[sample.name] = sample.value
    return out


async def test_excess_uploads_wait_for_a_slot(small_server: RunningServer) -> None:
    token = small_server.admin_token
    uploads = 6
    chunks, pause = 8, 0.04

    def slow_body(data: bytes) -> AsyncIterator[bytes]:
        async def gen() -> AsyncIterator[bytes]:
            step = len(data) // chunks
            for i in range(chunks):
                await asyncio.sleep(pause)
                yield data[i * step : (i + 1) * step if i < chunks - 1 else len(data)]

        return gen()

    async with httpx.AsyncClient(base_url=small_server.base_url, timeout=30) as http:
        seen_in_progress: list[float] = []
        seen_waiting: list[float] = []
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                values = gauges((await http.get("/metrics")).text)
                seen_in_progress.append(values["artifact_uploads_in_progress"])
                seen_waiting.append(values["artifact_uploads_waiting"])
                await asyncio.sleep(0.01)

        async def one(i: int) -> httpx.Response:
            data = os.urandom(4096 + i)
            if i % 2:  # half whole artifacts, half blobs: one bound for both
                return await http.post(
                    "/api/v1/artifacts",
                    content=slow_body(data),
                    headers={**bearer(token), DIGEST_HEADER: sha256_of(data)},
                )
            return await http.put(
                f"/api/v1/blobs/{sha256_of(data)}", content=slow_body(data), headers=bearer(token)
            )

        watcher = asyncio.create_task(watch())
        started = time.monotonic()
        responses = await asyncio.gather(*(one(i) for i in range(uploads)))
        elapsed = time.monotonic() - started
        done.set()
        await watcher
        after = gauges((await http.get("/metrics")).text)

    assert [r.status_code for r in responses] == [201] * uploads, [r.text for r in responses]
    assert max(seen_in_progress) <= LIMIT
    assert max(seen_in_progress) == LIMIT  # the bound was reached...
    assert max(seen_waiting) >= 1  # ...and the excess queued instead of failing
    assert after["artifact_uploads_in_progress"] == after["artifact_uploads_waiting"] == 0
    # the first two held their slots while their bodies trickled in
    assert elapsed >= chunks * pause
