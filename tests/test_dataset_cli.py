"""`protege dataset build|list|show` and `protege feedback add|list` against a real store, on each backend."""

from __future__ import annotations

import orjson
from protege.store import Store, insert_records
from typer.testing import CliRunner

from protege.cli import app
from tests.fixtures.records import make_record


def run(db, *args):
    return CliRunner().invoke(app, ["--db", str(db), *args])


def test_feedback_and_dataset_commands(store_db):
    db = store_db
    store = Store(db)
    insert_records(store, [make_record(i, answer=["billing", "technical"][i % 2]) for i in range(20)])
    store.close()

    res = run(db, "feedback", "add", "chatcmpl-3", "--score", "1", "--label", "x", "--correction", "fixed answer", "--comment", "was wrong", "--json")
    assert res.exit_code == 0, res.output
    fb = orjson.loads(res.stdout)
    assert fb["id"].startswith("fb_") and fb["score"] == 1.0 and fb["correction"] == "fixed answer" and fb["comment"] == "was wrong"
    assert run(db, "feedback", "add", "chatcmpl-4", "--reject").exit_code == 0
    res = run(db, "feedback", "add", "chatcmpl-nope", "--score", "1")
    assert res.exit_code == 1 and "no completion with id 'chatcmpl-nope'" in res.output
    res = run(db, "feedback", "add", "chatcmpl-3")
    assert res.exit_code == 1 and "give at least one" in res.output
    res = run(db, "feedback", "list", "--json")
    assert [f["completion_id"] for f in orjson.loads(res.stdout)["data"]] == ["chatcmpl-3", "chatcmpl-4"]

    res = run(db, "dataset", "build", "--name", "support", "--model", "gpt-4o", "--validation", "0.2", "--json")
    assert res.exit_code == 0, res.output
    dv = orjson.loads(res.stdout)
    assert dv["id"].startswith("ds_") and dv["version"] == 1
    assert dv["counts"]["final"] == 19  # chatcmpl-4 rejected
    train = [orjson.loads(x) for x in open(dv["files"]["train"]["path"], "rb")]
    val = [orjson.loads(x) for x in open(dv["files"]["validation"]["path"], "rb")]
    assert len(train) + len(val) == 19
    assert any(e["messages"][-1]["content"] == "fixed answer" for e in train + val)

    res = run(db, "dataset", "build", "--name", "support")
    assert res.exit_code == 0 and "support v2" in res.stdout
    res = run(db, "dataset", "list", "--json")
    assert [d["version"] for d in orjson.loads(res.stdout)["data"]] == [2, 1]
    res = run(db, "dataset", "show", dv["id"])
    assert res.exit_code == 0 and "# Dataset support v1" in res.stdout
    res = run(db, "dataset", "show", "ds_missing")
    assert res.exit_code == 1 and "no dataset with id" in res.output
    res = run(db, "dataset", "build", "--name", "none", "--model", "nope")
    assert res.exit_code == 1 and "nothing to build" in res.output
    res = run(db, "dataset", "build", "--name", "bad", "--since", "yesterday")
    assert res.exit_code == 1 and "--since" in res.output
    res = run(db, "dataset", "build", "--name", "bad", "--metadata", "novalue")
    assert res.exit_code == 1 and "KEY=VALUE" in res.output
