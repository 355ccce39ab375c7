"""The cluster CA: what to trust (public), node certificate renewal, rotation.

- ``GET /cluster/trust`` (no token: CA certificates are public): the CAs trusted now
  and the servers' node port URLs — what a node or the CLI needs to trust the servers.
- ``POST /nodes/{node}/certificate``: a node renews its certificate (over mutual TLS,
  with its credential), two-thirds through its life or when it sees a new CA.
- ``GET /ca``, ``POST /ca/rotate``: a cluster admin sees and rotates the CA.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from aether.errors import BadRequestError
from aether.model.trust import CaOut, CertificateIn, CertificateOut, ClusterTrustOut, RotateIn
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import ClusterAdmin, NodeCaller, own_node
from aether.server.services.presence import node_urls
from aether.trust import ca

__all__ = ["router"]

router = APIRouter(tags=["trust"])
Ctx = Annotated[ServerContext, Depends(get_context)]


@router.get("/cluster/trust")
async def cluster_trust(ctx: Ctx) -> ClusterTrustOut:
    return ClusterTrustOut(
        cluster=ctx.trust.cluster,
        authorities=ctx.trust.authorities(),
        fingerprints=ctx.trust.fingerprints(),
        node_urls=await node_urls(ctx),
    )


@router.post("/nodes/{node}/certificate")
async def renew_certificate(
    node: str, body: CertificateIn, request: Request, caller: NodeCaller, ctx: Ctx
) -> CertificateOut:
    own_node(request, caller, node)
    try:
        return ctx.trust.issue_node(node, body.csr)
    except ca.CertificateError as exc:
        raise BadRequestError(f"csr: {exc}") from None


@router.get("/ca")
async def show_ca(caller: ClusterAdmin, ctx: Ctx) -> CaOut:
    return ctx.trust.view()


@router.post("/ca/rotate")
async def rotate_ca(body: RotateIn, caller: ClusterAdmin, ctx: Ctx) -> CaOut:
    return await ctx.trust.rotate(body.overlap_seconds)
