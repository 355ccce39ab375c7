"""``aether deploy``: pack on this machine, upload what the server lacks, roll out."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aether.cli.output import CliError, emit
from aether.cli.session import api_client
from aether.errors import AetherError
from aether.model.api import DeploymentOut, EventOut

__all__ = ["failure_report", "run", "wait_for_rollout"]


def _progress(description: str, total: int) -> Any:
    """A rich progress bar on a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    progress.start()
    progress.add_task(description, total=total)
    return progress


_CAUSES = ("rollout_failed", "failed")  # the leader's verdict: why the deployment failed
_OUTCOMES = ("reverted", "rollout_paused")  # what became of it


def _last(events: list[EventOut], types: tuple[str, ...]) -> str | None:
    return next((e.message for e in reversed(events) if e.type in types), None)


def failure_report(deployment: DeploymentOut) -> tuple[str, dict[str, Any]]:
    """The message of a failed deployment and its details: the cause, then the outcome.

    The cause is the leader's verdict (``failed``, ``rollout_failed``), else the
    latest instance failure: the exit code or signal, or the health check, and
    the end of the instance's output (``core.failures``).
    """
    events = deployment.events or []
    cause = (
        _last(events, _CAUSES)
        or _last(events, ("instance_failed",))
        or (events[-1].message if events else "no details")
    )
    outcome = _last(events, _OUTCOMES)
    head = f"deployment v{deployment.version} failed"
    message = f"{head}; {outcome}. Cause: {cause}" if outcome else f"{head}: {cause}"
    details = {
        "deployment_id": deployment.id,
        "version": deployment.version,
        "cause": cause,
        "outcome": outcome,
    }
    return message, details


async def wait_for_rollout(client: Any, deployment: DeploymentOut, timeout: float) -> DeploymentOut:
    """Poll until every instance of the deployment is ACTIVE, or it failed."""
    deadline = time.monotonic() + timeout
    while True:
        current: DeploymentOut = await client.deployment(deployment.id)
        if current.status == "failed":
            message, details = failure_report(current)
            raise CliError(message, kind="network", code="deploy_failed", details=details)
        if current.status in ("active", "superseded"):
            return current
        if time.monotonic() > deadline:
            failure = _last(current.events or [], ("instance_failed",))
            raise CliError(
                f"deployment v{current.version} not healthy after {timeout:.0f}s "
                f"({current.instances_active}/{current.instances} ACTIVE); "
                f"see `aether logs {current.app}`"
                + (f"\nlast failure: {failure}" if failure else ""),
                kind="network",
                code="timeout",
            )
        await asyncio.sleep(0.1)


async def router_url(client: Any, app: str) -> str | None:
    """The app's URL on a ready node's router (its tenant's form of the path)."""
    status = await client.status()
    route = next((a.route for a in status.apps if a.name == app and a.route), f"/apps/{app}/")
    for node in status.nodes:
        if node.state == "ready":
            return f"{node.router_url}{route}"
    return None


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aether"


class _Status:
    """One transient status line on a terminal (building, packing); silent otherwise."""

    def __init__(self, text: str) -> None:
        self._status: Any = None
        if sys.stderr.isatty():
            from rich.console import Console

            self._status = Console(stderr=True).status(text)
            self._status.start()

    def update(self, text: str) -> None:
        if self._status is not None:
            self._status.update(text[:100])

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()


def _build(args: argparse.Namespace, root: Path) -> Any:
    from aether.artifacts.build import build

    status = _Status("building")
    try:
        return build(
            root,
            name=args.app,
            cache_dir=_cache_dir(),
            sbom=not args.no_sbom,
            progress=lambda line: status.update(f"building: {line}"),
        )
    except AetherError as exc:
        raise CliError(f"cannot build {root}: {exc}", kind="config", code=exc.code) from None
    finally:
        status.stop()


def _pack_cache(built: Any) -> Any:
    """The pack cache of the built tree (``aether.artifacts.pack_cache``)."""
    from aether.artifacts.pack_cache import PackCache

    return PackCache.load(_cache_dir() / "pack", built.root)


