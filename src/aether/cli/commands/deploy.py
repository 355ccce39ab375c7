"""``aether deploy``: pack on this machine, upload what the server lacks, roll out."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aether.cli.output import CliError, emit
from aether.cli.session import api_client
from aether.errors import AetherError, BadRequestError
from aether.model.api import DeploymentOut

__all__ = ["run", "wait_for_rollout"]


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


async def wait_for_rollout(client: Any, deployment: DeploymentOut, timeout: float) -> DeploymentOut:
    """Poll until every instance of the deployment is ACTIVE, or it failed."""
    deadline = time.monotonic() + timeout
    while True:
        current: DeploymentOut = await client.deployment(deployment.id)
        if current.status == "failed":
            last = current.events[-1].message if current.events else "no details"
            raise CliError(
                f"deployment v{current.version} failed: {last}",
                kind="network",
                code="deploy_failed",
            )
        if current.status in ("active", "superseded"):
            return current
        if time.monotonic() > deadline:
            raise CliError(
                f"deployment v{current.version} not healthy after {timeout:.0f}s "
                f"({current.instances_active}/{current.instances} ACTIVE); "
                f"see `aether logs {current.app}`",
                kind="network",
                code="timeout",
            )
        await asyncio.sleep(0.1)


async def router_url(client: Any, app: str) -> str | None:
    status = await client.status()
    for node in status.nodes:
        if node.state == "ready":
            return f"{node.router_url}/apps/{app}/"
    return None


async def run(args: argparse.Namespace) -> int:
    from aether.artifacts import pack
    from aether.model.app import load_app_spec

    root = Path(args.path).resolve()
    if not root.is_dir():
        raise CliError(f"{root} is not a directory", kind="usage")
    try:
        spec = load_app_spec(root, name=args.app)
    except BadRequestError as exc:
        raise CliError(str(exc), kind="config", code="bad_config") from None

    with tempfile.TemporaryDirectory(prefix="aether-pack-") as tmp:
        archive = Path(tmp) / "artifact.tar.gz"
        try:
            packed = await asyncio.to_thread(pack, root, archive)
        except AetherError as exc:
            raise CliError(f"cannot pack {root}: {exc}", kind="config", code=exc.code) from None
        from aether.cli.commands.keys import deploy_signature

        signature = deploy_signature(packed.digest)  # None without a signing key
        verified: bool | None = None
        from aether.artifacts.sync import upload_incremental

        sent: dict[str, Any] = {"uploaded_bytes": 0, "reused_files": packed.file_count}
        async with api_client(args) as client:
            uploaded = False
            if not await client.has_artifact(packed.digest):
                bar = _progress("uploading", packed.size_bytes)
                try:
                    answer = sent = await upload_incremental(  # only the files it lacks
                        client,
                        packed.plan,
                        root,
                        packed.digest,
                        archive=archive,
                        progress=(lambda n: bar.advance(bar.task_ids[0], n)) if bar else None,
                        on_total=(lambda n: bar.update(bar.task_ids[0], total=n)) if bar else None,
                        signature=signature,
                        app=spec.name,
                    )
                finally:
                    if bar:
                        bar.stop()
                uploaded, verified = True, bool(answer.get("verified"))
            elif signature is not None:  # stored already (maybe unsigned): attach the signature
                answer = await client.sign_artifact(packed.digest, signature, spec.name)
                verified = bool(answer.get("verified"))
            key = uuid.uuid4().hex
            try:
                deployment = await client.create_deployment(
                    spec.name, packed.digest, spec, instances=args.instances, idempotency_key=key
                )
            except AetherError as exc:
                if exc.status not in (503,):
                    raise
                deployment = await client.create_deployment(  # same key: never deploys twice
                    spec.name, packed.digest, spec, instances=args.instances, idempotency_key=key
                )
            if not args.no_wait:
                deployment = await wait_for_rollout(client, deployment, args.timeout)
            url = await router_url(client, spec.name)
    data = {
        "app": spec.name,
        "version": deployment.version,
        "digest": packed.digest,
        "size_bytes": packed.size_bytes,
        "deployment_id": deployment.id,
        "url": url,
        "status": deployment.status,
        "instances": deployment.instances,
        "uploaded": uploaded,
        "uploaded_bytes": sent["uploaded_bytes"],
        "reused_files": sent["reused_files"],
        "signature": signature,
        "verified": verified,
    }
    emit(
        args,
        data,
        f"deployed {spec.name} v{deployment.version} ({packed.digest[:19]}, "
        f"{packed.size_bytes} bytes{', uploaded' if uploaded else ', already on server'})\n"
        f"status: {deployment.status}, {deployment.instances} instance(s)\n"
        f"url: {url or '(no ready node yet)'}",
    )
    return 0
