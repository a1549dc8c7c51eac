"""The local scikit-learn student: trained on real labelled text (chatterbot-corpus, offline),
saved as a versioned artifact, reloaded, answering in the teacher's format, served as protege/<name>."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import pytest

from protege.distill.finetune import jobs
from protege.distill.finetune.backends import FineTuneError
from protege.distill.finetune.local_student import (
    FastScorer,
    examples_from_jsonl,
    load_student,
    normalise_label,
    train,
)
from protege.distill.finetune.students import StudentRegistry, parse_model
from protege.store import Store
from protege.store import jobs as store_jobs
from tests.fixtures.once import once_per_backend
from tests.fixtures.topics import SYSTEM, corpus, json_template, split, write_chat


def _finished(srv, job: dict, timeout: float = 60.0) -> dict:
    """The job as the API shows it once it succeeded or failed (or the time is up), polled over HTTP."""
    deadline = time.monotonic() + timeout
    while job["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(0.05)
        _status, job = srv.call("GET", f"/protege/v1/fine_tuning/jobs/{job['id']}")
    return job


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    tr, va = split(corpus())
    return {
        "train_pairs": tr,
        "val_pairs": va,
        "train": write_chat(folder / "train.jsonl", tr, json_template),
        "validation": write_chat(folder / "validation.jsonl", va, json_template),
        "folder": folder,
    }


@pytest.fixture
def trained(data, backend, request):
    """One local job through the job runner, shared by the tests that read its result (once per
    backend; the store stays open)."""

    def build(db: str, data_dir: Path) -> tuple[Store, dict]:
        store = Store(db, data_dir=data_dir)
        job = jobs.start_job(store, backend="local", training_file=data["train"], validation_file=data["validation"], name="topics")
        return store, jobs.wait_job(store, job["id"], interval=0.05, timeout=120)

    return once_per_backend(request, "trained", build)


def test_corpus_is_real_and_labelled():
    pairs = corpus()
    counts = Counter(c for _, c in pairs)
    assert len(pairs) > 1900 and len(counts) >= 20
    assert counts["trivia"] > 200


def test_local_job_trains_a_useful_student(trained):
    store, job = trained
    assert job["status"] == "succeeded", job["error"]
    assert job["fine_tuned_model"] == "protege/topics@v1"
    metrics = job["result"]["metrics"]
    # a topic classifier on short questions: well above guessing the majority class
    assert metrics["validation_accuracy"] >= 0.80
    assert metrics["validation_accuracy"] >= metrics["majority_baseline_accuracy"] + 0.3
    assert metrics["validation_examples"] > 300
    per_class = metrics["per_class"]
    assert per_class["tech support"]["accuracy"] > 0.9 and per_class["trivia"]["support"] > 40
    statuses = [h["status"] for h in store_jobs.status_history(store, job["id"])]
    assert statuses[0] == "validating_files" and statuses[-1] == "succeeded"
    messages = [e["message"] for e in jobs.list_events(store, job["id"], limit=100)[0]]
    assert "New local student created: protege/topics@v1" in messages
    assert any(m.startswith("Validation accuracy") for m in messages)


def test_artifact_is_versioned_hashed_and_reloads(trained, data):
    store, job = trained
    student = job["result"]["student"]
    folder = Path(student["path"]).parent
    assert folder == store.data_dir / "students" / "topics" / "v1"
    manifest = json.loads(Path(student["manifest"]).read_text())
    row = store_jobs.get_student(store, "topics", 1)
    assert manifest["sha256"] == row["sha256"] == student["sha256"]
    assert manifest["classes"] == sorted({normalise_label(json_template(c)) for _, c in data["train_pairs"]})
    assert manifest["templates"]["trivia"] == '{"label": "trivia"}'
    assert manifest["metrics"]["validation_accuracy"] == job["result"]["metrics"]["validation_accuracy"]

    loaded, _ = load_student(store, "topics")
    texts = [q for q, _ in data["val_pairs"]]
    labels = loaded.predict_labels(texts)
    acc = sum(p == c.lower() for p, c in zip(labels, [c for _, c in data["val_pairs"]])) / len(texts)
    assert abs(acc - job["result"]["metrics"]["validation_accuracy"]) < 1e-4  # metrics are rounded to 4 places
    # the serving fast path agrees with scikit-learn's pipeline on every input
    fast = FastScorer(loaded.pipeline)
    assert [fast.predict(t)[0] for t in texts] == labels
    answer, label, conf = loaded.answer([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Who was the 37th President of the United States?"}])
    assert label == "trivia" and answer == '{"label": "trivia"}' and 0 <= conf <= 1


# A training job (seconds) to check the artifact file against its row: DuckDB only; the row's sha256
# on PostgreSQL is test_artifact_is_versioned_hashed_and_reloads[postgresql].
@pytest.mark.backends("duckdb")
def test_tampered_artifact_is_refused(store_db, data):
    store = Store(store_db)
    try:
        job = jobs.start_job(store, backend="local", training_file=data["train"], name="tamper")
        job = jobs.wait_job(store, job["id"], interval=0.05, timeout=120)
        path = Path(job["result"]["student"]["path"])
        path.write_bytes(path.read_bytes() + b"x")
        with pytest.raises(FineTuneError, match="does not match its recorded sha256"):
            load_student(store, "tamper")
    finally:
        store.close()


def test_answers_in_the_teachers_format():
    rows = [(f"ticket {i}: my {w} is broken", w) for i in range(40) for w in ("printer", "laptop", "phone")]
    # most answers use "Category: x", a few use another spelling: the student uses the most frequent one
    answers = [(q, f"Category: {w.title()}" if i % 10 else f"category: {w}") for i, (q, w) in enumerate(rows)]
    student = train(answers, random_state=0)
    assert set(student.classes) == {"printer", "laptop", "phone"}
    assert student.templates["laptop"] == "Category: Laptop"
    text, label, _ = student.answer([{"role": "user", "content": "ticket 999: my laptop is broken"}])
    assert (text, label) == ("Category: Laptop", "laptop")


def test_normalise_label():
    assert normalise_label('{"label": "Spam"}') == "spam"
    assert normalise_label('{"category": "Tech Support", "confidence": 0.9}') == "tech support"
    assert normalise_label('{"x": "billing"}') == "billing"
    assert normalise_label("Category: spam.") == "spam"
    assert normalise_label("  SPAM  ") == "spam"
    assert normalise_label('"ham"') == "ham"


def test_free_form_answers_are_refused():
    pairs = [(f"question {i}", f"a long, unique free-form answer number {i}") for i in range(40)]
    with pytest.raises(FineTuneError, match="free-form"):
        train(pairs)
    with pytest.raises(FineTuneError, match="same label"):
        train([("a", "x"), ("b", "x"), ("c", "x")])


def test_bad_local_job_fails_with_a_reason(store_db, tmp_path):
    store = Store(store_db)
    try:
        free = tmp_path / "free.jsonl"
        free.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"unique answer {i}"}]}) for i in range(30)))
        job = jobs.wait_job(store, jobs.start_job(store, backend="local", training_file=str(free), name="free")["id"], interval=0.05, timeout=60)
        assert job["status"] == "failed" and job["error"]["code"] == "not_label_like"
        with pytest.raises(FineTuneError, match="invalid student name"):
            jobs.start_job(store, backend="local", training_file=str(free), name="../etc")
        with pytest.raises(FineTuneError, match="supervised"):
            jobs.start_job(store, backend="local", training_file=str(free), name="x", method="dpo")
    finally:
        store.close()


def test_examples_use_the_last_assistant_turn(tmp_path):
    path = tmp_path / "multi.jsonl"
    path.write_text(json.dumps({"messages": [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "first"}, {"role": "assistant", "content": "A"},
        {"role": "user", "content": "second"}, {"role": "assistant", "content": "B"},
    ]}) + "\n")
    assert examples_from_jsonl(path) == [("first\nsecond", "B")]
    assert examples_from_jsonl(path, include_system=True) == [("sys\nfirst\nsecond", "B")]


# --- serving ----------------------------------------------------------------------------------


def test_registry_has_and_complete(trained, data):
    store, _ = trained
    reg = StudentRegistry(store, latest_ttl=0.0)
    assert parse_model("protege/topics@v3") == ("topics", 3) and parse_model("gpt-4o") is None
    assert reg.has("protege/topics") and reg.has("protege/topics@v1")
    assert not reg.has("protege/topics@v9") and not reg.has("protege/other") and not reg.has("gpt-4o-mini")
    body = {"model": "protege/topics", "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is a computer?"}]}
    out = reg.complete(body)
    assert out["id"].startswith("chatcmpl-") and out["object"] == "chat.completion" and isinstance(out["created"], int)
    assert out["model"] == "protege/topics@v1"
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop" and choice["index"] == 0
    assert json.loads(choice["message"]["content"])["label"] in {c.lower() for _, c in data["train_pairs"]} | {c for _, c in data["train_pairs"]}
    usage = out["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    with pytest.raises(FineTuneError, match="does not exist"):
        reg.complete({"model": "protege/topics@v7", "messages": body["messages"]})
    with pytest.raises(FineTuneError, match="messages"):
        reg.complete({"model": "protege/topics", "messages": []})

    # a second version becomes "latest"; @v1 still answers from v1
    job2 = jobs.wait_job(store, jobs.start_job(store, backend="local", training_file=data["train"], name="topics")["id"], interval=0.05, timeout=120)
    assert job2["fine_tuned_model"] == "protege/topics@v2"
    assert reg.complete(body)["model"] == "protege/topics@v2"
    assert reg.complete(dict(body, model="protege/topics@v1"))["model"] == "protege/topics@v1"


def test_served_through_the_proxy_with_the_openai_sdk(data, store_db, tmp_path):
    """End to end: protege.app.build_app under uvicorn on 127.0.0.1, the OpenAI SDK as client."""
    import openai

    from protege import app as app_mod
    from tests.fixtures.http import Served
    from protege.settings import load_settings

    # Its own store: the proxy's lifespan closes the store it was given on shutdown.
    store = Store(store_db, data_dir=tmp_path / "e2e-data")
    job = jobs.start_job(store, backend="local", training_file=data["train"], name="topics")
    assert jobs.wait_job(store, job["id"], interval=0.05, timeout=120)["status"] == "succeeded"
    settings = load_settings(db=store.path, data_dir=str(store.data_dir), upstream="http://127.0.0.1:9/v1", upstream_api_key="sk-unused")
    app, _store, _writer = app_mod.build_app(settings, store=store)
    served = Served(app, fast=False, timeout=15)
    try:
        client = openai.OpenAI(base_url=served.base_url, api_key="sk-client", max_retries=0)
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Who was the 37th President of the United States?"}]
        out = client.chat.completions.create(model="protege/topics@v1", messages=messages)
        assert out.choices[0].message.content == '{"label": "trivia"}'
        assert out.model == "protege/topics@v1" and out.id.startswith("chatcmpl-") and out.usage.total_tokens > 0
        chunks = list(client.chat.completions.create(model="protege/topics@v1", messages=messages, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == '{"label": "trivia"}'
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="protege/unknown-student", messages=messages)
    finally:
        served.stop(10)


# Two training jobs: DuckDB only. On PostgreSQL a job through the runner is the `trained` tests, and
# one started over HTTP is test_http_jobs_train_on_examples_uploaded_inline[postgresql].
@pytest.mark.backends("duckdb")
def test_cli_and_http_start_local_jobs(data, make_db, tmp_path):
    from fastapi import FastAPI

    from protege import apikit
    from typer.testing import CliRunner

    from protege.cli import app as cli_app
    from protege.distill.finetune.api import router
    from tests.fixtures.http import RouterServer as _Server

    db = make_db("cli")
    r = CliRunner().invoke(cli_app, ["--db", db, "finetune", "start", "--backend", "local", "-t", data["train"], "-v", data["validation"], "--name", "topics", "--json"])
    assert r.exit_code == 0, r.output
    job = json.loads(r.stdout)
    assert job["status"] == "succeeded" and job["fine_tuned_model"] == "protege/topics@v1"
    assert job["result"]["metrics"]["validation_accuracy"] >= 0.8
    r = CliRunner().invoke(cli_app, ["--db", db, "finetune", "status", job["id"]])
    assert "val_acc=" in r.stdout and "tech support" in r.stdout  # per-class lines

    store = Store(make_db("http"), data_dir=tmp_path / "http-data")  # not the CLI's data dir (PostgreSQL: ./protege-data)
    try:
        api = FastAPI()
        apikit.install(api)  # the app's error handler, as protege.app's app has it
        api.include_router(router)
        api.state.protege_store = store
        # Over HTTP a job trains on a dataset id, never on a path the request names (issue 8).
        from protege.store import datasets as store_datasets

        store_datasets.save_dataset(store, store_datasets.DatasetVersionRow(
            id="ds_web1", name="topics", version=1, kind="sft", created_at=int(time.time()),
            files=json.dumps({"train": {"path": data["train"]}}),
        ))
        with _Server(api) as srv:
            status, created = srv.call("POST", "/protege/v1/fine_tuning/jobs", {"backend": "local", "dataset_id": "ds_web1", "name": "web"})
            assert status == 200 and created["backend"] == "local"
            job = _finished(srv, created)
            assert job["status"] == "succeeded" and job["fine_tuned_model"] == "protege/web@v1"
            status, err = srv.call("POST", "/protege/v1/fine_tuning/jobs", {"backend": "local", "dataset_id": "ds_web1", "name": "bad name!"})
            assert status == 400 and err["error"]["param"] == "name"
    finally:
        store.close()


def test_local_job_of_an_exited_process_reads_as_interrupted(store_db):
    store = Store(store_db)
    try:
        job = store_jobs.create_job(store, backend="local", model="tfidf-sgd", name="gone", status="running")
        store_jobs.update_job(store, job["id"], provider_job_id=f"local-{job['id']}")
        job = jobs.get_job(store, job["id"])
        assert job["status"] == "failed" and job["error"]["code"] == "interrupted"
        assert [h["status"] for h in store_jobs.status_history(store, job["id"])] == ["running", "failed"]
    finally:
        store.close()


def test_http_jobs_train_on_examples_uploaded_inline(data, store_db, tmp_path):
    """Over HTTP a job may also train on examples sent in the request (the server writes them to a
    content-addressed file in its data directory); a bad upload is an OpenAI-style 400."""
    from fastapi import FastAPI

    from protege import apikit
    from protege.distill.finetune.api import router
    from tests.fixtures.http import RouterServer

    lines = lambda path: [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]  # noqa: E731
    store = Store(store_db, data_dir=tmp_path / "up-data")
    try:
        api = FastAPI()
        apikit.install(api)
        api.include_router(router)
        api.state.protege_store = store
        body = {"backend": "local", "name": "uploaded", "training_examples": lines(data["train"]),
                "validation_examples": lines(data["validation"])}
        with RouterServer(api) as srv:
            status, created = srv.call("POST", "/protege/v1/fine_tuning/jobs", body)
            assert status == 200, created
            job = _finished(srv, created)
            assert job["status"] == "succeeded" and job["fine_tuned_model"] == "protege/uploaded@v1"
            assert job["result"]["metrics"]["validation_accuracy"] >= 0.8
            uploads = sorted((store.data_dir / "uploads").glob("*.jsonl"))
            assert len(uploads) == 2 and all(p.stem == hashlib.sha256(p.read_bytes()).hexdigest() for p in uploads)
            for bad, param in (({"training_examples": []}, "training_examples"), ({"training_examples": ["x"]}, "training_examples"),
                               ({"validation_examples": [{"messages": []}]}, "validation_examples"),
                               ({"dataset_id": "ds_x", "training_examples": [{"messages": []}]}, "training_examples")):
                status, err = srv.call("POST", "/protege/v1/fine_tuning/jobs", {"backend": "local", **bad})
                assert status == 400 and err["error"]["param"] == param, err
    finally:
        store.close()
