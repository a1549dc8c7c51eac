"""LoRA jobs as jobs: cancel stops the process group, a SIGKILLed job process resumes from its
checkpoint, and the real SmolLM2 (GGUF, dequantised once) trains on traffic captured through the
real proxy, started and followed through the HTTP API."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest

from protege.distill.finetune import jobs
from protege.distill.finetune import jobfiles
from protege.distill.finetune.lora import LoraBackend, lora_backend
from protege.store import Store
from protege.store import jobs as store_jobs
from tests.fixtures.jsonl import write_jsonl
from tests.fixtures.lora_train import all_events, lora_train_smollm2_base, seed_base, sft_examples, wait_until  # noqa: F401

pytest.importorskip("trl")


def _job_dir(store, job) -> Path:
    return Path(store.data_dir) / "finetune" / job["id"]


def _step(job_dir: Path) -> int:
    return int((jobfiles.read_json(job_dir / jobfiles.STATUS) or {}).get("step") or 0)


def test_cancel_stops_the_job_process(make_db, tmp_path, tiny_chat_model):
    db = make_db("db")
    store = Store(db)
    train = write_jsonl(tmp_path / "t.jsonl", sft_examples(16))
    job = jobs.start_job(store, backend="lora", model=str(tiny_chat_model), training_file=train, name="long",
                         hyperparameters={"max_steps": 5000, "batch_size": 2, "save_steps": 4000}, settings=None)
    job_dir = _job_dir(store, job)
    wait_until(lambda: _step(job_dir) >= 2, timeout=180)
    pid = jobfiles.read_json(job_dir / jobfiles.PROCESS)["pid"]
    assert jobfiles.process_alive(job_dir)
    # `finetune status` shows the running job's progress (step, loss, ETA) from its files.
    from typer.testing import CliRunner

    from protege.cli import app

    r = CliRunner().invoke(app, ["--db", db, "finetune", "status", job["id"]])
    assert r.exit_code == 0 and "running" in r.output and "/5000  loss=" in r.output and "ETA" in r.output, r.output
    job = jobs.cancel_job(store, job["id"])
    assert job["status"] == "cancelled"
    assert not jobfiles.process_alive(job_dir)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole process group is gone
    # Looking at it again neither restarts it nor records a student.
    backend = lora_backend(store=store)
    assert backend.status(job["provider_job_id"]).status == "cancelled"
    assert jobfiles.read_json(job_dir / jobfiles.PROCESS)["attempt"] == 1
    assert store_jobs.get_student(store, "long") is None
    assert _step(job_dir) < 5000


# DuckDB only: training time, not the store, is this test's cost; the LoRA job's records, its student registry and serving run on PostgreSQL in test_cancel_stops_the_job_process (the job's restart state is its files).
@pytest.mark.backends("duckdb")
def test_a_killed_job_resumes_from_its_last_checkpoint(tmp_path, tiny_chat_model):
    store = Store(str(tmp_path / "db.duckdb"))
    train = write_jsonl(tmp_path / "t.jsonl", sft_examples(16))
    total = 120
    job = jobs.start_job(store, backend="lora", model=str(tiny_chat_model), training_file=train, name="phoenix",
                         hyperparameters={"max_steps": total, "batch_size": 2, "save_steps": 10}, settings=None)
    job_dir = _job_dir(store, job)
    wait_until(lambda: jobfiles.last_checkpoint(job_dir) is not None and _step(job_dir) >= 22, timeout=180, interval=0.02)
    os.killpg(jobfiles.read_json(job_dir / jobfiles.PROCESS)["pid"], signal.SIGKILL)
    wait_until(lambda: not jobfiles.process_alive(job_dir), timeout=10)
    killed_at = _step(job_dir)
    assert killed_at < total, "the job finished before it could be killed"
    resume_from = int(jobfiles.last_checkpoint(job_dir).name.split("-")[1])
    assert 10 <= resume_from <= killed_at

    job = jobs.sync_job(store, job["id"])  # the next look at the job restarts its process
    assert job["status"] not in ("failed", "cancelled")
    assert jobfiles.read_json(job_dir / jobfiles.PROCESS)["attempt"] == 2
    job = jobs.wait_job(store, job["id"], interval=0.3, timeout=240)
    assert job["status"] == "succeeded", job["error"]

    events = all_events(store, job["id"])
    messages = [e["message"] for e in events]
    restart = next(i for i, m in enumerate(messages) if m.startswith("The training process exited before finishing"))
    assert f"resuming from checkpoint-{resume_from}" in messages[restart]
    assert f"Resumed from the checkpoint at step {resume_from}" in messages[restart:]
    steps_after = [e["data"]["step"] for e in events[restart:] if e["type"] == "metrics" and "step" in (e["data"] or {})]
    assert steps_after[0] == resume_from + 1  # continued, not restarted from step 1
    assert steps_after[-1] == total
    m = store_jobs.get_student(store, "phoenix")["manifest"]
    assert m["metrics"]["train_steps"] == total
    assert not (job_dir / jobfiles.CHECKPOINTS).exists()  # resume points are dropped once the student is recorded


def _teacher(body: dict) -> str:
    """A deterministic stand-in teacher: the review's sentiment as one word."""
    text = body["messages"][-1]["content"].lower()
    return "negative" if any(w in text for w in ("terrible", "awful", "rude", "dirty", "cold")) else "positive"


