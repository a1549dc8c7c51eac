"""`protege finetune start|status|cancel|list|events|export`: fine-tune jobs from the command line.

A local-student job started here trains in this process; without ``--wait`` the job record is
printed first and the command returns when training ends (the process cannot leave a thread behind).
A ``lora`` job trains in a process of its own: the command returns at once (``--wait`` shows a
progress bar) and ``finetune status`` reads its progress.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, List, Optional

import typer

from protege import clikit

from protege.distill.finetune import jobs
from protege.distill.finetune.interface import FineTuneError
from protege.distill.finetune.export import export as do_export

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Fine-tune jobs (OpenAI, Azure OpenAI, local student, LoRA).")


def _parse_metadata(pairs: list[str] | None) -> dict[str, str] | None:
    return clikit.parse_pairs(pairs) or None

def _num(value: str | None) -> Any:
    """'auto' stays a string; numbers become numbers (the backend checks ranges)."""
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            clikit.fail(f"expected a number or 'auto', got {value!r}")


def _line(job: dict[str, Any]) -> str:
    model = job.get("fine_tuned_model") or "-"
    acc = ((job.get("result") or {}).get("metrics") or {}).get("validation_accuracy")
    extra = f"  val_acc={acc}" if acc is not None else ""
    return f"{job['id']}  {job['backend']:<6} {job['status']:<16} {job['model']}  -> {model}{extra}"


def _show(store, job: dict[str, Any], as_json: bool) -> None:
    view = jobs.job_view(store, job)
    if as_json:
        clikit.print_json(view)
        return
    typer.echo(_line(view))
    if view.get("error"):
        typer.echo(f"  error: {view['error'].get('message')}")
    metrics = (view.get("result") or {}).get("metrics") or {}
    if metrics.get("per_class"):
        for label, m in metrics["per_class"].items():
            typer.echo(f"  {label:<24} acc={m['accuracy']:.3f}  n={m['support']}")
    result = view.get("result") or {}
    if result.get("total_steps") and view["status"] not in ("succeeded", "failed", "cancelled"):
        eta = result.get("eta_seconds")
        loss = result.get("train_loss")
        typer.echo(
            f"  step {result.get('step', 0)}/{result['total_steps']}"
            + (f"  loss={loss:.4f}" if isinstance(loss, (int, float)) else "")
            + (f"  ETA {eta:.0f} s" if isinstance(eta, (int, float)) else "")
        )
    if view["backend"] == "lora" and metrics:
        typer.echo("  " + "  ".join(f"{k}={v}" for k, v in metrics.items() if isinstance(v, (int, float))))
    skipped = (result.get("counts") or {}).get("tool_examples_skipped")
    if skipped:
        typer.echo(f"  {skipped} tool-call examples skipped (the base model's chat template does not render tools)")
    for h in view.get("status_history", []):
        typer.echo(f"  {h['at']:.0f}  {h['status']}")


class _Progress:
    """A progress bar over a job's training steps (stderr), fed by ``wait_job``'s updates."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.done = 0

    def __call__(self, job: dict[str, Any]) -> None:
        result = job.get("result") or {}
        total, step = result.get("total_steps"), int(result.get("step") or 0)
        if not total:
            return
        if self.bar is None:
            self.bar = typer.progressbar(length=int(total), label="training", file=sys.stderr, show_pos=True, show_eta=False)
            self.bar.__enter__()
        loss = result.get("train_loss")
        eta = result.get("eta_seconds")
        phase = result.get("phase")
        self.bar.label = f"training step {step}/{total}" + (f" ({phase})" if isinstance(phase, str) else "") + (f" loss={loss:.4f}" if isinstance(loss, (int, float)) else "") + (f" ETA {eta:.0f}s" if isinstance(eta, (int, float)) else "")
        if step > self.done:
            self.bar.update(step - self.done)
            self.done = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@app.command()
