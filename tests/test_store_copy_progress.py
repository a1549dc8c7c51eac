"""`protege store copy` draws a progress bar on a terminal (between two stores of the test's
backend); its counts go to stdout."""

from __future__ import annotations

from protege.store import Store, insert_records
from tests.fixtures.stores import store_record
from tests.fixtures.terminal import run_protege


def test_a_bar_on_a_terminal(make_db, tmp_path):
    src_db, dst_db = make_db("src"), make_db("tty")
    src = Store(src_db, data_dir=tmp_path / "src-data")
    insert_records(src, [store_record(i) for i in range(50)])
    src.close()
    code, out, err = run_protege(["store", "copy", src_db, dst_db, "--batch-size", "10"], tty=True)
    assert code == 0, err
    assert "copying" in err and "%" in err  # rich's bar, on the terminal
    assert out.splitlines()[0].split() == ["completions", "50", "copied", "0", "already", "there"]
    # On a pipe: no bar (tests/test_store_copy_cli.py: stderr stays empty).