def _pack(built: Any, archive: Path, cache: Any) -> Any:
    from aether.artifacts import pack

    status = _Status("packing")
    try:
        # unchanged files (same size, mtime, ctime and inode) are neither read nor
        # compressed again; the archive is a temporary file, so no fsync
        return pack(built.root, archive, cache=cache, durable=False)
    except AetherError as exc:
        raise CliError(f"cannot pack {built.root}: {exc}", kind="config", code=exc.code) from None
    finally:
        status.stop()


def _manifest(packed: Any) -> list[dict[str, Any]]:
    return [
        {"path": e.path, "size": e.size, "sha256": e.sha256, "mode": e.mode}
        for e in packed.manifest
    ]


def _provenance(key: Any, root: Path, built: Any, digest: str, started: datetime) -> dict[str, Any]:
    """The build's in-toto statement, signed (DSSE) with the artifact's key."""
    import aether
    from aether.artifacts import provenance
    from aether.artifacts.source_facts import read_source_facts

    facts = provenance.BuildFacts(
        app=built.spec.name,
        runtime=built.runtime,
        command=("aether", *sys.argv[1:]),
        builder_version=aether.__version__,
        started_on=started,
        finished_on=datetime.now(UTC),
        sbom_digest=provenance.sbom_digest(built.sbom) if built.sbom is not None else None,
    )
    statement = provenance.make_statement(digest, read_source_facts(root), facts)
    return provenance.sign_statement(statement, key)


async def run(args: argparse.Namespace) -> int:
    root = Path(args.path).resolve()
    if not root.is_dir():
        raise CliError(f"{root} is not a directory", kind="usage")
    started = datetime.now(UTC)
    built = await asyncio.to_thread(_build, args, root)
    spec = built.spec
    with tempfile.TemporaryDirectory(prefix="aether-pack-") as tmp:
        archive = Path(tmp) / "artifact.tar.gz"
        cache = _pack_cache(built)
        packed = await asyncio.to_thread(_pack, built, archive, cache)
        from aether.artifacts.signing import sign_digest
        from aether.cli.commands.keys import deploy_key

        key = deploy_key()  # None without a signing key: neither signature nor provenance
        signature = None if key is None else sign_digest(key, packed.digest)
        envelope = (
            None
            if key is None
            else await asyncio.to_thread(_provenance, key, root, built, packed.digest, started)
        )
        made = {
            "app": spec.name,
            "runtime": built.runtime,
            "artifact": None,
            "digest": packed.digest,
            "size_bytes": packed.size_bytes,
            "manifest": _manifest(packed),
            "sbom": built.sbom,
            "signature": signature,
            "provenance": envelope is not None,
        }
        if args.pack_only:
            await asyncio.to_thread(cache.save)
            out = Path(args.out or f"{spec.name}-{packed.digest[7:19]}.tar.gz").resolve()
            shutil.copyfile(archive, out)
            made["artifact"] = str(out)
            made["provenance_file"] = None
            if envelope is not None:  # the signed statement beside the archive
                statement = out.with_name(out.name + ".intoto.json")
                statement.write_text(json.dumps(envelope, indent=2) + "\n")
                made["provenance_file"] = str(statement)
            emit(
                args,
                made,
                f"packed {spec.name} into {out}\n{packed.digest} ({packed.size_bytes} bytes)",
            )
            return 0
        if args.dry_run:
            await asyncio.to_thread(cache.save)
            return await _dry_run(args, made, packed)
        try:
            return await _deploy(args, made, packed, archive, built, cache, envelope)
        finally:
            await asyncio.to_thread(cache.save)


