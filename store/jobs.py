"""Store tables and queries for jobs (filled in by the jobs work)."""

from __future__ import annotations

import duckdb


def migrate(conn: duckdb.DuckDBPyConnection) -> None:
    """Create this area's tables (called by the numbered migration in migrations.py)."""
