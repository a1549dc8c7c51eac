"""The LoRA backend on a tiny random chat model: what TRL is given (answer-only loss, tool calls,
hyperparameters), a real job process started through the CLI (progress, manifest, hashes), DPO,
and export for transformers / vLLM / Ollama."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protege.distill.finetune import jobs
from protege.distill.finetune.backends import FineTuneError, JobSpec
from protege.distill.finetune import data, hyperparameters, worker
from protege.distill.finetune.base import sha256_file
from protege.distill.finetune.lora import LoraBackend
from protege.store import Store
from protege.store import jobs as store_jobs
from tests.fixtures.jsonl import write_jsonl
from tests.fixtures.lora_train import TOOL_EXAMPLE, dpo_pairs, sft_examples

pytest.importorskip("trl")

TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message.tool_calls %}{% for c in message.tool_calls %}<tool_call>{{ c.function.name }} {{ c.function.arguments }}</tool_call>{% endfor %}"
    "{% else %}{{ message['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def cli(args: list[str], db: str):
    from protege.cli import app

    return CliRunner().invoke(app, ["--db", db, *args])


@pytest.fixture(scope="module")
def tools_model(tiny_chat_model, tmp_path_factory) -> Path:
    """The tiny model with a chat template that renders tools and tool calls."""
    folder = tmp_path_factory.mktemp("tiny-tools") / "model"
    shutil.copytree(tiny_chat_model, folder)
    (folder / "chat_template.jinja").write_text(TOOLS_TEMPLATE)
    return folder


def test_hyperparameters_are_checked_and_resolved():
    hp = hyperparameters.validate("supervised", {"lr": "5e-4", "lora_r": "4", "merge": "true", "target_modules": ["q_proj", "v_proj"], "n_epochs": "auto"})
    assert hp == {"learning_rate": 5e-4, "lora_r": 4, "merge": True, "target_modules": "q_proj,v_proj", "n_epochs": "auto"}
    full = hyperparameters.resolve(hp, n_examples=50, seed=7)
    assert full["n_epochs"] == 3 and full["seed"] == 7 and full["lora_alpha"] == 32 and full["max_length"] == 512
    assert hyperparameters.target_modules(full["target_modules"]) == ["q_proj", "v_proj"]
    assert hyperparameters.resolve({"learning_rate_multiplier": 0.5}, n_examples=5000)["learning_rate"] == pytest.approx(5e-4)
    for bad, param in (({"lora_r": 0}, "lora_r"), ({"lora_rank": 8}, "lora_rank"), ({"merge": "maybe"}, "merge"), ({"beta": 0.1}, "beta"), ({"lora_r": 2.5}, "lora_r")):
        with pytest.raises(FineTuneError) as err:
            hyperparameters.validate("supervised", bad)
        assert err.value.param == f"hyperparameters.{param}"


def test_bad_requests_are_refused_before_anything_is_recorded(make_db, tmp_path, tiny_chat_model):
    store = Store(make_db("db"))
    train = write_jsonl(tmp_path / "t.jsonl", sft_examples(4))
    cases = [
        ({"model": str(tmp_path / "missing.gguf")}, "model"),
        ({"model": str(tmp_path)}, "model"),  # a directory without config.json
        ({"model": None}, "model"),
        ({"model": str(tiny_chat_model), "hyperparameters": {"lora_rank": 8}}, "hyperparameters.lora_rank"),
        ({"model": str(tiny_chat_model), "name": "bad name!"}, "name"),
    ]
    for kwargs, param in cases:
        with pytest.raises(FineTuneError) as err:
            jobs.start_job(store, backend="lora", training_file=train, **kwargs)
        assert err.value.param == param, kwargs
    assert store_jobs.list_jobs(store)[0] == []  # nothing recorded, no process started
    assert not (Path(store.data_dir) / "finetune").exists()


def test_examples_become_prompt_completion_rows_and_tool_calls_need_a_tools_template(tmp_path, tiny_chat_model, tools_model):
    from transformers import AutoTokenizer

    path = write_jsonl(tmp_path / "t.jsonl", sft_examples(3) + [TOOL_EXAMPLE])
    plain = data.sft_rows(path, tools_ok=data.template_supports_tools(AutoTokenizer.from_pretrained(tiny_chat_model)))
    assert len(plain.rows) == 3 and plain.skipped_tools == 1 and plain.tool_rows == 0
    assert plain.rows[0]["completion"] == [{"role": "assistant", "content": "positive"}]
    assert [m["role"] for m in plain.rows[0]["prompt"]] == ["system", "user"]
    assert data.template_supports_tools(AutoTokenizer.from_pretrained(tools_model))
    rich = data.sft_rows(path, tools_ok=True)
    assert len(rich.rows) == 4 and rich.tool_rows == 1 and rich.skipped_tools == 0
    assert rich.rows[3]["completion"][0]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert json.loads(rich.rows[3]["tools"])[0]["function"]["name"] == "get_weather"
    dpo = data.dpo_rows(write_jsonl(tmp_path / "d.jsonl", dpo_pairs(2)), tools_ok=False)
    assert dpo.rows[0]["chosen"] == [{"role": "assistant", "content": "positive"}] and dpo.rows[0]["rejected"][0]["content"] == "negative"
    with pytest.raises(FineTuneError):
        data.sft_rows(write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "no answer"}]}]), tools_ok=False)


def _built(tmp_path, model, rows, **hp):
    store = Store(str(tmp_path / "db.duckdb"))
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    job_dir = LoraBackend(store, threads=1).prepare(JobSpec(model=str(model), training_file=train, name="unit", job_id="ftjob_unit", hyperparameters=hp))
    return worker.build(worker.Job(job_dir))


# DuckDB only: training time, not the store, is this test's cost; the LoRA job's records, its student registry and serving run on PostgreSQL in test_dpo_job_on_preference_pairs.
@pytest.mark.backends("duckdb")
def test_the_loss_covers_the_assistant_answer_only(tmp_path, tiny_chat_model):
    built = _built(tmp_path, tiny_chat_model, sft_examples(4), lora_r=4, lora_alpha=8, lora_dropout=0.0, target_modules="q_proj,v_proj", max_steps=3, batch_size=2)
    ds = built.trainer.train_dataset
    tok = built.tokenizer
    for i, row in enumerate(ds):
        learned = tok.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100])
        answer = sft_examples(4)[i]["messages"][-1]["content"]
        assert learned == answer + "<|im_end|>\n"  # the answer and its end-of-turn, nothing of the prompt
        assert row["labels"].count(-100) > 10
    # Hyperparameters reach TRL and PEFT.
    args = built.trainer.args
    assert args.max_steps == 3 and args.per_device_train_batch_size == 2 and args.learning_rate == hyperparameters.DEFAULT_LEARNING_RATE
    peft_cfg = built.trainer.model.peft_config["default"]
    assert peft_cfg.r == 4 and peft_cfg.lora_alpha == 8 and set(peft_cfg.target_modules) == {"q_proj", "v_proj"}
    assert built.counts["tool_examples_skipped"] == 0


# DuckDB only: training time, not the store, is this test's cost; the LoRA job's records, its student registry and serving run on PostgreSQL in test_dpo_job_on_preference_pairs.
@pytest.mark.backends("duckdb")
def test_tool_calls_are_trained_where_the_template_renders_them(tmp_path, tools_model):
    built = _built(tmp_path, tools_model, sft_examples(2) + [TOOL_EXAMPLE], max_steps=1)
    assert built.tools_ok and built.counts["tool_examples"] == 1
    tok = built.tokenizer
    row = built.trainer.train_dataset[2]
    learned = tok.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100])
    assert learned.startswith('<tool_call>get_weather {"city": "Paris"}</tool_call>')
    assert "Tools:" in tok.decode(row["input_ids"])  # the tool definition is in the (masked) prompt


# On DuckDB only (a module-scoped store, shared by the tests below: the backend parameter is per test); a whole job on PostgreSQL: test_dpo_job_on_preference_pairs.
@pytest.fixture(scope="module")
def sft_job(tiny_chat_model, tmp_path_factory):
    """One real job process, started with the CLI and --wait: 6 steps, merged model, a tool example."""
    folder = tmp_path_factory.mktemp("lora-sft")
    db = str(folder / "db.duckdb")
    train = write_jsonl(folder / "train.jsonl", sft_examples(12) + [TOOL_EXAMPLE])
    val = write_jsonl(folder / "val.jsonl", sft_examples(4, offset=100))
    r = cli(
        ["finetune", "start", "--backend", "lora", "--model", str(tiny_chat_model), "-t", train, "-v", val, "--name", "tiny",
         "--max-steps", "6", "--batch-size", "4", "--lora-r", "4", "--lora-alpha", "8", "--learning-rate", "0.002",
         "--save-steps", "3", "--merge", "--hp", "eval_max_new_tokens=4", "--seed", "3", "--wait", "--poll-interval", "0.3"],
        db,
    )
    assert r.exit_code == 0, r.output
    store = Store(db)
    job = store_jobs.list_jobs(store)[0][0]
    store.close()
    return {"db": db, "folder": folder, "output": r.output, "job": job}


def test_cli_job_trains_records_a_student_with_a_hashed_manifest(sft_job):
    job = sft_job["job"]
    assert job["status"] == "succeeded" and job["backend"] == "lora"
    assert job["fine_tuned_model"] == "protege/tiny@v1"
    assert "training" in sft_job["output"] and "6/6" in sft_job["output"]  # the progress bar
    store = Store(sft_job["db"])
    row = store_jobs.get_student(store, "tiny")
    data_dir = Path(store.data_dir)
    assert row["path"] == "students/tiny/v1/manifest.json" == row["manifest_path"]
    manifest_path = data_dir / row["path"]
    assert sha256_file(manifest_path) == row["sha256"]
    m = json.loads(manifest_path.read_text())
    assert m["kind"] == "lora" and m["model"] == "protege/tiny@v1" and m["version"] == 1 and m["job_id"] == job["id"]
    assert m["adapter_dir"] == "adapter" and m["merged_dir"] == "merged" and m["tokenizer_dir"] == "tokenizer" and m["base_dir"] is None
    assert m["method"] == "supervised" and m["tools"] is False
    assert m["hyperparameters"]["lora_r"] == 4 and m["hyperparameters"]["learning_rate"] == 0.002 and m["hyperparameters"]["seed"] == 3
    assert m["dataset"]["train_examples"] == 12 and m["dataset"]["tool_examples_skipped"] == 1
    assert m["dataset"]["training_sha256"] == sha256_file(sft_job["folder"] / "train.jsonl")
    assert m["metrics"]["train_steps"] == 6 and m["metrics"]["train_loss"] > 0 and m["metrics"]["validation_loss"] > 0
    assert m["metrics"]["validation_generations"] == 4 and 0 <= m["metrics"]["validation_exact_match"] <= 1
    assert "merged/model.safetensors" in m["files"] and "adapter/adapter_model.safetensors" in m["files"] and "tokenizer/chat_template.jinja" in m["files"]
    for rel, digest in m["files"].items():
        assert sha256_file(manifest_path.parent / rel) == digest, rel
    adapter_cfg = json.loads((manifest_path.parent / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 4 and adapter_cfg["lora_alpha"] == 8
    events = [e["message"] for e in store_jobs.list_events(store, job["id"], limit=100)[0]]
    assert any(e.startswith("Step 6/6: training loss=") for e in events)
    assert any("Skipped 1 tool-call examples" in e for e in events)
    assert "New LoRA student created: protege/tiny@v1" in events
    store.close()
    r = cli(["finetune", "status", job["id"]], sft_job["db"])
    assert r.exit_code == 0 and "protege/tiny@v1" in r.output and "train_loss=" in r.output and "1 tool-call examples skipped" in r.output


def _greedy(model, tok, prompt: str, n: int = 6) -> list[int]:
    import torch

    enc = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, enc["input_ids"].shape[1] :].tolist()


def test_exports_for_transformers_vllm_and_ollama(sft_job, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from protege.distill.finetune import export

    db = sft_job["db"]
    out = tmp_path / "hf"
    r = cli(["finetune", "export", sft_job["job"]["id"], "--format", "hf", "--out", str(out)], db)
    assert r.exit_code == 0, r.output
    assert (out / "merged" / "model.safetensors").is_file() and (out / "merged" / "chat_template.jinja").is_file()
    assert "AutoModelForCausalLM.from_pretrained" in (out / "README.md").read_text()
    exported = AutoModelForCausalLM.from_pretrained(out / "merged")
    tok = AutoTokenizer.from_pretrained(out / "merged")
    store = Store(db)
    student = export.resolve_student(store, "protege/tiny@v1")
    served, served_tok = export.load_model(student, merged=False)  # base + adapter, as serving loads it without merged_dir
    for prompt in ("The pizza was great", "Cold food and rude staff"):
        assert _greedy(exported, tok, prompt) == _greedy(served, served_tok, prompt)

    out = tmp_path / "vllm"
    r = cli(["finetune", "export", "protege/tiny@v1", "--format", "vllm", "--out", str(out)], db)
    assert r.exit_code == 0, r.output
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "tokenizer" / "tokenizer.json").is_file()
    readme = (out / "README.md").read_text()
    assert f"--enable-lora --lora-modules tiny={(out / 'adapter').resolve()}" in readme and "vllm serve" in readme

    out = tmp_path / "ollama"
    r = cli(["finetune", "export", "protege/tiny", "--format", "ollama", "--out", str(out), "--json"], db)
    assert r.exit_code == 0, r.output
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.splitlines()[1].startswith("FROM ") and f"ADAPTER {(out / 'adapter').resolve()}" in modelfile  # llama family: adapter
    assert "ollama create tiny" in (out / "README.md").read_text() and "Llama, Mistral and Gemma" in (out / "README.md").read_text()

    r = cli(["finetune", "export", "protege/nobody", "--format", "hf", "--out", str(tmp_path / "x")], db)
    assert r.exit_code != 0 and "no student protege/nobody" in r.output
    r = cli(["finetune", "export", "protege/tiny", "--format", "gguf", "--out", str(tmp_path / "y")], db)
    assert r.exit_code != 0 and "format must be one of" in r.output
    # A tampered artifact is refused.
    (Path(store.data_dir) / "students" / "tiny" / "v1" / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(FineTuneError) as err:
        export.resolve_student(store, "protege/tiny@v1")
    assert err.value.code == "artifact_tampered"
    store.close()


def test_dpo_job_on_preference_pairs(make_db, tmp_path, tiny_chat_model):
    """A whole job on each store backend: recorded, its process launched and followed to the end
    through the store (wait_job), and its student recorded in the store's registry."""
    store = Store(make_db("db"))
    train = write_jsonl(tmp_path / "pairs.jsonl", dpo_pairs(8))
    job = jobs.start_job(store, backend="lora", model=str(tiny_chat_model), training_file=train, method="dpo", name="prefs",
                         hyperparameters={"max_steps": 3, "batch_size": 4, "beta": 0.2}, settings=None)
    job = jobs.wait_job(store, job["id"], interval=0.3, timeout=240)
    assert job["status"] == "succeeded", job["error"]
    m = store_jobs.get_student(store, "prefs")["manifest"]
    assert m["method"] == "dpo" and m["hyperparameters"]["beta"] == 0.2 and m["metrics"]["train_steps"] == 3
    assert m["metrics"]["train_loss"] > 0
