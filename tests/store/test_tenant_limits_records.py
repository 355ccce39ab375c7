"""A tenant's own limits in the records, on a real PostgreSQL (which checks foreign
keys): set, read back, and gone with the tenant when it is purged."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from aether.store.records import Records, open_records, upgrade_schema
from aether.store.records.schema import TenantLimitsRow
from tests.support.postgres import PostgresServer


async def test_limits_are_kept_per_tenant_and_purged_with_it() -> None:
    with PostgresServer.launched() as postgres:
        url = postgres.create_database("limits")
        upgrade_schema(url)
        engine, sessions = open_records(url)
        try:
            records = Records(sessions)
            gone = await records.ensure_tenant("gone")
            kept = await records.ensure_tenant("kept")
            for tenant in (gone, kept):
                await records.set_tenant_limits(tenant.id, {"instances": 3, "cpu": 1.5})
            assert (await records.tenant_limits(gone.id))["instances"] == 3
            await records.set_tenant_limits(gone.id, {"rate_per_minute": 50})  # replaces
            assert (await records.tenant_limits(gone.id))["instances"] is None

            await records.purge_tenant(gone.id)  # the tenant's delete takes its limits

            async with sessions() as session:
                rows = await session.scalar(select(func.count()).select_from(TenantLimitsRow))
            assert rows == 1
            assert (await records.tenant_limits(kept.id))["cpu"] == 1.5
        finally:
            await engine.dispose()
            postgres.drop_database(make_url(url).database or "")
