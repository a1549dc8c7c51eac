"""`protege store copy SRC DST`: a whole store into another (DuckDB file -> PostgreSQL and back,
DuckDB -> DuckDB), resumable, with counts per table (store/copy.py does the copying).

SRC and DST are given on the command line, not by ``--db``: the command never runs inside a server
(a server's DuckDB file is held by it; it says so in one line instead). SRC is opened read-only, so
it is neither migrated nor changed; DST is opened as any store is (created and migrated), and a copy
between two schema versions is refused. Errors are one line on stderr, a URL shown without its
password; an interrupted copy is finished by running the same command again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import typer

from protege import clikit

from .pg import without_password


def copy_cmd(
    src: str = typer.Argument(..., metavar="SRC", help="The store to copy: a DuckDB file or a postgresql:// URL."),
    dst: str = typer.Argument(..., metavar="DST", help="Where to: a DuckDB file (created if missing) or a postgresql:// URL."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable counts."),
    batch_size: int = typer.Option(50_000, "--batch-size", min=1, help="Completions per batch (one transaction each)."),
    append: bool = typer.Option(
        False, "--append", help="DST may hold captures of its own: SRC's are numbered after them (feedback and dataset links follow)."
    ),
) -> None:
    """Copy every table of SRC into DST; rows DST has already are skipped, so a rerun resumes a copy.

    A DST with captures of its own is refused unless --append is given."""
    from .copy import TABLES, DestinationHasOwnRows, copy_store

    if _same_store(src, dst):
        clikit.fail(f"SRC and DST are the same store ({_shown(src)}): give another DST")
    for role, where in (("SRC", src), ("DST", dst)):
        _refuse_served(role, where)
    if not _is_url(src) and not os.path.isfile(src):
        clikit.fail(f"SRC: no store at {src}")
    source = _open(src, "SRC", read_only=True)
    try:
        dest = _open(dst, "DST", read_only=False)
        try:
            sv, dv = _version(source, src, "SRC"), _version(dest, dst, "DST")
            if sv != dv:
                clikit.fail(f"schema versions differ: SRC {_shown(src)} has version {sv}, DST {_shown(dst)} has {dv}; "
                            "open the older one once with this release (e.g. `protege completions stats --db ...`) to migrate it")
            total = sum(_count(source, t) for t in TABLES)
            started = time.perf_counter()
            with clikit.progress(total, "copying") as advance:
                try:
                    result = copy_store(source, dest, batch_size=batch_size, progress=lambda _t, n: advance(n), append=append)
                except DestinationHasOwnRows as exc:
                    clikit.fail(f"DST {_shown(dst)} already holds captures of its own ({exc.held:,} completions, not a copy "
                                "of SRC): add --append to number SRC's after them, or give an empty DST")
                except KeyboardInterrupt:
                    clikit.fail("interrupted: run the same command again to resume", 130)
                except Exception as exc:
                    if not _is_db_error(exc):
                        raise
                    clikit.fail(f"copy stopped (run it again to resume): {_first_line(exc)}")
            seconds = time.perf_counter() - started
        finally:
            dest.close()
    finally:
        source.close()
    tables = {t: {"copied": result.copied.get(t, 0), "skipped": result.skipped.get(t, 0)} for t in TABLES if t in result.copied}
    copied, skipped = sum(v["copied"] for v in tables.values()), sum(v["skipped"] for v in tables.values())
    if as_json:
        clikit.print_json({"source": _shown(src), "destination": _shown(dst), "schema_version": sv, "tables": tables,
                           "copied": copied, "skipped": skipped, "seconds": round(seconds, 3)})
        return
    width = max(len(t) for t in tables)
    for name, v in tables.items():
        if v["copied"] or v["skipped"]:
            typer.echo(f"{name:<{width}}  {v['copied']:>10,} copied  {v['skipped']:>10,} already there")
    typer.echo(f"copied {copied:,} rows from {_shown(src)} to {_shown(dst)} in {seconds:.1f} s"
               + (f" ({skipped:,} already there)" if skipped else ""))


def _is_url(where: str) -> bool:
    from .pg import is_url

    return is_url(where)


def _shown(where: str) -> str:
    """A store as it may be printed: a URL without its password."""
    return without_password(where) if _is_url(where) else where


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _is_db_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in ("psycopg", "duckdb", "_duckdb")


def _same_store(a: str, b: str) -> bool:
    """Whether two arguments name one database: one file (whatever the path's spelling), or one
    PostgreSQL database (same host, port and name, whoever connects)."""
    if _is_url(a) != _is_url(b):
        return False
    if not _is_url(a):
        return Path(a).resolve() == Path(b).resolve()
    from psycopg.conninfo import conninfo_to_dict

    def key(url: str) -> tuple[str, str, str]:
        info = conninfo_to_dict(url)
        return (str(info.get("host") or "localhost"), str(info.get("port") or "5432"), str(info.get("dbname") or ""))

    try:
        return key(a) == key(b)
    except Exception:  # noqa: BLE001 - a malformed URL: opening it says what is wrong
        return False


def _refuse_served(role: str, where: str) -> None:
    """A DuckDB file a running `protege serve` holds cannot be opened by another process."""
    if _is_url(where):
        return
    from .served import read_record

    record = read_record(where)
    if record is not None:
        hint = " (or `protege store backup` it and copy the backup)" if role == "SRC" else ""
        clikit.fail(f"{role} {where} is held by a running server (PID {record['pid']}, {record['url']}): stop it first{hint}")


def _open(where: str, role: str, read_only: bool) -> Any:
    import duckdb

    from . import SchemaTooNewError, Store, StoreLockedError

    try:
        # A read-only PostgreSQL source needs no data directory; a DuckDB one gets its own beside it.
        return Store(where, read_only=read_only)
    except (StoreLockedError, SchemaTooNewError) as exc:
        clikit.fail(f"{role}: {exc}")
    except duckdb.Error as exc:
        clikit.fail(f"{role}: cannot open {where}: {_first_line(exc)}")
    except Exception as exc:
        if not _is_db_error(exc):
            raise
        clikit.fail(f"{role}: cannot open {_shown(where)}: {_first_line(exc)}")


def _version(store: Any, where: str, role: str) -> int:
    try:
        return store.schema_version
    except Exception as exc:
        if not _is_db_error(exc):
            raise
        clikit.fail(f"{role}: {_shown(where)} is not a Protege store ({_first_line(exc)})")


def _count(store: Any, table: str) -> int:
    try:
        return int(store.cursor().execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except Exception as exc:
        if not _is_db_error(exc):
            raise
        return 0  # not in this schema version


__all__ = ["copy_cmd"]
