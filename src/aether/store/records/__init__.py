"""Records: history and queries in SQL (SQLite by default, PostgreSQL in production)."""

from aether.store.records.db import migrate, open_records
from aether.store.records.repo import DEFAULT_TENANT, Principal, Records

__all__ = ["DEFAULT_TENANT", "Principal", "Records", "migrate", "open_records"]
