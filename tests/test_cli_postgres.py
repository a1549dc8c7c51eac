"""The CLI on a PostgreSQL URL: a server that cannot be reached is one line, with no password shown,
and the artifacts directory of a URL store is a real directory."""

from __future__ import annotations

from typer.testing import CliRunner

from protege.cli import app
from protege.settings import Settings
from tests.fixtures.http import free_port


def test_an_unreachable_postgresql_store_is_one_line_without_the_password():
    url = f"postgresql://bob:s3cret@127.0.0.1:{free_port()}/protege"
    r = CliRunner().invoke(app, ["--db", url, "completions", "stats"])
    assert r.exit_code == 1
    assert r.output.startswith(f"error: cannot open postgresql://bob:***@127.0.0.1:") and r.output.count("\n") == 1, r.output
    assert "s3cret" not in r.output


def test_a_url_store_keeps_its_artifacts_in_protege_data():
    assert str(Settings(db="postgresql://u@127.0.0.1:5432/p").data_path) == "protege-data"
    assert str(Settings(db="postgresql://u@h/p", data_dir="/srv/replica-1").data_path) == "/srv/replica-1"
