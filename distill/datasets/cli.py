"""`protege dataset build|list|show|validate`."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import typer

from protege import clikit
from protege.distill.datasets.builder import DatasetError, DatasetOptions, build_dataset, get_dataset, list_datasets
from protege.distill.datasets.select import DEFAULT_REFUSAL_PHRASES
from protege.distill.datasets.tokens import max_tokens_for
from protege.distill.datasets.validate import validate_jsonl

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Build fine-tuning datasets from captured traffic.")


_parse_kv = clikit.parse_pairs

_parse_time = clikit.parse_time

def _summary(dv) -> str:
    c = dv.counts
    tr = dv.stats.get("training", {})
    cost = tr.get("estimated_cost_usd")
    return (
        f"{dv.id}  {dv.name} v{dv.version} ({dv.kind}): {c.get('train', 0)} train / {c.get('validation', 0)} validation"
        f"  ~{tr.get('training_tokens', 0)} training tokens, {'cost unknown' if cost is None else f'~${cost:,.2f}'}"
    )


class _RowsBar:
    """``progress(done, total)`` for :func:`build_dataset` as the one CLI progress bar
    (:func:`protege.clikit.progress`: stderr, terminals only), opened once the total is known."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.stack = ExitStack()
        self.advance: Any = None
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        if self.advance is None:
            self.advance = self.stack.enter_context(clikit.progress(total, self.description))
        if done > self.done:
            self.advance(done - self.done)
            self.done = done

    def close(self) -> None:
        self.stack.close()


