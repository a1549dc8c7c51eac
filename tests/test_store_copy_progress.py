"""`protege store copy` draws a progress bar on a terminal, and only there (DuckDB -> DuckDB: no
PostgreSQL needed); its counts go to stdout either way."""

from __future__ import annotations

from protege.store import Store, insert_records
from tests.fixtures.terminal import run_protege
from tests.test_store_copy import rec


def test_a_bar_on_a_terminal_and_none_on_a_pipe(tmp_path):
    src = Store(str(tmp_path / "src.duckdb"))
    insert_records(src, [rec(i) for i in range(50)])
    src.close()
    code, out, err = run_protege(["store", "copy", str(tmp_path / "src.duckdb"), str(tmp_path / "tty.duckdb"),
                                  "--batch-size", "10"], tty=True)
    assert code == 0, err
    assert "copying" in err and "%" in err  # rich's bar, on the terminal
    assert out.splitlines()[0].split() == ["completions", "50", "copied", "0", "already", "there"]
    code, out, err = run_protege(["store", "copy", str(tmp_path / "src.duckdb"), str(tmp_path / "pipe.duckdb")], tty=False)
    assert code == 0 and err == ""
    assert out.splitlines()[0].split()[:2] == ["completions", "50"]
