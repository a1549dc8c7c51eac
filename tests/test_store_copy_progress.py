"""`protege store copy` draws a progress bar on a terminal (DuckDB -> DuckDB: no PostgreSQL
needed); its counts go to stdout."""

from __future__ import annotations

from protege.store import Store, insert_records
from tests.fixtures.stores import store_record
from tests.fixtures.terminal import run_protege


def test_a_bar_on_a_terminal(tmp_path):
    src = Store(str(tmp_path / "src.duckdb"))
    insert_records(src, [store_record(i) for i in range(50)])
    src.close()
    code, out, err = run_protege(["store", "copy", str(tmp_path / "src.duckdb"), str(tmp_path / "tty.duckdb"),
                                  "--batch-size", "10"], tty=True)
    assert code == 0, err
    assert "copying" in err and "%" in err  # rich's bar, on the terminal
    assert out.splitlines()[0].split() == ["completions", "50", "copied", "0", "already", "there"]
    # On a pipe: no bar (tests/test_store_copy_cli.py: stderr stays empty).