# DuckDB only: training time, not the store, is this test's cost; the LoRA job's records, its student registry and serving run on PostgreSQL in test_lora_backend.py::test_dpo_job_on_preference_pairs and test_lora_serving.py.
@pytest.mark.backends("duckdb")
def test_smollm2_gguf_trains_on_traffic_captured_through_the_proxy(tmp_path, lora_train_smollm2_base, smollm2_gguf):
    import uvicorn
    from openai import OpenAI

    from protege.app import build_app
    from protege.distill.finetune.base import dequantise_gguf
    from protege.settings import load_settings
    from tests.fakes.openai_upstream import start_fake_openai
    from tests.fixtures.http import call

    # Dequantised once: a second call finds the cached copy, and the job's data dir gets it where a job puts it.
    again, made = dequantise_gguf(smollm2_gguf, lora_train_smollm2_base.parent)
    assert again == lora_train_smollm2_base and made is False
    assert orjson.loads((again / "config.json").read_bytes()).get("quantization_config") is None  # trainable

    fake = start_fake_openai(_teacher)
    settings = load_settings(db=str(tmp_path / "e2e.duckdb"), upstream=fake.base_url, finetune_threads=2)
    seed_base(lora_train_smollm2_base, settings.data_path)
    app, store, writer = build_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=20, interval=0.02)
        root = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        client = OpenAI(base_url=root + "/v1", api_key="sk-test-not-a-real-key", max_retries=0)
        for ex in sft_examples(12):
            client.chat.completions.create(model="gpt-4o", messages=ex["messages"][:2], metadata={"app": "reviews"})
        assert writer.flush(10)
        status, dv = call("POST", f"{root}/protege/v1/datasets", {"name": "reviews", "metadata": {"app": "reviews"}, "validation_fraction": 0.25, "seed": 1})
        assert status == 200, dv

        status, job = call("POST", f"{root}/protege/v1/fine_tuning/jobs", {
            "backend": "lora", "model": str(smollm2_gguf), "dataset_id": dv["id"], "name": "smol-reviews",
            "hyperparameters": {"max_steps": 2, "batch_size": 2, "max_length": 96, "eval_generations": 2, "eval_max_new_tokens": 3},
        })
        assert status == 200, job
        assert job["backend"] == "lora" and job["status"] in ("validating_files", "running")
        seen_running = False
        deadline = time.monotonic() + 300
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, job
            time.sleep(1)
            status, job = call("GET", f"{root}/protege/v1/fine_tuning/jobs/{job['id']}")
            assert status == 200
            seen_running |= job["status"] == "running"
        assert job["status"] == "succeeded", job["error"]
        assert job["fine_tuned_model"] == "protege/smol-reviews@v1"
        status, events = call("GET", f"{root}/protege/v1/fine_tuning/jobs/{job['id']}/events?limit=50")
        messages = [e["message"] for e in events["data"]]
        assert any(m.startswith("Using the dequantised base") for m in messages)
        assert any(m.startswith("Step 2/2: training loss=") for m in messages)

        row = store_jobs.get_student(store, "smol-reviews")
        m = row["manifest"]
        assert m["base_model"] == str(smollm2_gguf) and m["base_dir"] == f"bases/{lora_train_smollm2_base.name}"
        assert m["dataset"]["id"] == dv["id"] and m["dataset"]["name"] == "reviews" and m["dataset"]["train_examples"] >= 6
        assert m["metrics"]["train_steps"] == 2 and m["metrics"]["validation_generations"] == 2
        assert m["base_source_sha256"] and lora_train_smollm2_base.name == m["base_source_sha256"][:16]
        assert (Path(store.data_dir) / row["path"]).is_file()
    finally:
        server.should_exit = True
        thread.join(20)
        fake.stop()


# DuckDB only: training time, not the store, is this test's cost; the LoRA job's records, its student registry and serving run on PostgreSQL in test_cancel_stops_the_job_process (this one is about the job's process files).
@pytest.mark.backends("duckdb")
def test_a_poll_before_the_first_launch_starts_no_second_process(tmp_path, tiny_chat_model):
    """A poller (the server's job sync, `--wait`) that looks at a job between its files being
    written and its process being launched must not take it for a job whose process died: before,
    it launched a second training process ("exited before finishing (attempt 1)"), seen as
    `attempt == 2` in test_cancel_stops_the_job_process on a loaded machine."""
    from protege.distill.finetune.interface import JobSpec

    store = Store(str(tmp_path / "db.duckdb"))
    train = write_jsonl(tmp_path / "t.jsonl", sft_examples(4))
    backend = LoraBackend(store=store)
    job_dir = backend.prepare(JobSpec(model=str(tiny_chat_model), training_file=train, name="early", job_id="ftjob_early"))
    provider_id = f"lora-{job_dir.name}"
    assert backend.status(provider_id).status == "validating_files"
    assert jobfiles.read_json(job_dir / jobfiles.PROCESS)["attempt"] == 0  # nothing launched by the poll
    assert not any("exited before finishing" in e["message"] for e in jobfiles.read_events(job_dir))
    # A prepared job whose launch never came (the process that prepared it died) is launched by a later poll.
    info = jobfiles.read_json(job_dir / jobfiles.PROCESS)
    jobfiles.write_json(job_dir / jobfiles.PROCESS, dict(info, launching_at=info["launching_at"] - 120))
    backend.status(provider_id)
    assert jobfiles.read_json(job_dir / jobfiles.PROCESS)["attempt"] == 2 and jobfiles.process_alive(job_dir)
    jobfiles.signal_group(job_dir, signal.SIGKILL)
    store.close()
