"""`protege store backup DEST`: a consistent copy of the store, also while `protege serve` holds it
(the command then runs inside the server, on its connection: store/backup.py); `protege store copy
SRC DST` (store/copy_cli.py) moves a store between DuckDB and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import typer

from protege import clikit

from .backup import BackupError, backup_store
from .copy_cli import copy_cmd

app = typer.Typer(no_args_is_help=True, add_completion=False, help="The store's database: backup, copy.")
app.command("copy")(copy_cmd)


@app.command("backup")
def backup_cmd(
    dest: Path = typer.Argument(..., metavar="DEST", help="New DuckDB file to write (never overwritten)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Copy the whole database (every table, one snapshot) into a new file that Protege opens as a store."""
    import duckdb

    store = clikit.open_cli_store()
    try:
        done = backup_store(store, dest)
    except BackupError as exc:
        clikit.fail(str(exc))
    except duckdb.Error as exc:
        clikit.fail(f"backup to {dest} failed: {str(exc).splitlines()[0]}")
    finally:
        store.close()
    if as_json:
        clikit.print_json(done.as_dict())
    else:
        typer.echo(f"backed up the store to {dest}: {done.completions} captures, schema version "
                   f"{done.schema_version}, {done.bytes} bytes")
