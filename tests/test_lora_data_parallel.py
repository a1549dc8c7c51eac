"""Data-parallel LoRA training through accelerate, on CPU ranks.

``processes: 2`` makes the job process re-run itself under ``accelerate launch`` with two ranks: on
this CUDA-less machine they are CPU ranks over gloo, the same launch and training code a multi-GPU
machine runs. The job must succeed with both ranks really training (world size 2), rank 0 alone
writing the job's events and status, the steps counted once and the adapter saved once.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from protege.distill.finetune import jobfiles, jobs
from protege.store import Store
from tests.fixtures.jsonl import write_jsonl
from tests.fixtures.lora_train import all_events, sft_examples

pytest.importorskip("trl")
pytest.importorskip("accelerate")


# DuckDB only: training time, not the store, is this test's cost; the LoRA job's records, its student registry and serving run on PostgreSQL in test_lora_backend.py::test_dpo_job_on_preference_pairs.
@pytest.mark.backends("duckdb")
def test_two_cpu_ranks_train_one_student(tmp_path, tiny_chat_model):
    store = Store(str(tmp_path / "db.duckdb"))
    train = write_jsonl(tmp_path / "t.jsonl", sft_examples(16))
    val = write_jsonl(tmp_path / "v.jsonl", sft_examples(4, offset=50))
    job = jobs.start_job(
        store, backend="lora", model=str(tiny_chat_model), training_file=train, validation_file=val, name="pair",
        hyperparameters={"max_steps": 4, "batch_size": 2, "processes": 2, "save_steps": 2, "eval_max_new_tokens": 2},
        backend_options={"threads": 2},
    )
    job = jobs.wait_job(store, job["id"], interval=0.2, timeout=300)
    assert job["status"] == "succeeded", job["error"]
    metrics = job["result"]["metrics"]
    assert metrics["train_processes"] == 2  # torch.distributed really ran two ranks
    assert metrics["train_steps"] == 4 and metrics["validation_loss"] > 0  # evaluation gathered across both ranks

    messages = [e["message"] for e in all_events(store, job["id"])]
    assert sum("data-parallel on 2 CPU processes (gloo) through accelerate launch" in m for m in messages) == 1
    assert sum(m.startswith("Training supervised LoRA") for m in messages) == 1  # rank 0 only
    assert "2 data-parallel processes" in next(m for m in messages if m.startswith("Training supervised LoRA"))
    steps = [int(m.group(1)) for m in (re.match(r"Step (\d+)/4: training loss", x) for x in messages) if m]
    assert steps == [1, 2, 3, 4]  # counted once, not once per rank
    assert sum(m == "The job has successfully completed" for m in messages) == 1

    job_dir = Path(store.data_dir) / "finetune" / job["id"]
    assert (jobfiles.read_json(job_dir / jobfiles.STATUS) or {})["step"] == 4
    assert [m for m in messages if m.startswith("Checkpoint saved")] == ["Checkpoint saved at step 2", "Checkpoint saved at step 4"]
    from protege.store import jobs as store_jobs

    assert [s["version"] for s in store_jobs.list_students(store, "pair")] == [1]  # saved and recorded once
    manifest = store_jobs.get_student(store, "pair")["manifest"]
    assert "adapter/adapter_model.safetensors" in manifest["files"] and manifest["hyperparameters"]["processes"] == 2