async def _dry_run(args: argparse.Namespace, made: dict[str, Any], packed: Any) -> int:
    """Say what a deploy would send and do, and change nothing."""
    async with api_client(args) as client:
        present = await client.has_artifact(packed.digest)
        missing: list[str] = []
        if not present:
            wanted = sorted({e.sha256 for e in packed.manifest})
            answer = await client.json(
                "POST", "/api/v1/blobs/missing", json={"digests": [f"sha256:{d}" for d in wanted]}
            )
            missing = answer["missing"]
    sizes = {f"sha256:{e.sha256}": e.size for e in packed.manifest}
    made.update(
        {
            "dry_run": True,
            "artifact_on_server": present,
            "files_to_upload": len(missing),
            "bytes_to_upload": sum(sizes.get(d, 0) for d in missing),
        }
    )
    emit(
        args,
        made,
        f"dry run: {made['app']} would deploy {packed.digest[:19]} ({packed.size_bytes} bytes); "
        + (
            "the server has it already"
            if present
            else f"{len(missing)} file(s), {made['bytes_to_upload']} bytes to upload"
        ),
    )
    return 0


async def _deploy(
    args: argparse.Namespace,
    made: dict[str, Any],
    packed: Any,
    archive: Path,
    built: Any,
    cache: Any,
    envelope: dict[str, Any] | None,
) -> int:
    from aether.artifacts.sync import upload_incremental

    spec = built.spec
    signature = made["signature"]
    verified: bool | None = None
    sent: dict[str, Any] = {"uploaded_bytes": 0, "reused_files": packed.file_count}
    async with api_client(args) as client:
        uploaded = False
        if not await client.has_artifact(packed.digest):
            bar = _progress("uploading", packed.size_bytes)
            known = cache.server_blobs(client.base_url)  # a hint: checked by the server
            try:
                answer = sent = await upload_incremental(  # only the files it lacks
                    client,
                    None if args.full_upload else packed.plan,
                    built.root,
                    packed.digest,
                    archive=archive,
                    progress=(lambda n: bar.advance(bar.task_ids[0], n)) if bar else None,
                    on_total=(lambda n: bar.update(bar.task_ids[0], total=n)) if bar else None,
                    signature=signature,
                    app=spec.name,
                    known=known,
                )
            finally:
                if bar:
                    bar.stop()
            cache.set_server_blobs(client.base_url, known)
            uploaded = True
            # null when nothing was sent, as when the upload was skipped
            verified = bool(answer.get("verified")) if signature is not None else None
        elif signature is not None:  # stored already (maybe unsigned): attach the signature
            answer = await client.sign_artifact(packed.digest, signature, spec.name)
            verified = bool(answer.get("verified"))
        provenance_verified: bool | None = None
        if envelope is not None:  # checked and stored beside the artifact before it deploys
            answer = await client.put_provenance(packed.digest, envelope, spec.name)
            provenance_verified = bool(answer.get("verified"))
        key = uuid.uuid4().hex
        extra = {"sbom": made["sbom"], "manifest": made["manifest"]}
        try:
            deployment = await client.create_deployment(
                spec.name,
                packed.digest,
                spec,
                instances=args.instances,
                idempotency_key=key,
                extra=extra,
            )
        except AetherError as exc:
            if exc.status not in (503,):
                raise
            deployment = await client.create_deployment(  # same key: never deploys twice
                spec.name,
                packed.digest,
                spec,
                instances=args.instances,
                idempotency_key=key,
                extra=extra,
            )
        if not args.no_wait:
            deployment = await wait_for_rollout(client, deployment, args.timeout)
        url = await router_url(client, spec.name)
    made.update(
        {
            "version": deployment.version,
            "deployment_id": deployment.id,
            "url": url,
            "status": deployment.status,
            "instances": deployment.instances,
            "uploaded": uploaded,
            "uploaded_bytes": sent["uploaded_bytes"],
            "reused_files": sent["reused_files"],
            "verified": verified,
            "provenance_verified": provenance_verified,
        }
    )
    emit(
        args,
        made,
        f"deployed {spec.name} v{deployment.version} ({packed.digest[:19]}, "
        f"{packed.size_bytes} bytes; "
        + (f"sent {sent['uploaded_bytes']} bytes" if uploaded else "already on the server")
        + f")\nstatus: {deployment.status}, {deployment.instances} instance(s)\n"
        f"url: {url or '(no ready node yet)'}",
    )
    return 0