@app.command()
def build(
    name: str = typer.Option(..., "--name", help="Dataset name; each build adds a version."),
    model: list[str] | None = typer.Option(None, "--model", "-m", help="Teacher model (repeatable)."),
    metadata: list[str] | None = typer.Option(None, "--metadata", help="KEY=VALUE metadata filter (repeatable)."),
    since: str | None = typer.Option(None, help="Only captures created at/after (Unix seconds or ISO date)."),
    until: str | None = typer.Option(None, help="Only captures created before (Unix seconds or ISO date)."),
    min_score: float | None = typer.Option(None, "--min-score", help="Minimum feedback score."),
    kind: str = typer.Option("sft", help="sft (chat examples) or dpo (preference pairs from feedback)."),
    allow_truncated: bool = typer.Option(False, "--allow-truncated", help="Keep answers that did not finish (finish_reason length)."),
    keep_refusals: bool = typer.Option(False, "--keep-refusals", help="Keep refusals."),
    refusal_phrase: list[str] | None = typer.Option(None, "--refusal-phrase", help="Refusal phrase (repeatable; replaces the defaults)."),
    no_dedupe: bool = typer.Option(False, "--no-dedupe", help="Keep exact duplicates."),
    near_dedupe: float | None = typer.Option(None, "--near-dedupe", help="Remove near duplicates at this Jaccard threshold (e.g. 0.85)."),
    no_scrub: bool = typer.Option(False, "--no-scrub", help="Do not replace PII with placeholders."),
    prune_system: bool = typer.Option(False, "--prune-system-prompt", help="Drop the system prompt most examples share."),
    prune_share: float = typer.Option(0.8, "--prune-share", help="Share of examples that must share it."),
    validation: float = typer.Option(0.1, "--validation", help="Validation fraction."),
    seed: int = typer.Option(0, help="Split seed."),
    stratify: bool = typer.Option(False, "--stratify", help="Stratify the split by label."),
    no_stratify: bool = typer.Option(False, "--no-stratify", hidden=True),  # kept working; its help column cut long names
    label_source: str = typer.Option("feedback", "--label-source", help="feedback, output or metadata."),
    label_key: str | None = typer.Option(None, "--label-key", help="Metadata key holding the label."),
    group_by: str | None = typer.Option(None, "--group-by", help="Metadata key; a group never straddles the split."),
    base_model: str = typer.Option("gpt-4o-mini-2024-07-18", "--base-model", show_default=False,
                                   help="Model to fine-tune (token limit, price); default gpt-4o-mini-2024-07-18."),
    epochs: int | None = typer.Option(None, help="Epochs for the cost estimate (default: cookbook heuristic)."),
    price: float | None = typer.Option(None, help="Training price per 1M tokens for --base-model (overrides the table)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Build the next version of a dataset from the store."""
    opts = DatasetOptions(
        name=name, kind=kind, models=list(model or []), metadata=_parse_kv(metadata, "--metadata"),
        since=_parse_time(since, "--since"), until=_parse_time(until, "--until"), min_score=min_score,
        finish_reasons=[] if allow_truncated else ["stop", "tool_calls"], exclude_refusals=not keep_refusals,
        refusal_phrases=list(refusal_phrase) if refusal_phrase else list(DEFAULT_REFUSAL_PHRASES),
        dedupe=not no_dedupe, near_dedupe=near_dedupe is not None, near_threshold=near_dedupe or 0.85,
        scrub=not no_scrub, prune_system_prompt=prune_system, prune_min_share=prune_share,
        validation_fraction=validation, seed=seed, stratify=stratify and not no_stratify, label_source=label_source, label_key=label_key,
        group_by=group_by, base_model=base_model, n_epochs=epochs, prices={base_model: price} if price is not None else {},
    )
    try:
        opts.check()
    except DatasetError as exc:
        clikit.fail(str(exc))
    store = clikit.open_cli_store()
    bar = _RowsBar("building dataset")
    try:
        dv = build_dataset(store, opts, progress=bar)
    except DatasetError as exc:
        bar.close()
        clikit.fail(str(exc))
    finally:
        bar.close()
        store.close()
    problems = dv.problems
    for p in problems:
        typer.echo(f"warning: {p['message']}", err=True)
    if json_out:
        clikit.print_json(dv.to_dict())
    else:
        typer.echo(_summary(dv) + (f"  (validation found {len(problems)} kind{'' if len(problems) == 1 else 's'} of problem: see above)" if problems else ""))
        typer.echo(f"  train: {dv.train_path}")
        if dv.validation_path:
            typer.echo(f"  validation: {dv.validation_path}")
        typer.echo(f"  card: {dv.card_path}")


@app.command("list")
def list_cmd(
    name: str | None = typer.Option(None, help="Only versions of this dataset."),
    limit: int = typer.Option(100, help="At most this many."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Dataset versions, newest first."""
    store = clikit.open_cli_store()
    try:
        items, has_more = list_datasets(store, name=name, limit=limit)
    finally:
        store.close()
    if json_out:
        clikit.print_json({"object": "list", "data": [d.to_dict() for d in items], "has_more": has_more})
        return
    if not items:
        typer.echo("no datasets")
    for dv in items:
        typer.echo(_summary(dv))


@app.command()
def show(
    dataset_id: str = typer.Argument(..., help="Dataset id (ds_...)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """One dataset version: counts, files and its card."""
    store = clikit.open_cli_store()
    try:
        dv = get_dataset(store, dataset_id)
    finally:
        store.close()
    if dv is None:
        clikit.fail(f"no dataset with id {dataset_id!r}")
    if json_out:
        clikit.print_json(dv.to_dict())
        return
    card = dv.card_path
    if card and Path(card).exists():
        typer.echo(Path(card).read_text(encoding="utf-8"))
    else:
        typer.echo(_summary(dv))


@app.command()
def validate(
    file: Path = typer.Argument(..., help="JSONL file in OpenAI's chat fine-tuning (or DPO) format."),
    base_model: str = typer.Option("gpt-4o-mini-2024-07-18", "--base-model", show_default=False,
                                   help="For the per-example token limit; default gpt-4o-mini-2024-07-18."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Check a training file; exits non-zero with one line per error."""
    if not file.is_file():
        clikit.fail(f"no such file: {file}")
    report = validate_jsonl(file, max_tokens=max_tokens_for(base_model))
    if json_out:
        clikit.print_json(report.to_dict())
    else:
        for e in report.errors:
            typer.echo(f"{file}:{e.line}: {e.key}: {e.message}", err=True)
        for w in report.warnings[:20]:
            typer.echo(f"{file}:{w.line}: warning {w.key}: {w.message}", err=True)
        state = "ok" if report.ok else f"{len(report.errors)} error(s)"
        typer.echo(f"{file}: {report.examples} examples ({report.format}), {report.valid_examples} valid: {state}")
    if not report.ok:
        raise typer.Exit(1)
