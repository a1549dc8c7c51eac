"""Fine-tune jobs in the store, the poll step, the CLI and the HTTP API (OpenAI backend via the fake)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from fastapi import FastAPI
from protege import apikit
from typer.testing import CliRunner

from protege.distill.finetune import jobs
from protege.distill.finetune.backends import FineTuneError
from protege.distill.finetune.api import router
from protege.settings import load_settings
from protege.store import Store
from protege.store import jobs as store_jobs
from tests.fakes.openai_finetune import FakeFineTuneServer
from tests.fixtures.jsonl import write_jsonl
from tests.fixtures.stores import stored_bytes
from tests.fixtures.http import RouterServer as _Server


def chat_rows(n: int = 12) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"text {i} {'buy now' if i % 2 else 'hello friend'}"}, {"role": "assistant", "content": "spam" if i % 2 else "ham"}]}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def fake():
    with FakeFineTuneServer(step_seconds=0.05) as server:
        yield server


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setenv("PROTEGE_FINETUNE_POLL_INTERVAL", "0.02")


@pytest.fixture
def settings(fake, make_db):
    return load_settings(db=make_db("p"), upstream=fake.base_url, upstream_api_key="sk-test")


@pytest.fixture
def store(settings):
    s = Store(settings.db, data_dir=settings.data_path)
    yield s
    s.close()


def test_job_lifecycle_is_recorded_in_the_store(store, settings, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows())
    job = jobs.start_job(
        store, backend="openai", model="gpt-4o-mini-2024-07-18", training_file=train,
        hyperparameters={"n_epochs": 3}, suffix="tiny", seed=3, metadata={"team": "a"}, settings=settings,
    )
    assert job["id"].startswith("ftjob_") and job["provider_job_id"].startswith("ftjob-")
    assert job["provider_files"]["training_file"].startswith("file-")
    done = jobs.wait_job(store, job["id"], interval=0.03, timeout=10, settings=settings)
    assert done["status"] == "succeeded"
    assert done["fine_tuned_model"].startswith("ft:gpt-4o-mini-2024-07-18:protege-test:tiny:")
    assert done["finished_at"] is not None
    assert done["result"]["hyperparameters"]["n_epochs"] == 3 and len(done["result"]["checkpoints"]) == 3
    history = store_jobs.status_history(store, job["id"])
    statuses = [h["status"] for h in history]
    assert statuses[0] == "validating_files" and statuses[-1] == "succeeded"
    assert all(a["at"] <= b["at"] for a, b in zip(history, history[1:]))
    events, more = jobs.list_events(store, job["id"], limit=100)
    assert not more
    messages = [e["message"] for e in events]
    assert messages[-1] == "Job created on backend openai" and messages[0] == "The job has successfully completed"
    # polling again adds nothing (events are de-duplicated by id)
    n = len(events)
    jobs.sync_job(store, job["id"], settings=settings)
    assert len(jobs.list_events(store, job["id"], limit=100)[0]) == n
    # the record survives reopening the store
    path, data_dir = store.path, store.data_dir
    store.close()
    again = Store(path, data_dir=data_dir)
    try:
        assert store_jobs.get_job(again, job["id"])["fine_tuned_model"] == done["fine_tuned_model"]
    finally:
        again.close()


def test_bad_input_is_refused_before_anything_is_recorded(store, settings, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows())
    cases = [
        (dict(backend="nope", model="m", training_file=train), "unknown backend 'nope'"),
        (dict(backend="openai", model="m", training_file=str(tmp_path / "missing.jsonl")), "does not exist"),
        (dict(backend="openai", model="m", training_file=train, hyperparameters={"n_epochs": 0}), "out of range"),
        (dict(backend="openai", model="m", training_file=train, method="rl"), "method must be one of"),
        (dict(backend="openai", model="m"), "a dataset id or a training file is required"),
        (dict(backend="openai", model="m", dataset="ds_nope"), "no dataset version 'ds_nope'"),
        (dict(backend="openai", training_file=train), "a base model is required"),
        (dict(backend="openai", model="m", training_file=train, suffix="x" * 65), "suffix must be 1 to 64"),
    ]
    for kwargs, message in cases:
        with pytest.raises(FineTuneError, match=message):
            jobs.start_job(store, settings=settings, **kwargs)
    assert store_jobs.list_jobs(store)[0] == []


def test_provider_refusal_marks_the_job_failed(store, settings, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", chat_rows(12)[:3] + ['{"broken"'] + chat_rows(12)[3:])
    with pytest.raises(FineTuneError, match="line 4: invalid JSON"):
        jobs.start_job(store, backend="openai", model="gpt-4o-mini", training_file=bad, settings=settings)
    [job], _ = store_jobs.list_jobs(store)
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_training_file"
    assert "line 4" in job["error"]["message"]
    assert [h["status"] for h in store_jobs.status_history(store, job["id"])] == ["validating_files", "failed"]


def test_cancel_and_sync_all(tmp_path, make_db, monkeypatch):
    with FakeFineTuneServer(step_seconds=0.5) as slow:
        settings = load_settings(db=make_db("c"), upstream=slow.base_url, upstream_api_key="sk-test")
        store = Store(settings.db, data_dir=settings.data_path)
        try:
            train = write_jsonl(tmp_path / "t.jsonl", chat_rows())
            a = jobs.start_job(store, backend="openai", model="gpt-4o-mini", training_file=train, settings=settings)
            b = jobs.start_job(store, backend="openai", model="gpt-4o-mini", training_file=train, settings=settings)
            cancelled = jobs.cancel_job(store, a["id"], settings=settings)
            assert cancelled["status"] == "cancelled"
            assert slow.jobs[a["provider_job_id"]].status == "cancelled"
            with pytest.raises(FineTuneError, match="already finished"):
                jobs.cancel_job(store, a["id"], settings=settings)
            assert jobs.sync_all(store, settings=settings) == 1  # only b is still moving
            deadline = time.monotonic() + 10
            while store_jobs.get_job(store, b["id"])["status"] != "succeeded" and time.monotonic() < deadline:
                time.sleep(0.1)
                jobs.sync_all(store, settings=settings)
            assert store_jobs.get_job(store, b["id"])["status"] == "succeeded"
            assert jobs.sync_all(store, settings=settings) == 0
        finally:
            store.close()


def test_list_pagination_and_metadata_filter(store, settings, tmp_path):
    ids = [store_jobs.create_job(store, backend="openai", model="m", metadata={"i": str(i % 2)})["id"] for i in range(5)]
    page, more = jobs.list_jobs(store, limit=2)
    assert [j["id"] for j in page] == ids[::-1][:2] and more
    page2, more2 = jobs.list_jobs(store, limit=2, after=page[-1]["id"])
    assert [j["id"] for j in page2] == ids[::-1][2:4] and more2
    assert [j["id"] for j in jobs.list_jobs(store, metadata={"i": "1"})[0]] == [ids[3], ids[1]]
    with pytest.raises(FineTuneError, match="limit"):
        jobs.list_jobs(store, limit=0)


def test_dataset_id_resolves_to_its_files(store, settings, tmp_path):
    from protege.store import datasets as store_datasets

    train = write_jsonl(tmp_path / "train.jsonl", chat_rows())
    val = write_jsonl(tmp_path / "val.jsonl", chat_rows(10))
    row = store_datasets.DatasetVersionRow(
        id="ds_test1", name="tiny", version=1, kind="sft", created_at=int(time.time()),
        files=json.dumps({"train": {"path": train}, "validation": {"path": val}}),
    )
    store_datasets.save_dataset(store, row)
    job = jobs.start_job(store, backend="openai", model="gpt-4o-mini", dataset="ds_test1", settings=settings)
    assert job["dataset_id"] == "ds_test1" and job["training_file"] == train and job["validation_file"] == val
    assert set(job["provider_files"]) == {"training_file", "validation_file"}


# --- CLI --------------------------------------------------------------------------------------


def _cli(args: list[str], env: dict[str, str]):
    from protege.cli import app

    return CliRunner().invoke(app, args, env=env)


def test_cli_start_status_list_events_cancel(fake, tmp_path, make_db):
    db = make_db("cli")
    env = {"PROTEGE_UPSTREAM": fake.base_url, "OPENAI_API_KEY": "sk-test", "PROTEGE_FINETUNE_POLL_INTERVAL": "0.02"}
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows())
    r = _cli(["--db", db, "finetune", "start", "-t", train, "-m", "gpt-4o-mini", "--n-epochs", "2", "--suffix", "cli",
              "--metadata", "team=x", "--wait", "--poll-interval", "0.05", "--json"], env)
    assert r.exit_code == 0, r.output
    job = json.loads(r.stdout)
    assert job["status"] == "succeeded" and job["hyperparameters"] == {"n_epochs": 2} and job["metadata"] == {"team": "x"}
    assert job["fine_tuned_model"].startswith("ft:gpt-4o-mini:protege-test:cli:")
    assert [h["status"] for h in job["status_history"]][-1] == "succeeded"

    r = _cli(["--db", db, "finetune", "list", "--json"], env)
    assert r.exit_code == 0 and [j["id"] for j in json.loads(r.stdout)["data"]] == [job["id"]]
    r = _cli(["--db", db, "finetune", "status", job["id"], "--json"], env)
    assert json.loads(r.stdout)["fine_tuned_model"] == job["fine_tuned_model"]
    r = _cli(["--db", db, "finetune", "status", job["id"]], env)
    assert job["id"] in r.stdout and "succeeded" in r.stdout
    r = _cli(["--db", db, "finetune", "events", job["id"], "--json", "--limit", "3"], env)
    listed = json.loads(r.stdout)
    assert listed["object"] == "list" and len(listed["data"]) == 3 and listed["has_more"] is True

    r = _cli(["--db", db, "finetune", "cancel", job["id"]], env)
    assert r.exit_code == 1 and r.stderr.strip() == f"error: job {job['id']} has already finished (succeeded)"
    r = _cli(["--db", db, "finetune", "start", "-t", train, "-m", "gpt-4o-mini", "--n-epochs", "99"], env)
    assert r.exit_code == 1 and r.stderr.strip() == "error: hyperparameter n_epochs=99 is out of range (1..50)"
    r = _cli(["--db", db, "finetune", "status", "ftjob_nope"], env)
    assert r.exit_code == 1 and r.stderr.strip() == "error: no fine-tuning job ftjob_nope"
    r = _cli(["--db", db, "finetune", "start", "-t", train, "-m", "gpt-4o-mini", "--metadata", "novalue"], env)
    assert r.exit_code == 1 and "KEY=VALUE" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# --- HTTP API ---------------------------------------------------------------------------------


def test_http_api(store, settings, tmp_path):
    app = FastAPI()
    apikit.install(app)  # the app's error handler, as protege.app's app has it
    app.include_router(router)
    app.state.protege_store = store
    app.state.protege_settings = settings
    from protege.store import datasets as store_datasets

    # Over HTTP a job trains on a dataset id, never on a path the request names (issue 8).
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows())
    store_datasets.save_dataset(store, store_datasets.DatasetVersionRow(
        id="ds_http1", name="tiny", version=1, kind="sft", created_at=int(time.time()),
        files=json.dumps({"train": {"path": train}}),
    ))
    base = "/protege/v1/fine_tuning/jobs"
    with _Server(app) as srv:
        status, job = srv.call("POST", base, {
            "model": "gpt-4o-mini", "dataset_id": "ds_http1", "suffix": "api", "metadata": {"k": "v"},
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4}}},
        })
        assert status == 200, job
        assert job["id"].startswith("ftjob_") and job["object"] == "protege.fine_tuning.job" and job["hyperparameters"] == {"n_epochs": 4}
        deadline = time.monotonic() + 10
        while job["status"] != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.05)
            status, job = srv.call("GET", f"{base}/{job['id']}")
        assert job["status"] == "succeeded" and job["fine_tuned_model"].startswith("ft:gpt-4o-mini:protege-test:api:")
        assert job["status_history"][0]["status"] == "validating_files"

        status, listing = srv.call("GET", f"{base}?limit=1&metadata%5Bk%5D=v")
        assert status == 200 and listing["object"] == "list" and listing["first_id"] == job["id"] == listing["last_id"]
        assert listing["has_more"] is False
        status, events = srv.call("GET", f"{base}/{job['id']}/events?limit=2")
        assert status == 200 and len(events["data"]) == 2 and events["has_more"] is True
        status, more = srv.call("GET", f"{base}/{job['id']}/events?limit=100&after={events['last_id']}")
        assert more["data"][-1]["message"] == "Job created on backend openai"

        status, err = srv.call("POST", f"{base}/{job['id']}/cancel")
        assert status == 400 and err["error"]["code"] == "job_completed"
        status, err = srv.call("GET", f"{base}/ftjob_missing")
        assert status == 404 and err["error"] == {
            "message": "no fine-tuning job ftjob_missing", "type": "invalid_request_error", "param": "id", "code": "job_not_found"
        }
        status, err = srv.call("POST", base, {"model": "gpt-4o-mini", "dataset_id": "ds_http1", "hyperparameters": {"batch_size": 0}})
        assert status == 400 and err["error"]["param"] == "hyperparameters.batch_size"
        status, err = srv.call("POST", base, {"model": "gpt-4o-mini", "dataset_id": "ds_http1", "bogus": 1})
        assert status == 400 and "bogus" in err["error"]["message"]
        status, err = srv.call("GET", f"{base}?limit=abc")
        assert status == 400 and err["error"]["param"] == "limit"


def test_continue_from_an_earlier_job_and_azure_from_settings(fake, store, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows())
    settings = load_settings(
        db=store.path, azure_endpoint=fake.azure_endpoint, azure_api_key="az-settings-key", azure_api_version="2024-10-21"
    )
    before = len(fake.requests)
    first = jobs.start_job(store, backend="azure", model="gpt-4o-mini", training_file=train, suffix="one", settings=settings)
    first = jobs.wait_job(store, first["id"], interval=0.03, timeout=10, settings=settings)
    assert first["status"] == "succeeded" and first["backend"] == "azure"
    seen = fake.requests[before:]
    assert all(r["path"].startswith("/openai/") and r["query"]["api-version"] == "2024-10-21" for r in seen)
    assert {r["credential"] for r in seen} == {"az-settings-key"}
    # the key came from settings and is nowhere in the store (its tables, or any file of this test's)
    assert b"az-settings-key" not in stored_bytes(store.path)
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert b"az-settings-key" not in f.read_bytes(), f

    second = jobs.start_job(store, backend="azure", model=first["id"], training_file=train, suffix="two", settings=settings)
    assert second["model"] == first["fine_tuned_model"]
    assert jobs.wait_job(store, second["id"], interval=0.03, timeout=10, settings=settings)["status"] == "succeeded"
    with pytest.raises(FineTuneError, match="no fine-tuned model to continue from"):
        jobs.start_job(store, backend="azure", model="ftjob_unknown", training_file=train, settings=settings)
    with pytest.raises(FineTuneError, match="AZURE_OPENAI_ENDPOINT"):
        jobs.start_job(store, backend="azure", model="gpt-4o-mini", training_file=train, settings=load_settings(db=store.path, azure_endpoint=None))


def test_http_api_needs_an_admin_key_when_configured(store, fake, tmp_path):
    settings = load_settings(db=store.path, upstream=fake.base_url, upstream_api_key="sk-test", admin_keys=["adm-1"])
    app = FastAPI()
    apikit.install(app)  # the app's error handler, as protege.app's app has it
    app.include_router(router)
    app.state.protege_store = store
    app.state.protege_settings = settings
    base = "/protege/v1/fine_tuning/jobs"
    with _Server(app) as srv:
        status, err = srv.call("GET", base)
        assert status == 401 and err["error"]["code"] == "missing_api_key" and err["error"]["type"] == "authentication_error"
        status, err = srv.call("POST", base, {"model": "m"}, key="wrong")
        assert status == 401 and err["error"]["code"] == "invalid_api_key"
        status, listing = srv.call("GET", base, key="adm-1")
        assert status == 200 and listing["object"] == "list"
