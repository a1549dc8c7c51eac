"""OpenAI / Azure OpenAI fine-tuning through the real ``openai`` SDK against the local fake server."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
from azure.core.credentials import AccessToken

from protege.distill.finetune.backends import FineTuneError, JobSpec, validate_hyperparameters
from protege.distill.finetune.openai_backend import AZURE_SCOPE, OpenAIBackend, make_azure_client, make_openai_client, validate_training_file
from tests.fakes.openai_finetune import FakeFineTuneServer
from tests.fixtures.jsonl import write_jsonl


def chat_rows(n: int = 12) -> list[dict]:
    labels = ["spam", "ham"]
    return [
        {
            "messages": [
                {"role": "system", "content": "Classify the message as spam or ham."},
                {"role": "user", "content": f"message number {i}: {'win a prize now' if i % 2 else 'see you at lunch'}"},
                {"role": "assistant", "content": labels[i % 2 == 0]},
            ]
        }
        for i in range(n)
    ]


def dpo_rows(n: int = 12) -> list[dict]:
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"Summarise item {i}"}]},
            "preferred_output": [{"role": "assistant", "content": f"Item {i} in short."}],
            "non_preferred_output": [{"role": "assistant", "content": f"Item {i} is, well, long and rambling."}],
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def fake():
    with FakeFineTuneServer(step_seconds=0.05) as server:
        yield server


@pytest.fixture
def backend(fake) -> OpenAIBackend:
    return OpenAIBackend(make_openai_client(api_key="sk-test", base_url=fake.base_url), poll_interval=0.02)


def wait_done(backend: OpenAIBackend, job_id: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        st = backend.status(job_id)
        if st.status in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return st
        time.sleep(0.03)


def last_create_body(fake: FakeFineTuneServer) -> dict:
    return [r for r in fake.requests if r["method"] == "POST" and r["path"].endswith("/fine_tuning/jobs")][-1]["json"]


def test_supervised_job_passes_hyperparameters_and_finishes(fake, backend, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows(12))
    val = write_jsonl(tmp_path / "validation.jsonl", chat_rows(10))
    hp = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}
    spec = JobSpec(model="gpt-4o-mini-2024-07-18", training_file=train, validation_file=val, hyperparameters=hp, suffix="distill", seed=7, metadata={"run": "a"})
    started = backend.start(spec)
    assert started.provider_job_id.startswith("ftjob-")
    assert set(started.files) == {"training_file", "validation_file"}
    body = last_create_body(fake)
    assert body["method"] == {"type": "supervised", "supervised": {"hyperparameters": hp}}
    assert body["suffix"] == "distill" and body["seed"] == 7 and body["metadata"] == {"run": "a"}
    assert body["validation_file"] == started.files["validation_file"]
    # uploads went in with purpose fine-tune and were processed
    f = backend.client.files.retrieve(started.files["training_file"])
    assert f.purpose == "fine-tune" and f.status == "processed"

    st = wait_done(backend, started.provider_job_id)
    assert st.status == "succeeded"
    assert re.fullmatch(r"ft:gpt-4o-mini-2024-07-18:protege-test:distill:[A-Za-z0-9]{8}", st.fine_tuned_model)
    assert st.hyperparameters == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}
    events = backend.events(started.provider_job_id)
    messages = [e["message"] for e in events]
    assert messages[0].startswith("Validating training file")  # oldest first
    assert any(m.startswith("New fine-tuned model created: ft:") for m in messages)
    assert any(e["type"] == "metrics" and "train_loss" in e["data"] for e in events)
    # a later poll asks only for what is new: paging stops at the first known event
    newest = backend.events(started.provider_job_id, known={e["id"] for e in events[:-2]})
    assert [e["id"] for e in newest] == [e["id"] for e in events[-2:]]
    checkpoints = backend.checkpoints(started.provider_job_id)
    assert len(checkpoints) == 3
    assert all(c["fine_tuned_model_checkpoint"].startswith(st.fine_tuned_model + ":ckpt-step-") for c in checkpoints)


def test_dpo_job_with_beta(fake, backend, tmp_path):
    train = write_jsonl(tmp_path / "dpo.jsonl", dpo_rows(12))
    spec = JobSpec(model="gpt-4o-mini-2024-07-18", training_file=train, method="dpo", hyperparameters={"beta": 0.2, "n_epochs": 1})
    started = backend.start(spec)
    assert last_create_body(fake)["method"] == {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}}
    st = wait_done(backend, started.provider_job_id)
    assert st.status == "succeeded" and st.fine_tuned_model.startswith("ft:gpt-4o-mini-2024-07-18:protege-test::")
    assert st.hyperparameters["beta"] == 0.2


def test_dpo_method_rejects_chat_file_locally_and_at_the_provider(fake, tmp_path):
    train = write_jsonl(tmp_path / "chat.jsonl", chat_rows(12))
    client = make_openai_client(api_key="sk-test", base_url=fake.base_url)
    with pytest.raises(FineTuneError, match="line 1: dpo example needs an 'input'"):
        OpenAIBackend(client, poll_interval=0.02).start(JobSpec(model="gpt-4o-mini", training_file=train, method="dpo"))
    with pytest.raises(FineTuneError, match="needs DPO") as exc:
        OpenAIBackend(client, poll_interval=0.02, prevalidate=False).start(JobSpec(model="gpt-4o-mini", training_file=train, method="dpo"))
    assert exc.value.status == 400 and exc.value.code == "invalid_training_file"


def test_invalid_dataset_reports_the_bad_lines(fake, tmp_path):
    rows: list = chat_rows(12)
    rows[2] = '{"messages": [oops'
    rows[4] = {"messages": [{"role": "user", "content": "no answer here"}]}
    rows[6] = {"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "x"}]}
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    errors = validate_training_file(path)
    assert errors[0].startswith("line 3: invalid JSON")
    assert errors[1] == "line 5: example has no assistant message"
    assert errors[2] == "line 7: message 0 has unrecognized role 'robot'"
    client = make_openai_client(api_key="sk-test", base_url=fake.base_url)
    with pytest.raises(FineTuneError, match="line 3: invalid JSON.*line 5: example has no assistant message"):
        OpenAIBackend(client, poll_interval=0.02).start(JobSpec(model="gpt-4o-mini", training_file=path))
    # without local checks the provider's file processing rejects it, naming the line
    with pytest.raises(FineTuneError, match=r"rejected: Invalid file format\. Line 3 is not valid JSON"):
        OpenAIBackend(client, poll_interval=0.02, prevalidate=False).start(JobSpec(model="gpt-4o-mini", training_file=path))


def test_too_few_examples(fake, tmp_path):
    path = write_jsonl(tmp_path / "small.jsonl", chat_rows(5))
    assert validate_training_file(path) == ["file has 5 example(s); fine-tuning needs at least 10"]
    client = make_openai_client(api_key="sk-test", base_url=fake.base_url)
    with pytest.raises(FineTuneError, match="must have at least 10 examples"):
        OpenAIBackend(client, poll_interval=0.02, prevalidate=False).start(JobSpec(model="gpt-4o-mini", training_file=path))


def test_hyperparameters_out_of_range(fake, backend, tmp_path):
    with pytest.raises(FineTuneError, match=r"n_epochs=100 is out of range \(1..50\)"):
        validate_hyperparameters("supervised", {"n_epochs": 100})
    with pytest.raises(FineTuneError, match="beta applies only to dpo"):
        validate_hyperparameters("supervised", {"beta": 0.1})
    with pytest.raises(FineTuneError, match=r"beta=3 is out of range"):
        validate_hyperparameters("dpo", {"beta": 3})
    assert validate_hyperparameters("dpo", {"beta": "auto", "n_epochs": "3"}) == {"beta": "auto", "n_epochs": 3}
    # the provider refuses too (the backend surfaces its 400 with the param)
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows(12))
    with pytest.raises(FineTuneError) as exc:
        backend.start(JobSpec(model="gpt-4o-mini", training_file=train, hyperparameters={"batch_size": 1000}))
    assert exc.value.status == 400
    assert exc.value.param == "method.supervised.hyperparameters.batch_size"
    assert "batch_size" in exc.value.message


def test_cancel_running_job(fake, tmp_path):
    slow = FakeFineTuneServer(step_seconds=0.5).start()
    try:
        backend = OpenAIBackend(make_openai_client(api_key="sk-test", base_url=slow.base_url), poll_interval=0.05)
        started = backend.start(JobSpec(model="gpt-4o-mini", training_file=write_jsonl(tmp_path / "t.jsonl", chat_rows(12))))
        st = backend.cancel(started.provider_job_id)
        assert st.status == "cancelled"
        assert backend.status(started.provider_job_id).status == "cancelled"
        assert backend.events(started.provider_job_id)[-1]["message"] == "Fine-tuning job cancelled"
        with pytest.raises(FineTuneError, match="already completed"):
            backend.cancel(started.provider_job_id)
    finally:
        slow.stop()


def test_continual_fine_tuning_from_a_fine_tuned_model(fake, backend, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", chat_rows(12))
    first = backend.start(JobSpec(model="gpt-4o-mini-2024-07-18", training_file=train, suffix="v1"))
    ft = wait_done(backend, first.provider_job_id).fine_tuned_model
    second = backend.start(JobSpec(model=ft, training_file=train, suffix="v2"))
    assert last_create_body(fake)["model"] == ft
    st = wait_done(backend, second.provider_job_id)
    assert st.status == "succeeded"
    assert re.fullmatch(r"ft:gpt-4o-mini-2024-07-18:protege-test:v2:[A-Za-z0-9]{8}", st.fine_tuned_model)
    with pytest.raises(FineTuneError) as exc:
        backend.start(JobSpec(model="ft:gpt-4o-mini:someone:else:XXXXXXXX", training_file=train))
    assert exc.value.status == 404 and exc.value.code == "model_not_found"


def test_azure_with_api_key(fake, tmp_path):
    client = make_azure_client(azure_endpoint=fake.azure_endpoint, api_key="az-key-123", api_version="2025-02-01-preview")
    backend = OpenAIBackend(client, name="azure", poll_interval=0.02)
    before = len(fake.requests)
    started = backend.start(JobSpec(model="gpt-4o-mini", training_file=write_jsonl(tmp_path / "t.jsonl", chat_rows(12))))
    assert wait_done(backend, started.provider_job_id).status == "succeeded"
    seen = fake.requests[before:]
    assert seen and all(r["path"].startswith("/openai/") for r in seen)
    assert all(r["query"].get("api-version") == "2025-02-01-preview" for r in seen)
    assert {r["auth"] for r in seen} == {"api-key"} and {r["credential"] for r in seen} == {"az-key-123"}
    assert {r["path"] for r in seen} >= {"/openai/files", "/openai/fine_tuning/jobs"}


def test_azure_with_entra_token_provider(fake, tmp_path):
    class FakeCredential:
        """Stands in for DefaultAzureCredential: no real Azure, just get_token."""

        def __init__(self) -> None:
            self.scopes: list[tuple] = []

        def get_token(self, *scopes, **kwargs):
            self.scopes.append(scopes)
            return AccessToken("entra-token-xyz", int(time.time()) + 3600)

    cred = FakeCredential()
    client = make_azure_client(azure_endpoint=fake.azure_endpoint, auth="entra", credential=cred)
    backend = OpenAIBackend(client, name="azure", poll_interval=0.02)
    before = len(fake.requests)
    started = backend.start(JobSpec(model="gpt-4o-mini", training_file=write_jsonl(tmp_path / "t.jsonl", chat_rows(12))))
    assert started.provider_job_id.startswith("ftjob-")
    assert cred.scopes and cred.scopes[0] == (AZURE_SCOPE,)
    seen = fake.requests[before:]
    assert {r["auth"] for r in seen} == {"bearer"} and {r["credential"] for r in seen} == {"entra-token-xyz"}


def test_401_without_a_key(fake):
    for url in (f"{fake.base_url}/fine_tuning/jobs", f"{fake.azure_endpoint}/openai/fine_tuning/jobs?api-version=2025-02-01-preview"):
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(url, timeout=5)
        assert exc.value.code == 401
        body = json.loads(exc.value.read())
        assert set(body["error"]) == {"message", "type", "param", "code"}
    locked = FakeFineTuneServer(api_keys={"sk-right"}).start()
    try:
        backend = OpenAIBackend(make_openai_client(api_key="sk-wrong", base_url=locked.base_url))
        with pytest.raises(FineTuneError) as err:
            backend.status("ftjob-x")
        assert err.value.status == 401
    finally:
        locked.stop()


def test_fake_lists_paginate_and_filter_by_metadata(fake, tmp_path):
    client = openai.OpenAI(api_key="sk-test", base_url=fake.base_url)
    f = client.files.create(file=("t.jsonl", Path(write_jsonl(tmp_path / "t.jsonl", chat_rows(12))).read_bytes()), purpose="fine-tune")
    deadline = time.monotonic() + 5
    while client.files.retrieve(f.id).status != "processed" and time.monotonic() < deadline:
        time.sleep(0.02)
    tag = f"pg-{time.time_ns()}"
    ids = [client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f.id, metadata={"tag": tag, "i": str(i)}).id for i in range(3)]
    page = client.fine_tuning.jobs.list(limit=2, metadata={"tag": tag})
    assert [j.id for j in page.data] == ids[::-1][:2] and page.has_more is True
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2, metadata={"tag": tag})] == ids[::-1]  # auto-pagination
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"tag": tag, "i": "1"})] == [ids[1]]
    assert client.files.content(f.id).read().startswith(b'{"messages"')
    assert client.files.delete(f.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError) as exc:
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    assert exc.value.code == "fine_tune_not_found"


def test_fake_refuses_jobs_on_files_not_yet_processed(tmp_path):
    with FakeFineTuneServer(step_seconds=2.0) as slow:
        client = openai.OpenAI(api_key="sk-test", base_url=slow.base_url, max_retries=0)
        f = client.files.create(file=("t.jsonl", Path(write_jsonl(tmp_path / "t.jsonl", chat_rows(12))).read_bytes()), purpose="fine-tune")
        assert f.status == "uploaded"
        with pytest.raises(openai.BadRequestError) as exc:
            client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f.id)
        assert exc.value.code == "file_not_ready" and exc.value.param == "training_file"
        with pytest.raises(openai.BadRequestError) as exc:
            client.files.create(file=("t.csv", b"a,b"), purpose="fine-tune")
        assert "jsonl" in exc.value.message
