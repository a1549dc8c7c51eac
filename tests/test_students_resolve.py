"""Students resolve the same everywhere: paths relative to the data directory, the bare name means
the latest version that passed its gate (or was promoted by hand), unknown students are 404."""

from __future__ import annotations

import asyncio
import json
import os

import openai
import pytest
from typer.testing import CliRunner

from protege.distill.finetune.students import StudentRegistry
from protege.settings import Settings
from protege.store import Store
from protege.store import auto as store_auto
from protege.store import jobs as store_jobs
from tests.fixtures.lora_students import make_lora_student
from tests.servers import AppServer, http_json


def _gate(store, model: str, outcome: str) -> None:
    store_auto.record_decision(store, "policy_x", "gate", outcome, f"gate {outcome}", {"student_model": model})


def _answer_model(client, model: str) -> str:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2, temperature=0).model


def test_bare_name_serves_the_latest_version_its_gate_passed(store_db, tmp_path, tiny_chat_model):
    store = Store(store_db, data_dir=tmp_path / "g-data")
    for _ in range(3):
        make_lora_student(store, tiny_chat_model, "g")
    _gate(store, "protege/g@v2", "promote")
    _gate(store, "protege/g@v3", "reject")
    settings = Settings(db=store.path, data_dir=str(store.data_dir), upstream="http://127.0.0.1:9/v1", upstream_api_key="sk-x")
    srv = AppServer(settings, store=store)
    try:
        client = openai.OpenAI(base_url=srv.base_url, api_key="sk-client", max_retries=0)
        assert _answer_model(client, "protege/g") == "protege/g@v2"  # not v3, which its gate rejected
        assert _answer_model(client, "protege/g@v3") == "protege/g@v3"  # a pin is a pin
        ids = [m.id for m in client.models.list()]
        assert "protege/g" in ids and "protege/g@v3" in ids
        # promoting a rejected version needs force: API 409 without it
        status, body = http_json("POST", srv.url + "/protege/v1/students/promote", {"model": "protege/g@v3"})
        assert status == 409 and body["error"]["code"] == "gate_rejected"
        status, body = http_json("POST", srv.url + "/protege/v1/students/promote", {"model": "protege/g@v3", "force": True})
        assert status == 200 and body["forced"] is True
        assert _answer_model(client, "protege/g") == "protege/g@v3"
        listed = http_json("GET", srv.url + "/protege/v1/students")[1]["data"]
        v3 = next(s for s in listed if s.get("model") == "protege/g@v3")
        assert v3["gate"] == "reject" and v3["forced"] and v3["serves_bare_name"]
        # a version still being evaluated by an automatic cycle is not served by the bare name
        make_lora_student(store, tiny_chat_model, "g")  # v4
        cycle = store_auto.create_cycle(store, "policy_x", 0)
        store_auto.update_cycle(store, cycle.id, state="evaluating", student_model="protege/g@v4")
        srv.registry.refresh()
        assert _answer_model(client, "protege/g") == "protege/g@v3"
    finally:
        srv.stop()


def test_only_rejected_versions_is_404_with_a_reason(store_db, tmp_path, tiny_chat_model):
    store = Store(store_db, data_dir=tmp_path / "r-data")
    try:
        make_lora_student(store, tiny_chat_model, "r")
        _gate(store, "protege/r@v1", "reject")
        reg = StudentRegistry(store)
        assert not reg.has("protege/r") and reg.has("protege/r@v1")
        with pytest.raises(Exception) as err:
            reg.complete({"model": "protege/r", "messages": [{"role": "user", "content": "x"}]})
        assert err.value.status == 404 and err.value.code == "model_not_found" and "passed its gate" in err.value.message
    finally:
        store.close()


