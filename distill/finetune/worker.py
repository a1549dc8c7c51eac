"""The LoRA job process: ``python -m protege.distill.finetune.worker JOB_DIR``.

Training runs here, never in the server: the backend starts this module in its own process group
with torch/OpenMP threads capped, and it reports only through files in the job directory
(:mod:`.jobfiles`): progress (step, loss, ETA) as events and ``status.json``, the finished adapter
(and, when asked, the merged model) under ``output/``. The server records the student from there.

TRL owns the loops: ``SFTTrainer`` for chat examples (prompt/completion rows, so the loss covers the
answers only) and ``DPOTrainer`` for preference pairs, both with a PEFT LoRA config. Trainer
checkpoints every ``save_steps``; a process killed mid-run is started again by the backend and
resumes from the last one. With several CUDA devices this process re-launches itself under
``accelerate launch`` (data parallel, TRL's own launcher); only rank 0 writes job files.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protege.distill.finetune import jobfiles
from protege.distill.finetune.jobfiles import EventLog, read_json, write_json
from protege.distill.finetune import base as base_mod, data, hyperparameters
from protege.distill.finetune.interface import FineTuneError

MAX_VALIDATION_BATCH = 8
MODULE = "protege.distill.finetune.worker"  # not __name__: run with -m, this module is __main__


class Job:
    """The job directory as this process sees it: spec in, status and events out."""

    def __init__(self, job_dir: Path) -> None:
        self.dir = Path(job_dir).resolve()
        self.spec: dict[str, Any] = read_json(self.dir / jobfiles.SPEC) or {}
        if not self.spec:
            raise SystemExit(f"no {jobfiles.SPEC} in {self.dir}")
        self.rank0 = int(os.environ.get("RANK", "0")) == 0
        self.log = EventLog(self.dir, self.spec["job_key"])
        self.state: dict[str, Any] = read_json(self.dir / jobfiles.STATUS) or {}
        self.state.setdefault("status", "validating_files")

    def event(self, message: str, **kw: Any) -> None:
        if self.rank0:
            self.log.add(message, **kw)

    def update(self, **fields: Any) -> None:
        self.state.update(fields)
        self.state["updated_at"] = time.time()
        if self.rank0:
            write_json(self.dir / jobfiles.STATUS, self.state)

    def fail(self, code: str, message: str) -> None:
        self.event(message, level="error")
        self.update(status="failed", error={"code": code, "message": message, "param": None})


def _cap_threads(threads: int | None) -> None:
    """The job's thread cap, shared among the data-parallel CPU ranks of this machine."""
    if threads:
        import torch

        ranks = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE") or 1)
        torch.set_num_threads(max(1, int(threads) // max(1, ranks)))


def _on_sigterm(job: Job):
    def handler(signum, frame):  # noqa: ARG001
        # Leave now (a training step can take seconds on a CPU). Cancelled: record it. Any other
        # SIGTERM (a shutdown): leave the status open, so the job resumes from its checkpoint.
        if job.state.get("status") in ("succeeded", "failed"):
            os._exit(0)
        if (job.dir / jobfiles.CANCEL).exists():
            job.event("Fine-tuning job cancelled")
            job.update(status="cancelled")
            os._exit(0)
        job.event("The training process was stopped (SIGTERM); it resumes from its last checkpoint when the job is next looked at", level="warn")
        os._exit(143)

    return handler


def _validation_generations(model, tokenizer, rows: list[dict[str, Any]], references: list[str], *, max_new_tokens: int, tools: bool) -> dict[str, Any]:
    """Greedy answers to the validation prompts: exact match (stripped) and label accuracy
    (Protege's label normalisation, so ``{"label": "x"}`` and ``x`` agree)."""
    import json

    import torch

    from protege.distill.finetune.local_student import normalise_label

    if not rows:
        return {}
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    device = next(model.parameters()).device
    try:
        for start in range(0, len(rows), MAX_VALIDATION_BATCH):
            batch = rows[start : start + MAX_VALIDATION_BATCH]
            texts = [
                tokenizer.apply_chat_template(
                    r["prompt"], tools=json.loads(r["tools"]) if tools and r.get("tools") else None, add_generation_prompt=True, tokenize=False
                )
                for r in batch
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                out = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
                )
            for row in out[:, enc["input_ids"].shape[1] :]:
                outputs.append(tokenizer.decode(row, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    exact = sum(a.strip() == b.strip() for a, b in zip(outputs, references))
    labels = sum(normalise_label(a) == normalise_label(b) for a, b in zip(outputs, references))
    n = len(outputs)
    return {
        "validation_generations": n,
        "validation_exact_match": round(exact / n, 4),
        "validation_accuracy": round(labels / n, 4),
        "validation_samples": [{"reference": r, "answer": a} for r, a in list(zip(references, outputs))[:5]],
    }


def _progress_callback(job: Job):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Step, loss and ETA into the job's events and status file; a checkpoint event per save."""

        def __init__(self) -> None:
            self.t0 = time.monotonic()
            self.first_step: int | None = None

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.monotonic()
            self.first_step = state.global_step
            if state.global_step:
                job.event(f"Resumed from the checkpoint at step {state.global_step}", data={"step": state.global_step})
            job.update(status="running", step=state.global_step, total_steps=state.max_steps)

        def _eta(self, state) -> float | None:
            done = state.global_step - (self.first_step or 0)
            if done <= 0:
                return None
            return (time.monotonic() - self.t0) / done * max(0, state.max_steps - state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            loss = logs.get("loss")
            if loss is None:
                return
            eta = self._eta(state)
            job.update(step=state.global_step, total_steps=state.max_steps, train_loss=float(loss), eta_seconds=None if eta is None else round(eta, 1))
            eta_text = f", ETA {eta:.0f} s" if eta is not None else ""
            job.event(
                f"Step {state.global_step}/{state.max_steps}: training loss={float(loss):.4f}{eta_text}",
                type_="metrics",
                data={
                    "step": state.global_step,
                    "total_steps": state.max_steps,
                    "train_loss": float(loss),
                    "learning_rate": logs.get("learning_rate"),
                    "epoch": logs.get("epoch"),
                    "eta_seconds": None if eta is None else round(eta, 1),
                },
            )

        def on_step_end(self, args, state, control, **kw):
            if (job.dir / jobfiles.CANCEL).exists():
                control.should_training_stop = True

        def on_save(self, args, state, control, **kw):
            job.event(f"Checkpoint saved at step {state.global_step}", data={"step": state.global_step})

    return Progress()


def _prepare_base(job: Job) -> tuple[Path | str, str | None]:
    """(what to load, data-dir-relative base_dir or None)."""
    given = job.spec["base_model"]
    kind = base_mod.kind(given)
    data_dir = Path(job.spec["data_dir"])
    if kind == "gguf":
        path, made = base_mod.dequantise_gguf(given, data_dir / "bases", log=job.event)
        if not made:
            job.event(f"Using the dequantised base {path.name} (cached from an earlier job)")
        return path, path.relative_to(data_dir).as_posix()
    return (str(Path(given).expanduser().resolve()) if kind == "dir" else given), None


def _datasets(job: Job, tokenizer) -> tuple[Any, Any, Any, Any, bool]:
    tools_ok = data.template_supports_tools(tokenizer)
    read = data.dpo_rows if job.spec["method"] == "dpo" else data.sft_rows
    train = read(job.spec["training_file"], tools_ok=tools_ok)
    val = read(job.spec["validation_file"], tools_ok=tools_ok, param="validation_file") if job.spec.get("validation_file") else None
    skipped = train.skipped_tools + (val.skipped_tools if val else 0)
    counts = {
        "train_examples": len(train.rows),
        "validation_examples": len(val.rows) if val else 0,
        "tool_examples": train.tool_rows + (val.tool_rows if val else 0),
        "tool_examples_skipped": skipped,
        "examples_skipped_empty": train.skipped_other + (val.skipped_other if val else 0),
    }
    job.event(
        f"Files validated: {counts['train_examples']} training, {counts['validation_examples']} validation examples",
        data=counts,
    )
    if skipped:
        job.event(
            f"Skipped {skipped} tool-call examples: the base model's chat template does not render tools and tool calls",
            level="warn",
            data={"tool_examples_skipped": skipped},
        )
    if not train.rows:
        raise FineTuneError("no usable training examples" + (" (all were tool-call examples the template cannot render)" if skipped else ""), code="invalid_training_file")
    job.update(counts=counts, tools=tools_ok and counts["tool_examples"] > 0)
    return train, val, counts, tools_ok, bool(val and val.rows)


@dataclass
class Built:
    """A ready trainer and what the rest of the job needs to know about its data and base."""

    trainer: Any
    tokenizer: Any
    hp: dict[str, Any]
    counts: dict[str, Any]
    val_rows: Any
    tools_ok: bool
    has_val: bool
    base_dir: str | None
    cuda: bool


def build(job: Job) -> Built:
    """Base, data and TRL trainer for the job (no training yet; tests inspect what TRL built)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = job.spec
    job.update(status="validating_files")
    load_from, base_dir = _prepare_base(job)
    tokenizer = AutoTokenizer.from_pretrained(load_from)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_rows, val_rows, counts, tools_ok, has_val = _datasets(job, tokenizer)
    hp = hyperparameters.resolve(spec.get("hyperparameters") or {}, n_examples=len(train_rows.rows), seed=spec.get("seed"))
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(load_from, dtype=dtype)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    peft_config = LoraConfig(
        r=int(hp["lora_r"]),
        lora_alpha=hp["lora_alpha"],
        lora_dropout=float(hp["lora_dropout"]),
        target_modules=hyperparameters.target_modules(hp["target_modules"]),
        task_type="CAUSAL_LM",
    )
    ckpt_dir = job.dir / jobfiles.CHECKPOINTS
    common = dict(
        output_dir=str(ckpt_dir),
        num_train_epochs=float(hp["n_epochs"]),
        max_steps=int(hp["max_steps"]),
        per_device_train_batch_size=int(hp["batch_size"]),
        per_device_eval_batch_size=int(hp["batch_size"]),
        gradient_accumulation_steps=int(hp["gradient_accumulation_steps"]),
        learning_rate=float(hp["learning_rate"]),
        warmup_steps=float(hp["warmup_ratio"]),  # transformers 5: a value below 1 is a ratio
        weight_decay=float(hp["weight_decay"]),
        lr_scheduler_type="linear",
        logging_steps=int(hp["logging_steps"]),
        save_strategy="steps",
        save_steps=int(hp["save_steps"]),
        save_total_limit=2,
        eval_strategy="no",
        seed=int(hp["seed"]),
        data_seed=int(hp["seed"]),
        bf16=cuda,
        use_cpu=not cuda,
        report_to=[],
        disable_tqdm=True,
        max_length=int(hp["max_length"]),
        dataloader_num_workers=0,
    )
    train_ds = Dataset.from_list(train_rows.rows)
    eval_ds = Dataset.from_list(val_rows.rows) if has_val else None
    if spec["method"] == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(beta=float(hp["beta"]), **common)
        trainer = DPOTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer, peft_config=peft_config)
    else:
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(completion_only_loss=True, packing=False, **common)
        trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer, peft_config=peft_config)
    return Built(trainer, tokenizer, hp, counts, val_rows, tools_ok, has_val, base_dir, cuda)


def train(job: Job) -> None:
    import torch

    spec = job.spec
    built = build(job)
    trainer, tokenizer, hp, counts, val_rows = built.trainer, built.tokenizer, built.hp, built.counts, built.val_rows
    tools_ok, has_val, base_dir, cuda = built.tools_ok, built.has_val, built.base_dir, built.cuda
    ckpt_dir = job.dir / jobfiles.CHECKPOINTS
    trainer.add_callback(_progress_callback(job))
    last = jobfiles.last_checkpoint(job.dir)
    for partial in ckpt_dir.glob("checkpoint-*"):  # half-written by a killed process: not a resume point
        if last is None or (partial != last and partial.name.rsplit("-", 1)[-1].isdigit() and int(partial.name.rsplit("-", 1)[-1]) > int(last.name.rsplit("-", 1)[-1])):
            shutil.rmtree(partial, ignore_errors=True)
    resume = str(last) if last else None
    job.event(
        f"Training {spec['method']} LoRA (r={hp['lora_r']}, alpha={hp['lora_alpha']}) on {'CUDA bf16' if cuda else 'CPU fp32'}"
        + (f", {torch.get_num_threads()} threads" if not cuda else "")
        + (f", {trainer.args.world_size} data-parallel processes" if trainer.args.world_size > 1 else "")
        + (f"; resuming from {Path(resume).name}" if resume else ""),
        data={"hyperparameters": hp, "device": "cuda" if cuda else "cpu", "resume_from": Path(resume).name if resume else None},
    )
    t0 = time.monotonic()
    out = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.monotonic() - t0
    if (job.dir / jobfiles.CANCEL).exists():
        job.event("Fine-tuning job cancelled")
        job.update(status="cancelled")
        return
    ev = trainer.evaluate() if has_val else {}  # every rank: a data-parallel evaluation gathers across them
    if not trainer.is_world_process_zero():
        return
    metrics: dict[str, Any] = {
        "train_loss": round(float(out.training_loss), 6),
        "train_steps": int(trainer.state.global_step),
        "train_seconds": round(train_seconds, 2),
        "train_examples": counts["train_examples"],
        "train_processes": int(trainer.args.world_size),
    }
    if has_val:
        if "eval_loss" in ev:
            metrics["validation_loss"] = round(float(ev["eval_loss"]), 6)
        for key in ("eval_rewards/accuracies", "eval_rewards/margins"):
            if key in ev:
                metrics["validation_" + key.split("/", 1)[1]] = round(float(ev[key]), 6)
        cap = int(hp["eval_generations"])
        if cap:
            rows = val_rows.rows[:cap]
            refs = data.completion_texts(rows) if spec["method"] != "dpo" else ["".join(m.get("content") or "" for m in r["chosen"]) for r in rows]
            job.event(f"Scoring {len(rows)} validation examples by greedy generation")
            metrics.update(
                _validation_generations(trainer.model, tokenizer, rows, refs, max_new_tokens=int(hp["eval_max_new_tokens"]), tools=tools_ok)
            )
    job.event(
        "Training metrics: " + ", ".join(f"{k}={v}" for k, v in metrics.items() if not isinstance(v, list)),
        type_="metrics",
        data={k: v for k, v in metrics.items() if not isinstance(v, list)},
    )

    output = job.dir / jobfiles.OUTPUT
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir()
    trainer.model.save_pretrained(output / "adapter")
    tokenizer.save_pretrained(output / "tokenizer")
    merged_dir = None
    if hp["merge"]:
        job.event("Merging the adapter into the base weights (safetensors)")
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(output / "merged", safe_serialization=True)
        tokenizer.save_pretrained(output / "merged")
        merged_dir = "merged"
    files = base_mod.hash_tree(output)
    result = {
        "base_model": spec["base_model"],
        "base_dir": base_dir,
        "adapter_dir": "adapter",
        "merged_dir": merged_dir,
        "tokenizer_dir": "tokenizer",
        "files": files,
        "method": spec["method"],
        "hyperparameters": hp,
        "dataset": {**(spec.get("dataset") or {}), **counts},
        "metrics": metrics,
        "tools": bool(tools_ok and counts["tool_examples"] > 0),
        "tools_template": bool(tools_ok),
        "device": "cuda" if cuda else "cpu",
    }
    if base_mod.kind(spec["base_model"]) == "gguf" and base_dir:
        result["base_source_sha256"] = (read_json(Path(spec["data_dir"]) / base_dir / base_mod.BASE_INFO) or {}).get("gguf_sha256")
    job.update(status="succeeded", result=result, metrics=metrics, step=int(trainer.state.global_step), eta_seconds=0)
    job.event("The job has successfully completed")


def _ranks(job: Job) -> tuple[int, bool]:
    """(data-parallel processes, on CUDA): the ``processes`` hyperparameter, else every CUDA device."""
    import torch

    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    wanted = int((job.spec.get("hyperparameters") or {}).get("processes") or 0)
    if n_cuda:
        return (min(wanted, n_cuda) if wanted else n_cuda), True
    return max(1, wanted), False


def _maybe_accelerate(job: Job) -> int | None:
    """Several ranks and not yet under a launcher: re-run this module under ``accelerate launch``
    (data parallel, TRL's own launcher), so the training code is the same in every rank. Its
    multi-process launcher starts the ranks with torch.distributed; on a machine without CUDA the
    Trainer's ``use_cpu`` makes them CPU ranks over gloo (how the tests run it)."""
    if os.environ.get("LOCAL_RANK") is not None or os.environ.get("PROTEGE_NO_ACCELERATE"):
        return None
    n, cuda = _ranks(job)
    if n <= 1:
        return None
    import socket

    with socket.socket() as sock:  # a free rendezvous port: two jobs at once must not share one
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    job.event(f"Training data-parallel on {n} {'CUDA devices' if cuda else 'CPU processes (gloo)'} through accelerate launch", data={"processes": n, "device": "cuda" if cuda else "cpu"})
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n), "--num_machines", "1",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--mixed_precision", "bf16" if cuda else "no",
        "--dynamo_backend", "no", "-m", MODULE, str(job.dir),
    ]
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m protege.distill.finetune.worker JOB_DIR", file=sys.stderr)
        return 2

    job = Job(Path(argv[0]))
    if job.state.get("status") in ("succeeded", "failed", "cancelled"):
        return 0
    signal.signal(signal.SIGTERM, _on_sigterm(job))
    _cap_threads(job.spec.get("threads"))
    try:
        code = _maybe_accelerate(job)
        if code is not None:
            job.state = read_json(job.dir / jobfiles.STATUS) or job.state
            if code != 0 and job.state.get("status") not in ("succeeded", "failed", "cancelled"):
                job.fail("training_error", f"accelerate launch exited with status {code}")
            return code
        train(job)
    except FileNotFoundError as exc:
        job.fail("file_not_found", str(exc))
        return 1
    except FineTuneError as exc:
        job.fail(exc.code or "invalid_training_file", exc.message)
        return 1
    except Exception as exc:  # noqa: BLE001 - the job must record why it died
        import traceback

        traceback.print_exc()
        job.fail("training_error", f"{exc.__class__.__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
