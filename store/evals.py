"""Store tables and queries for evals (filled in by the evals work)."""

from __future__ import annotations

import duckdb


def migrate(conn: duckdb.DuckDBPyConnection) -> None:
    """Create this area's tables (called by the numbered migration in migrations.py)."""