def test_cli_promote_needs_force_for_a_rejected_version(store_db, tiny_chat_model):
    from protege.cli import app as cli_app

    db = store_db
    store = Store(db)
    make_lora_student(store, tiny_chat_model, "c")
    _gate(store, "protege/c@v1", "reject")
    store.close()
    r = CliRunner().invoke(cli_app, ["--db", db, "students", "promote", "protege/c@v1"])
    assert r.exit_code != 0 and "--force" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli_app, ["--db", db, "students", "promote", "protege/c@v1", "--force", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["forced"] is True
    r = CliRunner().invoke(cli_app, ["--db", db, "students", "list"])
    assert "protege/c@v1" in r.stdout and "forced" in r.stdout


# A relative DuckDB path and its "<stem>-data" directory, and rows of an older DuckDB release; a
# PostgreSQL store's data_dir is given or absolute (test_bare_name_... serves one given on both backends).
@pytest.mark.backends("duckdb")
def test_served_from_another_directory(tmp_path, tiny_chat_model, monkeypatch):
    """Trained with a relative --db in one directory, served from another: paths are data-dir-relative;
    an old row holding the cwd-relative path of its day still works."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(work)
    store = Store("p.duckdb")  # data dir "p-data", relative to this working directory
    row1 = make_lora_student(store, tiny_chat_model, "moved")
    row2 = make_lora_student(store, tiny_chat_model, "moved")
    assert row1["manifest_path"] == "students/moved/v1/manifest.json"
    # v2 as an older release recorded it: relative to the working directory of training
    store.cursor().execute("UPDATE local_students SET path = ?, manifest_path = ? WHERE version = 2",
                           ["p-data/students/moved/v2/manifest.json"] * 2)
    store.close()
    monkeypatch.chdir(elsewhere)
    settings = Settings(db=str(work / "p.duckdb"), upstream="http://127.0.0.1:9/v1", upstream_api_key="sk-x")
    srv = AppServer(settings)
    try:
        client = openai.OpenAI(base_url=srv.base_url, api_key="sk-client", max_retries=0)
        assert _answer_model(client, "protege/moved@v1") == "protege/moved@v1"
        assert _answer_model(client, "protege/moved@v2") == "protege/moved@v2"
        assert os.getcwd() == str(elsewhere)
    finally:
        srv.stop()
    assert row2["version"] == 2


def test_resolution_on_the_loop_reads_memory_only(store_db, tmp_path, tiny_chat_model):
    store = Store(store_db, data_dir=tmp_path / "m-data")
    try:
        reg = StudentRegistry(store, latest_ttl=0.0)
        make_lora_student(store, tiny_chat_model, "late")

        async def on_loop() -> tuple[bool, bool]:
            first = reg.has("protege/late")  # stale index: answered from memory, refresh started in a thread
            for _ in range(200):
                if reg.has("protege/late"):
                    return first, True
                await asyncio.sleep(0.01)
            return first, False

        first, later = asyncio.run(on_loop())
        assert first is False and later is True
        assert reg.has("protege/late")  # off the loop: refreshed inline when stale
    finally:
        store.close()


def test_migration_creates_the_students_tables(store_db):
    store = Store(store_db)
    try:
        assert store.schema_version >= 6
        store_jobs.put_endpoint_student(store, name="e", base_url="http://127.0.0.1:1/v1", model="m", api_key_env="E_KEY")
        assert store_jobs.get_endpoint_student(store, "e")["api_key_env"] == "E_KEY"
        store_jobs.promote_student(store, "x", 1)
        assert store_jobs.student_verdicts(store)["protege/x@v1"]["promoted"] is True
    finally:
        store.close()


def test_a_failing_index_refresh_is_a_warning_once(store_db, tmp_path, caplog):
    """A refresh that fails serves no new student; it says why at warning level (once per error,
    not at every refresh), where it used to be a debug line that hid a backend's SQL error."""
    store = Store(store_db, data_dir=tmp_path / "data")
    reg = StudentRegistry(store, latest_ttl=0.0)
    store.close()
    with caplog.at_level("DEBUG", logger="protege.distill.finetune.students"):
        reg.refresh()
        reg.refresh()
    failed = [r for r in caplog.records if "student index refresh failed" in r.getMessage()]
    assert [r.levelname for r in failed] == ["WARNING", "DEBUG"]
