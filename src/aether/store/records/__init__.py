"""Records: history and queries in SQL (SQLite by default, PostgreSQL in production)."""

from aether.store.records.db import open_records, upgrade_schema
from aether.store.records.repo import DEFAULT_TENANT, Principal, Records

__all__ = ["DEFAULT_TENANT", "Principal", "Records", "open_records", "upgrade_schema"]
