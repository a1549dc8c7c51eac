"""`protege eval run|list|show|report`: teacher-vs-student evals from the command line.

Long work shows progress on stderr (terminals only), a stopped run is one ``error:`` line and a
non-zero exit, failed calls are ``warning:`` lines beside the scores, ``--json`` is untouched by any.

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

import click
import typer
from typer.core import TyperCommand

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
    """Execute the run with two progress bars on stderr (``protege.clikit.progress``: terminals only):
    one while the candidates answer, one while the answers are scored. Where stderr is not a
    terminal (a log, CI) each phase is one plain line instead."""
    from contextlib import ExitStack

    from .runs import execute_run

    if not show:
        return asyncio.run(execute_run(store, run_id, concurrency=concurrency))
    with ExitStack() as stack:
        bars: dict[str, Any] = {}

        def follow(phase: str) -> Any:
            def update(done: int, total: int) -> None:
                if phase not in bars:
                    stack.close()  # the previous phase's bar is finished
                    if not sys.stderr.isatty():  # no bar in a log: one line per phase says what runs
                        typer.echo(f"{phase}: {total} {'answers' if phase == 'generating' else 'steps'}", err=True)
                    bars[phase] = [stack.enter_context(clikit.progress(total, phase)), 0]
                advance, last = bars[phase]
                advance(done - last)
                bars[phase][1] = done
            return update

        return asyncio.run(execute_run(store, run_id, progress=follow("generating"), score_progress=follow("scoring"),
                                       concurrency=concurrency))


class _RunCommand(TyperCommand):
    """``eval run``: the ``--metric`` help lists the registry's metric names, read when help is shown
    (the registry imports every metric module; ``protege --help`` must not pay for that)."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from .metrics import available_metrics

        for param in self.params:
            if param.name == "metric":
                param.help = f"Metric (repeatable; default exact_match, chrf): {', '.join(available_metrics())}."
        super().format_help(ctx, formatter)


# One line per paragraph: the help renderer keeps a docstring's line breaks, and at 80 columns a
# line broken in the source shows as a ragged paragraph.
RUN_HELP = "\n\n".join([
    "Generate every candidate's answers for the items, score them against the reference.",
    "A candidate's fields: name (as reports show it), model, base_url (an OpenAI-compatible /v1 URL; a protege/NAME "
    "model without one goes to the `protege serve` of this database), api_key_env (the NAME of the variable holding "
    "its key), system_prompt (drop, or a replacement), azure_endpoint, api_version, timeout, price_input and "
    "price_output (USD per 1M tokens), params.KEY (a request parameter).",
    "Example: --candidate name=student,model=protege/topics,system_prompt=drop",
    "A candidate that cannot be reached, or that refuses every call (HTTP 401, 403, 404), stops the run with a "
    "non-zero exit; continue it with --resume once the candidate is up. Failed calls are counted as errors, apart "
    "from the scores, which are over the answered items.",
])


