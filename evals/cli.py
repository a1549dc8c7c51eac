"""`protege eval run|resume|list|show|report`: teacher-vs-student evals from the command line.

``protege`` mounts every room's commands at start-up, so the imports of runs, metrics and reports
stay inside the commands: ``protege --help`` does not pay for openai, numpy and sacrebleu.
"""

from __future__ import annotations

import asyncio
import sys
import tomllib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer

from protege import clikit

app = typer.Typer(no_args_is_help=True, help="Evaluate candidate (student) models against the teacher.")


parse_time = clikit.parse_time

_pairs = clikit.parse_pairs

def _load_spec_file(path: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        clikit.fail(f"cannot read spec {path}: {exc.strerror or exc}")
    except tomllib.TOMLDecodeError as exc:
        clikit.fail(f"spec {path} is not valid TOML: {exc}")
    return data


def _progress_runner(store: Any, run_id: str, show: bool, concurrency: int | None) -> dict[str, Any]:
    from .runs import execute_run

    if not show:
        return asyncio.run(execute_run(store, run_id, concurrency=concurrency))
    bar: Any = None
    state = {"last": 0}

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = typer.progressbar(length=total, label="generating", file=sys.stderr, show_pos=True)
            bar.__enter__()
        bar.update(done - state["last"])
        state["last"] = done

    try:
        return asyncio.run(execute_run(store, run_id, progress=progress, concurrency=concurrency))
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


@app.command("run")
def run_cmd(
    spec_file: Optional[str] = typer.Option(None, "--spec", help="TOML spec file (flags override it)."),
    model: Optional[str] = typer.Option(None, help="Items: captured completions of this (teacher) model."),
    metadata: Optional[list[str]] = typer.Option(None, "--metadata", help="Items: metadata KEY=VALUE (repeatable)."),
    since: Optional[str] = typer.Option(None, help="Items created at or after (Unix seconds or ISO date)."),
    until: Optional[str] = typer.Option(None, help="Items created before (Unix seconds or ISO date)."),
    limit: Optional[int] = typer.Option(None, help="At most this many items."),
    items: Optional[str] = typer.Option(None, "--items", help="Items from a JSONL file instead of the store."),
    candidate: Optional[list[str]] = typer.Option(
        None, "--candidate", help="name=...,model=...,base_url=...,api_key_env=...,system_prompt=drop (repeatable)."
    ),
    metric: Optional[list[str]] = typer.Option(None, "--metric", help="Metric name, e.g. exact_match, bleu, chrf (repeatable)."),
    reference: Optional[str] = typer.Option(None, help="auto (gold where present, else teacher), teacher or gold."),
    concurrency: Optional[int] = typer.Option(None, help="Concurrent requests (default 8)."),
    seed: Optional[int] = typer.Option(None, help="Seed for bootstrap resampling (default 0)."),
    resamples: Optional[int] = typer.Option(None, "--resamples", help="Bootstrap resamples (default 1000)."),
    name: Optional[str] = typer.Option(None, help="A name for the run."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue this run: only missing outputs are generated."),
    as_json: bool = typer.Option(False, "--json", help="Print the run object as JSON."),
) -> None:
    """Generate every candidate's answers for the items, score them against the reference."""
    from .generate import Candidate, CandidateError
    from .runs import RunSpec, RunSpecError, create_run

    store = clikit.open_cli_store()
    try:
        if resume:
            from protege.store import evals as db

            if db.get_run(store, resume) is None:
                clikit.fail(f"no eval run {resume}")
            run_id = resume
        else:
            data: dict[str, Any] = _load_spec_file(spec_file) if spec_file else {}
            flags = {
                "model": model, "since": parse_time(since, "--since"), "until": parse_time(until, "--until"),
                "limit": limit, "items_file": items, "reference": reference, "concurrency": concurrency, "seed": seed,
                "n_resamples": resamples, "name": name,
            }
            data.update({k: v for k, v in flags.items() if v is not None})
            if metadata:
                data["metadata"] = _pairs(metadata, "--metadata")
            if metric:
                data["metrics"] = list(metric)
            try:
                if candidate:
                    data["candidates"] = [Candidate.parse(c) for c in candidate]
                spec = RunSpec.from_dict(data)
                run = create_run(store, spec)
            except (RunSpecError, CandidateError) as exc:
                clikit.fail(str(exc))
            run_id = run["id"]
            if not as_json:
                typer.echo(f"created {run_id} with {run['n_items']} items", err=True)
        try:
            run = _progress_runner(store, run_id, show=not as_json, concurrency=concurrency if resume else None)
        except KeyboardInterrupt:
            clikit.fail(f"interrupted; continue with: protege eval run --resume {run_id}", code=130)
        except RunSpecError as exc:
            clikit.fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - one line for the user, the log has the traceback
            clikit.fail(f"eval run {run_id} failed: {exc}; fix it and continue with --resume {run_id}")
        if as_json:
            clikit.print_json(run)
        else:
            from .report import report_data, verdicts

            counts = run["result_counts"]
            typer.echo(f"{run_id}: {run['status']} ({counts['completed']} outputs, {counts['errored']} errors)")
            for line in verdicts(report_data(store, run_id, include_items=False)):
                typer.echo("  " + line)
    finally:
        store.close()


@app.command("list")
def list_cmd(
    limit: int = typer.Option(20, help="How many runs."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Eval runs, newest first."""
    from protege.store import evals as db

    from .runs import run_object

    store = clikit.open_cli_store(read_only=True)
    try:
        runs, has_more = db.list_runs(store, limit=limit)
        objs = [run_object(store, r) for r in runs]
    finally:
        store.close()
    if as_json:
        clikit.print_json({"object": "list", "data": objs, "first_id": objs[0]["id"] if objs else None,
                           "last_id": objs[-1]["id"] if objs else None, "has_more": has_more})
        return
    for r in objs:
        when = datetime.fromtimestamp(r["created_at"], timezone.utc).strftime("%Y-%m-%d %H:%M")
        c = r["result_counts"]
        cands = ",".join(x["name"] for x in r["candidates"])
        typer.echo(f"{r['id']}  {when}  {r['status']:<11}  items={r['n_items']}  done={c['completed']}/{c['total']}  "
                   f"errors={c['errored']}  candidates={cands}")


@app.command("show")
def show_cmd(run_id: str, as_json: bool = typer.Option(True, "--json/--text", help="Print JSON (default).")) -> None:
    """One run with its progress counts."""
    from protege.store import evals as db

    from .runs import run_object

    store = clikit.open_cli_store(read_only=True)
    try:
        run = db.get_run(store, run_id)
        if run is None:
            clikit.fail(f"no eval run {run_id}")
        clikit.print_json(run_object(store, run))
    finally:
        store.close()


@app.command("report")
def report_cmd(
    run_id: str,
    fmt: str = typer.Option("md", "--format", "-f", help="html, md or json."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
    prices: Optional[str] = typer.Option(None, "--prices", help="Price table (TOML or JSON) overriding the defaults."),
) -> None:
    """The report of a finished run: headline (accuracy, prompt tokens, cost vs teacher), metrics, items."""
    from .pricing import PriceTableError, load_prices
    from .report import FORMATS, render_report

    if fmt not in FORMATS:
        clikit.fail(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    try:
        table = load_prices(prices)
    except PriceTableError as exc:
        clikit.fail(str(exc))
    store = clikit.open_cli_store(read_only=True)
    try:
        try:
            text = render_report(store, run_id, fmt, prices=table)
        except KeyError:
            clikit.fail(f"no eval run {run_id}")
        except ValueError as exc:
            clikit.fail(str(exc))
    finally:
        store.close()
    if output:
        Path(output).write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output}", err=True)
    else:
        sys.stdout.write(text)
