"""A consistent single-file copy of the store, taken through the store's own connection.

Copying ``protege.duckdb`` while a server holds it gives a file without what is still in its
``.wal`` (0 captures, measured), and no other process may open it. So the copy is made by the
process that holds it: DuckDB attaches the destination and ``COPY FROM DATABASE`` copies every
table, view, sequence and macro in one statement, that is one snapshot, while the writer goes on
committing. The destination is a complete DuckDB file (checkpointed when it is detached) that
``Store(dest)`` opens with the same schema version. Artifacts (datasets, reports, students) are
files in the data directory already: copy that directory as it is.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class BackupError(Exception):
    """Why no copy was made; ``str()`` is one line for the user."""


@dataclass(frozen=True)
class Backup:
    path: str
    schema_version: int
    completions: int
    bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "schema_version": self.schema_version, "completions": self.completions, "bytes": self.bytes}


def backup_store(store: Any, dest: str | os.PathLike[str]) -> Backup:
    """Copy ``store``'s database into the new file ``dest`` (refused if it exists).

    A DuckDB store only: a PostgreSQL database has no file of its own to copy, and a copy taken
    table by table would not be one snapshot while replicas write; its server's tools back it up."""
    if store.dialect.name == "postgresql":
        from .pg import without_password

        raise BackupError(
            "a PostgreSQL store is backed up by its server (pg_dump); "
            f"`protege store copy {without_password(store.path)} {os.fspath(dest)}` copies it into a DuckDB file"
        )
    target = Path(os.fspath(dest)).absolute()
    if str(store.path).startswith(":memory:") is False and target == Path(store.path).absolute():
        raise BackupError(f"{dest} is the store itself; give another file")
    for existing, shown in ((target, f"{dest}"), (target.with_name(target.name + ".wal"), f"{dest}.wal")):
        if existing.exists():
            raise BackupError(f"{shown} already exists; give a new file (a backup never overwrites)")
    if not target.parent.is_dir():
        raise BackupError(f"the directory of {dest} does not exist")
    alias = f"protege_backup_{secrets.token_hex(4)}"
    literal = str(target).replace("'", "''")  # ATTACH takes no bound parameter
    cur = store.cursor()
    try:
        source = cur.execute("SELECT current_database()").fetchone()[0]
        cur.execute(f"ATTACH '{literal}' AS {alias}")
        try:
            cur.execute(f'COPY FROM DATABASE "{source}" TO {alias}')
            version = int(cur.execute(f"SELECT max(version) FROM {alias}.protege_schema").fetchone()[0])
            completions = int(cur.execute(f"SELECT count(*) FROM {alias}.completions").fetchone()[0])
        finally:
            cur.execute(f"DETACH {alias}")
    except BaseException:
        for leftover in (target, target.with_name(target.name + ".wal")):
            leftover.unlink(missing_ok=True)
        raise
    finally:
        cur.close()
    return Backup(str(dest), version, completions, target.stat().st_size)
