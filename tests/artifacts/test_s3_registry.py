"""The artifact registry on S3, beyond the contract (test_registry_contract.py): multipart
uploads, cleanup of aborted uploads, bounded memory, several registries sharing a bucket,
configuration and the server end to end, against a real S3 server (``rclone serve s3``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from aether.artifacts import digest_bytes
from aether.artifacts.s3 import S3ArtifactRegistry, S3Config, parse_s3_url
from aether.errors import (
    NotFoundError,
    ServiceUnavailableError,
)
from aether.server.settings import ServerSettings
from tests.support.api import DIGEST_HEADER, assert_envelope, bearer, deploy, sha256_of
from tests.support.registry import (
    BIG,
    BIG_DIGEST,
    DATA,
    DIGEST,
    PART,
    chunks,
    in_progress,
    read_all,
    s3_config,
)
from tests.support.s3 import S3Server, s3_server_process
from tests.support.server import running_server


@pytest.fixture
async def s3reg(s3_server: S3Server, bucket: str) -> AsyncIterator[S3ArtifactRegistry]:
    async with S3ArtifactRegistry(s3_config(s3_server, bucket)) as reg:
        yield reg


async def test_objects_are_content_addressed_under_the_prefix(
    s3reg: S3ArtifactRegistry, s3_server: S3Server
) -> None:
    await s3reg.write_stream(chunks(BIG), BIG_DIGEST)
    await s3reg.write_stream(chunks(DATA), DIGEST)
    stored = s3_server.root / s3reg.config.bucket / "artifacts" / "sha256"
    assert sorted(p.name for p in stored.iterdir()) == sorted(
        d.removeprefix("sha256:") for d in (BIG_DIGEST, DIGEST)
    )
    assert (stored / BIG_DIGEST.removeprefix("sha256:")).read_bytes() == BIG
    # objects of another prefix in the same bucket are not ours
    other = S3ArtifactRegistry(dataclasses.replace(s3reg.config, prefix=""))
    async with other:
        assert await other.list_digests() == []
        assert not await other.exists(DIGEST)


async def test_a_multipart_upload_is_invisible_until_verified(s3reg: S3ArtifactRegistry) -> None:
    """Parts already sent sit in an incomplete upload: readers see nothing until it verifies."""
    release = asyncio.Event()
    sent_parts = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield BIG[: 2 * PART + 1]  # two full parts go out while the stream is open
        sent_parts.set()
        await release.wait()
        yield BIG[2 * PART + 1 :]

    task = asyncio.create_task(s3reg.write_stream(slow(), BIG_DIGEST))
    await sent_parts.wait()
    deadline = asyncio.get_running_loop().time() + 10
    while True:  # the parts are on their way to the server
        uploads = await in_progress(s3reg)
        if uploads or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert [key for key, _ in uploads] == [s3reg.key(BIG_DIGEST)]
    assert not await s3reg.exists(BIG_DIGEST)
    assert await s3reg.list_digests() == []
    with pytest.raises(NotFoundError):
        await s3reg.open_chunks(BIG_DIGEST)
    release.set()
    result = await task
    assert (result.size_bytes, result.duplicate) == (len(BIG), False)
    assert await read_all(s3reg, BIG_DIGEST, 1 << 16) == BIG
    assert await in_progress(s3reg) == []


async def test_uploads_stream_with_bounded_memory(s3reg: S3ArtifactRegistry) -> None:
    """A 40 MiB upload never holds much more than a part or two in memory."""
    size = 40 << 20
    s3reg.max_bytes = size
    block = os.urandom(1 << 20)
    h = hashlib.sha256()
    for i in range(40):
        h.update(block[i:] + block[:i])
    digest = "sha256:" + h.hexdigest()

    async def generated() -> AsyncIterator[bytes]:
        for i in range(40):
            yield block[i:] + block[:i]

    tracemalloc.start()
    try:
        result = await s3reg.write_stream(generated(), digest)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.size_bytes == size
    assert peak < 4 * PART, f"peak {peak} bytes held for a {size}-byte upload"
    total = 0
    tracemalloc.start()
    try:
        async for chunk in await s3reg.open_chunks(digest):
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert peak < 4 * PART, f"peak {peak} bytes held while reading {size} bytes"


async def test_registries_sharing_a_bucket(s3_server: S3Server, bucket: str) -> None:
    """Like several servers on one bucket: all writes succeed, one object, right bytes."""
    regs = [S3ArtifactRegistry(s3_config(s3_server, bucket)) for _ in range(3)]
    for r in regs:
        await r.open()
    try:
        results = await asyncio.gather(
            *(r.write_stream(chunks(BIG, 1 << 20, pause=True), BIG_DIGEST) for r in regs)
        )
        assert all(r.size_bytes == len(BIG) for r in results)
        assert False in [r.duplicate for r in results]
        for r in regs:
            assert await r.list_digests() == [BIG_DIGEST]
        assert await read_all(regs[2], BIG_DIGEST) == BIG
        assert await in_progress(regs[0]) == []
    finally:
        for r in regs:
            await r.aclose()


@pytest.mark.parametrize("data", [DATA, BIG], ids=["small", "multipart"])
async def test_plain_writes_for_stores_without_conditional_writes(
    s3reg: S3ArtifactRegistry, data: bytes
) -> None:
    s3reg.conditional_writes = False  # as after a NotImplemented answer to If-None-Match
    digest = digest_bytes(data)
    assert (await s3reg.write_stream(chunks(data), digest)).duplicate is False
    assert (await s3reg.write_stream(chunks(data), digest)).duplicate is True
    assert await read_all(s3reg, digest) == data


def test_server_answers_service_unavailable_when_the_store_is_gone(tmp_path: Path) -> None:
    with contextlib.ExitStack() as store:
        own = store.enter_context(s3_server_process(tmp_path / "own-s3"))
        bucket = own.make_bucket("gone-soon")
        with running_server(
            tmp_path / "data",
            artifacts_url=f"s3://{bucket}",
            s3_endpoint_url=own.endpoint_url,
            s3_access_key=own.access_key,
            s3_secret_key=own.secret_key,
        ) as server:
            auth = bearer(server.admin_token)
            with httpx.Client(base_url=server.base_url, timeout=60) as http:
                up = http.post(
                    "/api/v1/artifacts", content=DATA, headers={**auth, DIGEST_HEADER: DIGEST}
                )
                assert up.status_code == 201, up.text
                assert http.get(f"/api/v1/artifacts/{DIGEST}", headers=auth).content == DATA
                store.close()  # the S3 server stops; the Aether server stays up
                gone = http.get(f"/api/v1/artifacts/{DIGEST}", headers=auth)
                assert_envelope(gone, 503, "service_unavailable")
                assert "S3" in gone.json()["message"]
                again = http.post(
                    "/api/v1/artifacts", content=BIG, headers={**auth, DIGEST_HEADER: BIG_DIGEST}
                )
                assert_envelope(again, 503, "service_unavailable")


async def test_abort_stale_uploads(s3reg: S3ArtifactRegistry) -> None:
    key = s3reg.key(BIG_DIGEST)
    orphan = await s3reg.client.create_multipart_upload(Bucket=s3reg.config.bucket, Key=key)
    now = datetime.now(UTC)
    assert await s3reg.abort_stale_uploads(now, timedelta(hours=1)) == 0  # still young
    assert await s3reg.abort_stale_uploads(now + timedelta(hours=2), timedelta(hours=1)) == 1
    assert orphan["UploadId"] not in [upload_id for _, upload_id in await in_progress(s3reg)]


async def test_unreachable_or_wrong_store_fails_clearly(s3_server: S3Server, bucket: str) -> None:
    missing = S3ArtifactRegistry(s3_config(s3_server, "no-such-bucket-here"))
    with pytest.raises(ServiceUnavailableError) as exc:
        await missing.open()
    assert "no-such-bucket-here" in exc.value.message
    wrong_key = S3ArtifactRegistry(s3_config(s3_server, bucket, secret_key="not-the-secret"))
    with pytest.raises(ServiceUnavailableError):
        await wrong_key.open()
    cfg = s3_config(s3_server, bucket, endpoint_url="http://127.0.0.1:9", max_attempts=1)
    with pytest.raises(ServiceUnavailableError) as exc:
        await S3ArtifactRegistry(cfg).open()
    assert "unreachable" in exc.value.message or "failed" in exc.value.message


def test_s3_urls_and_settings_are_validated() -> None:
    assert parse_s3_url("s3://my-bucket") == ("my-bucket", "")
    assert parse_s3_url("s3://my-bucket/a/b/") == ("my-bucket", "a/b/")
    for bad in ("http://x/y", "s3://", "s3://UPPER", "s3://ok-bucket/a//b", "s3://ok/../x"):
        with pytest.raises(ValueError):
            parse_s3_url(bad)
    with pytest.raises(ValueError):
        S3Config(bucket="b-1", part_size=1 << 20)  # below S3's 5 MiB minimum
    ok = ServerSettings(artifacts_url="s3://bucket/aether", s3_endpoint_url="http://h:9000")
    assert ok.artifacts_url == "s3://bucket/aether"
    assert ServerSettings().artifacts_url == ""  # the local directory stays the default
    for kwargs, needle in (
        ({"artifacts_url": "bucket/aether"}, "AETHER_ARTIFACTS_URL"),
        ({"s3_endpoint_url": "h:9000"}, "AETHER_S3_ENDPOINT_URL"),
        ({"s3_access_key": "k"}, "AETHER_S3_SECRET_KEY"),
        ({"s3_part_size": 1 << 20}, "s3_part_size"),
    ):
        with pytest.raises(ValidationError) as exc:
            ServerSettings(**kwargs)
        assert needle in str(exc.value)


def test_server_end_to_end_on_s3(tmp_path: Path, s3_server: S3Server, bucket: str) -> None:
    """A real server on S3: upload (multipart), HEAD, GET, a deployment recorded on it."""
    data = BIG
    digest = sha256_of(data)
    with running_server(
        tmp_path / "data",
        artifacts_url=f"s3://{bucket}/aether",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_part_size=PART,
    ) as server:
        assert isinstance(server.ctx.registry, S3ArtifactRegistry)
        auth = bearer(server.admin_token)
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            bad = http.post(
                "/api/v1/artifacts",
                content=data,
                headers={**auth, DIGEST_HEADER: sha256_of(b"other")},
            )
            assert bad.status_code == 400 and bad.json()["code"] == "digest_mismatch"
            up = http.post(
                "/api/v1/artifacts", content=data, headers={**auth, DIGEST_HEADER: digest}
            )
            assert up.status_code == 201, up.text
            assert up.json()["size_bytes"] == len(data)
            head = http.head(f"/api/v1/artifacts/{digest}", headers=auth)
            assert head.status_code == 200
            assert int(head.headers["content-length"]) == len(data)
            got = http.get(f"/api/v1/artifacts/{digest}", headers=auth)
            assert got.status_code == 200 and got.content == data

            async def deploy_it() -> httpx.Response:
                async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
                    return await deploy(client, server.admin_token, "s3-app", digest, instances=0)

            deployed = asyncio.run(deploy_it())
            assert deployed.status_code == 201, deployed.text
            assert deployed.json()["version"] == 1
        # the bytes are in the bucket, under the configured prefix, and nowhere on local disk
        stored = s3_server.root / bucket / "aether" / "sha256" / digest.removeprefix("sha256:")
        assert stored.read_bytes() == data
        assert not (tmp_path / "data" / "artifacts").exists()