def start(
    training_file: Optional[str] = typer.Option(None, "--training-file", "-t", help="Training JSONL (OpenAI chat format)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Dataset version id (ds_...) instead of files."),
    validation_file: Optional[str] = typer.Option(None, "--validation-file", "-v", help="Validation JSONL."),
    backend: str = typer.Option("openai", "--backend", "-b", help="openai, azure, local or lora."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model, or ft:... to continue a fine-tune (lora: HF id, model dir or .gguf)."),
    method: Optional[str] = typer.Option(None, help="supervised or dpo (default: the dataset's kind, else supervised)."),
    n_epochs: Optional[str] = typer.Option(None, help="1..50 or auto."),
    batch_size: Optional[str] = typer.Option(None, help="1..256 or auto."),
    learning_rate_multiplier: Optional[str] = typer.Option(None, "--lr-multiplier", help="> 0 or auto (the learning rate multiplier)."),
    learning_rate_multiplier_long: Optional[str] = typer.Option(None, "--learning-rate-multiplier", hidden=True),
    beta: Optional[str] = typer.Option(None, help="DPO only: (0, 2] or auto."),
    suffix: Optional[str] = typer.Option(None, help="Name part of the fine-tuned model (1..64 chars)."),
    seed: Optional[int] = typer.Option(None, help="Training seed."),
    metadata: Optional[List[str]] = typer.Option(None, "--metadata", help="key=value (repeatable)."),
    name: Optional[str] = typer.Option(None, help="Local student name (served as protege/<name>)."),
    learning_rate: Optional[float] = typer.Option(None, help="lora: learning rate (default 1e-3)."),
    lora_r: Optional[int] = typer.Option(None, help="lora: adapter rank (default 16)."),
    lora_alpha: Optional[float] = typer.Option(None, help="lora: adapter alpha (default 32)."),
    lora_dropout: Optional[float] = typer.Option(None, help="lora: adapter dropout (default 0.05)."),
    target_modules: Optional[str] = typer.Option(None, help="lora: all-linear (default) or comma-separated module names."),
    max_length: Optional[int] = typer.Option(None, help="lora: max tokens per example (default 512)."),
    gradient_accumulation_steps: Optional[int] = typer.Option(None, "--grad-accum-steps", help="lora: gradient accumulation steps (default 1)."),
    gradient_accumulation_steps_long: Optional[int] = typer.Option(None, "--gradient-accumulation-steps", hidden=True),
    max_steps: Optional[int] = typer.Option(None, help="lora: stop after this many optimizer steps."),
    save_steps: Optional[int] = typer.Option(None, help="lora: checkpoint every N steps (resume point; default 50)."),
    merge: Optional[bool] = typer.Option(None, "--merge/--no-merge", help="lora: also write the merged model."),
    hp_pairs: Optional[List[str]] = typer.Option(None, "--hp", help="Any hyperparameter as key=value (repeatable)."),
    wait: bool = typer.Option(False, "--wait", help="Poll until the job ends."),
    poll_interval: float = typer.Option(5.0, help="Seconds between polls with --wait."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Start a fine-tune job."""
    # The long names stay as hidden aliases: at 80 columns the help cut them off.
    learning_rate_multiplier = learning_rate_multiplier if learning_rate_multiplier is not None else learning_rate_multiplier_long
    if gradient_accumulation_steps is None:
        gradient_accumulation_steps = gradient_accumulation_steps_long
    store = clikit.open_cli_store()
    hp: dict[str, Any] = {"n_epochs": _num(n_epochs), "batch_size": _num(batch_size), "learning_rate_multiplier": _num(learning_rate_multiplier), "beta": _num(beta)}
    hp.update(
        {
            "learning_rate": learning_rate, "lora_r": lora_r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout,
            "target_modules": target_modules, "max_length": max_length, "gradient_accumulation_steps": gradient_accumulation_steps,
            "max_steps": max_steps, "save_steps": save_steps, "merge": merge,
        }
    )
    hp.update(clikit.parse_pairs(hp_pairs, "--hp") if hp_pairs else {})
    try:
        job = jobs.start_job(
            store,
            backend=backend,
            model=model,
            dataset=dataset,
            training_file=training_file,
            validation_file=validation_file,
            method=method,
            hyperparameters={k: v for k, v in hp.items() if v is not None},
            suffix=suffix,
            seed=seed,
            metadata=_parse_metadata(metadata),
            name=name,
            settings=clikit.settings(),
        )
        if wait or backend == "local":
            if not as_json and not wait:
                typer.echo(f"{job['id']} started; training the local student in this process...", err=True)
            interval = min(poll_interval, 0.2) if backend == "local" else poll_interval
            # Local students (the classifier, LoRA) record steps: the bar shows them, also for a
            # local job waited on without --wait.
            progress = _Progress() if (wait or backend == "local") and not as_json else None
            try:
                job = jobs.wait_job(store, job["id"], interval=interval, settings=clikit.settings(), on_update=progress)
            finally:
                if progress is not None:
                    progress.close()
    except FineTuneError as exc:
        clikit.fail(exc.message)
    except Exception as exc:  # the openai SDK is imported lazily; only its connection error is expected here
        if type(exc).__name__ != "APIConnectionError":
            raise
        clikit.fail(f"the fine-tuning provider could not be reached: {exc}")
    _show(store, job, as_json)
    if job["status"] == "failed":
        raise typer.Exit(1)


@app.command()
def status(job_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show a job (polling its backend if it is still running)."""
    _show_after(jobs.get_job, job_id, as_json)


@app.command()
def cancel(job_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Cancel a running job."""
    _show_after(jobs.cancel_job, job_id, as_json)


def _show_after(action: Callable[..., dict[str, Any]], job_id: str, as_json: bool) -> None:
    """Show the job once ``action`` (jobs.get_job: synced, jobs.cancel_job) is done; its refusal is one line."""
    store = clikit.open_cli_store()
    try:
        job = action(store, job_id, settings=clikit.settings())
    except FineTuneError as exc:
        clikit.fail(exc.message)
    _show(store, job, as_json)


@app.command("list")
def list_(
    limit: int = typer.Option(20, help="At most this many (1..100)."),
    after: Optional[str] = typer.Option(None, help="Cursor: a job id."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List jobs, newest first."""
    store = clikit.open_cli_store(read_only=False)
    try:
        items, more = jobs.list_jobs(store, after=after, limit=limit)
    except FineTuneError as exc:
        clikit.fail(exc.message)
    views = [jobs.job_view(store, j, history=False) for j in items]
    if as_json:
        clikit.print_json(
            {"object": "list", "data": views, "first_id": views[0]["id"] if views else None, "last_id": views[-1]["id"] if views else None, "has_more": more}
        )
        return
    for v in views:
        typer.echo(_line(v))
    if more:
        typer.echo(f"(more: --after {views[-1]['id']})")


@app.command()
def events(
    job_id: str,
    limit: int = typer.Option(20, help="At most this many (1..100)."),
    after: Optional[str] = typer.Option(None, help="Cursor: an event id."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A job's events, newest first."""
    store = clikit.open_cli_store()
    try:
        jobs.get_job(store, job_id, settings=clikit.settings())
        items, more = jobs.list_events(store, job_id, after=after, limit=limit)
    except FineTuneError as exc:
        clikit.fail(exc.message)
    if as_json:
        clikit.print_json({"object": "list", "data": items, "first_id": items[0]["id"] if items else None, "last_id": items[-1]["id"] if items else None, "has_more": more})
        return
    for e in items:
        typer.echo(f"{e['created_at']}  {e['level']:<5} {e['message']}")


@app.command()
def export(
    ref: str = typer.Argument(..., help="A job id (ftjob_...) or a student (protege/<name>[@vN])."),
    fmt: str = typer.Option(..., "--format", "-f", help="vllm, ollama or hf."),
    out: str = typer.Option(..., "--out", "-o", help="Directory to write (created; must be empty)."),
    merge: Optional[bool] = typer.Option(None, "--merge/--adapter", help="Merged model or adapter (default: hf merged, vllm adapter, ollama by model family)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Export a LoRA student for vLLM, Ollama or transformers, with a README of ready-to-run commands."""
    store = clikit.open_cli_store()
    try:
        written = do_export(store, ref, fmt, out, merge=merge)
    except FineTuneError as exc:
        clikit.fail(exc.message)
    if as_json:
        clikit.print_json(written)
        return
    typer.echo(f"{written['model']} exported for {fmt} ({'merged model' if written['merged'] else 'adapter'}) to {written['out']}")
    typer.echo(f"  instructions: {written['readme']}")
