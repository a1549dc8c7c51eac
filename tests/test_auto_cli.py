"""`protege auto ...` through the real Typer app (the store is a fresh store on each backend)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from protege.cli import app

runner = CliRunner()

POLICIES = """
[[policy]]
name = "intent"
match = { model = "gpt-4o-mini", metadata = { task = "intent" } }
trigger = { min_new_completions = 50 }
gate = { metrics = ["exact_match"], tolerance = 0.05, min_items = 30 }
rollout = { canary_percent = 20 }
"""


def _run(db, *args: str):
    return runner.invoke(app, ["--db", str(db), *args])


def test_apply_list_status_decisions_promote_rollback(tmp_path, make_db) -> None:
    db = make_db("cli")
    f = tmp_path / "policies.toml"
    f.write_text(POLICIES)
    r = _run(db, "auto", "validate", str(f))
    assert r.exit_code == 0 and "1 policy OK: intent" in r.output
    r = _run(db, "auto", "apply", str(f), "--json")
    assert r.exit_code == 0, r.output
    pid = json.loads(r.output)["data"][0]["id"]
    assert pid.startswith("policy_")
    r = _run(db, "auto", "list")
    assert r.exit_code == 0 and pid in r.output and "enabled" in r.output
    r = _run(db, "auto", "status", "--json")
    assert r.exit_code == 0, r.output
    st = json.loads(r.output)["data"][0]
    assert st["name"] == "intent" and st["eligible_since_last_run"] == 0 and st["route"] is None
    r = _run(db, "auto", "status")
    assert "eligible since last run: 0" in r.output and "the teacher answers everything" in r.output
    r = _run(db, "auto", "decisions", "intent")
    assert r.exit_code == 0 and "no decisions yet" in r.output
    r = _run(db, "auto", "promote", "intent")
    assert r.exit_code == 1 and r.output.strip() == "error: policy 'intent' has no trained student to promote"
    r = _run(db, "auto", "rollback", "intent")
    assert r.exit_code == 1 and "has no live route" in r.output
    r = _run(db, "auto", "promote", "intent", "--stage", "sideways")
    assert r.exit_code == 1 and "stage must be shadow, canary or full" in r.output
    # A student its gate rejected goes live only with --force.
    from protege.store import Store
    from protege.store import auto as store_auto

    store = Store(db)
    cyc = store_auto.create_cycle(store, pid, 0)
    store_auto.update_cycle(store, cyc.id, state="rejected", student_model="protege/intent@v1")
    store.close()
    r = _run(db, "auto", "promote", "intent")
    assert r.exit_code == 1 and r.output.strip().startswith("error: protege/intent@v1 was rejected by its gate")
    r = _run(db, "auto", "promote", "intent", "--force")
    assert r.exit_code == 0 and "protege/intent@v1 is now at stage shadow" in r.output
    r = _run(db, "auto", "rollback", "intent")
    assert r.exit_code == 0
    r = _run(db, "auto", "disable", "intent")
    assert r.exit_code == 0 and "intent disabled" in r.output
    r = _run(db, "auto", "show", "intent")
    assert json.loads(r.output)["enabled"] is False
    r = _run(db, "auto", "decisions", "nope")
    assert r.exit_code == 1 and "no policy 'nope'" in r.output


def test_bad_policy_file_is_one_line(tmp_path, make_db) -> None:
    db = make_db("x")
    f = tmp_path / "bad.toml"
    f.write_text(POLICIES.replace("tolerance = 0.05", "tolerance = -1"))
    r = _run(db, "auto", "apply", str(f))
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "gate.tolerance" in lines[0]
    r = _run(db, "worker", "--policies", str(f), "--once")
    assert r.exit_code == 1 and "gate.tolerance" in r.output


def test_worker_once_loads_policies(tmp_path, make_db) -> None:
    db = make_db("w")
    f = tmp_path / "policies.toml"
    f.write_text(POLICIES)
    r = _run(db, "worker", "--policies", str(f), "--once")
    assert r.exit_code == 0, r.output
    assert f"loaded policies from {f}" in r.output
    r = _run(db, "auto", "list")
    assert "intent" in r.output