@app.command("run", cls=_RunCommand, help=RUN_HELP)
def run_cmd(
    spec_file: Optional[str] = typer.Option(None, "--spec", help="TOML spec file (flags override it)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Items: captured completions of this (teacher) model."),
    metadata: Optional[list[str]] = typer.Option(None, "--metadata", help="Items: metadata KEY=VALUE (repeatable)."),
    since: Optional[str] = typer.Option(None, help="Items created at or after (Unix seconds or ISO date)."),
    until: Optional[str] = typer.Option(None, help="Items created before (Unix seconds or ISO date)."),
    limit: Optional[int] = typer.Option(None, help="At most this many items."),
    items: Optional[str] = typer.Option(None, "--items", help="Items from a JSONL file instead of the store."),
    candidate: Optional[list[str]] = typer.Option(
        None, "--candidate", help="A candidate as comma-separated KEY=VALUE fields, listed above (repeatable)."
    ),
    metric: Optional[list[str]] = typer.Option(None, "--metric", help="Metric name (repeatable)."),
    reference: Optional[str] = typer.Option(None, help="auto (gold where present, else teacher), teacher or gold."),
    concurrency: Optional[int] = typer.Option(None, help="Concurrent requests (default 8)."),
    seed: Optional[int] = typer.Option(None, help="Seed for bootstrap resampling (default 0)."),
    resamples: Optional[int] = typer.Option(None, "--resamples", help="Bootstrap resamples (default 1000)."),
    name: Optional[str] = typer.Option(None, help="A name for the run."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue this run: only missing outputs are generated."),
    as_json: bool = typer.Option(False, "--json", help="Print the run object as JSON."),
) -> None:
    """Generate every candidate's answers for the items, score them against the reference (help: RUN_HELP)."""
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
        from .breaker import CandidateUnavailable

        try:
            run = _progress_runner(store, run_id, show=not as_json, concurrency=concurrency if resume else None)
        except KeyboardInterrupt:
            clikit.fail(f"interrupted; continue with: protege eval run --resume {run_id}", code=130)
        except CandidateUnavailable as exc:
            clikit.fail(f"eval run {run_id} stopped: {exc}; once it is up: protege eval run --resume {run_id}")
        except RunSpecError as exc:
            clikit.fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - one line for the user, the log has the traceback
            clikit.fail(f"eval run {run_id} failed: {exc}; fix it and continue with --resume {run_id}")
        unanswered = _warn_errors(store, run)
        if as_json:
            clikit.print_json(run)
        else:
            from .report import report_data, verdicts

            counts = run["result_counts"]
            typer.echo(f"{run_id}: {run['status']} ({counts['completed']} outputs, {counts['errored']} errors)")
            for line in verdicts(report_data(store, run_id, include_items=False)):
                typer.echo("  " + line)
        if unanswered:
            raise typer.Exit(1)
    finally:
        store.close()


def _warn_errors(store: Any, run: dict[str, Any]) -> bool:
    """One warning line on stderr per candidate with failed calls; True when one answered nothing
    (it has no score at all, and the command exits non-zero)."""
    from protege.store import evals as db

    first: dict[str, str] = {}
    counts = run.get("candidate_counts") or {}
    if any(c["errored"] for c in counts.values()):
        for o in db.list_outputs(store, run["id"]):
            if o["status"] != "ok" and o["candidate"] not in first:
                first[o["candidate"]] = o["error"] or "error"
    nothing = False
    for name, c in counts.items():
        if not c["errored"]:
            continue
        nothing = nothing or c["answered"] == 0
        typer.echo(f"warning: candidate {name}: {c['errored']} of {c['total']} calls failed (not scored; first: "
                   f"{first.get(name, 'error')}); retry them with --resume {run['id']}", err=True)
    return nothing


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
def show_cmd(run_id: str, as_json: bool = typer.Option(True, "--json/--text", help="Print JSON (default) or text.")) -> None:
    """One run with its progress counts (answered, errors, pending per candidate)."""
    from protege.store import evals as db

    from .runs import run_object

    store = clikit.open_cli_store(read_only=True)
    try:
        run = db.get_run(store, run_id)
        if run is None:
            clikit.fail(f"no eval run {run_id}")
        obj = run_object(store, run)
        if as_json:
            clikit.print_json(obj)
            return
        from .report import report_data, verdicts

        typer.echo(_show_text(obj, verdicts(report_data(store, run_id, include_items=False)) if run["results"] else []))
    finally:
        store.close()


def _when(ts: int | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _show_text(run: dict[str, Any], verdict_lines: list[str]) -> str:
    """``eval show --text``: what ``eval list`` says of a run, then every candidate and the verdicts."""
    lines = [f"{run['id']}" + (f" ({run['name']})" if run.get("name") else "") + f": {run['status']}",
             f"  created {_when(run['created_at'])}, started {_when(run['started_at'])}, "
             f"completed {_when(run['completed_at'])}",
             f"  items: {run['n_items']}, reference: {run.get('reference')}, metrics: {', '.join(map(str, run['metrics']))}"]
    if run.get("error"):
        lines.append(f"  error: {run['error'].get('message')}")
    lines.append("  candidates:")
    for c in run["candidates"]:
        n = (run.get("candidate_counts") or {}).get(c["name"]) or {}
        where = c.get("base_url") or c.get("azure_endpoint") or ("the serving proxy" if c["model"].startswith("protege/") else "the SDK default")
        lines.append(f"    {c['name']}: {n.get('answered', 0)} answered, {n.get('errored', 0)} errors, "
                     f"{n.get('pending', 0)} pending of {n.get('total', run['n_items'])} ({c['model']} at {where})")
    if verdict_lines:
        lines.append("  results:")
        lines += ["    " + v for v in verdict_lines]
    return "\n".join(lines)


@app.command("report")
def report_cmd(
    run_id: str,
    fmt: str = typer.Option("md", "--format", "-f", help="html, md or json."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Write to this file instead of stdout."),
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
    if out:
        Path(out).write_text(text, encoding="utf-8")
        typer.echo(f"wrote {out}", err=True)
    else:
        sys.stdout.write(text)
