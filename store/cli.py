"""`protege completions list|show|stats|export|import`: the captured traffic from a shell.

The CLI opens the DuckDB file itself, so it works while `protege serve` is stopped; while the server
holds the file, it says so in one line (query the server's API instead).
"""

from __future__ import annotations

import datetime as dt
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import orjson
import typer

from protege import clikit

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Captured completions: list, show, stats, export, import.")

_ORDER = ("asc", "desc")


# ---------------------------------------------------------------------------------------------
# Parsing options


parse_time = clikit.parse_time

def parse_metadata(items: list[str] | None) -> dict[str, str]:
    return clikit.parse_pairs(items, "--metadata")

def _order(order: str) -> str:
    if order not in _ORDER:
        clikit.fail(f"--order must be asc or desc, not {order!r}")
    return order


@contextmanager
def _store() -> Iterator[Any]:
    from protege.store import SchemaTooNewError

    import duckdb

    try:
        store = clikit.open_cli_store()
    except SchemaTooNewError as exc:
        clikit.fail(str(exc))
    except duckdb.Error as exc:  # not a DuckDB file, a directory that cannot be created, ...
        clikit.fail(f"cannot open {clikit.settings().db}: {str(exc).splitlines()[0]}")
    try:
        yield store
    finally:
        store.close()


_progress = clikit.progress


def _iso(ts: Any) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(float(ts), dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _json_field(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _summary(rec: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": rec["id"],
        "created": rec["created"],
        "model": rec["model"] or rec["model_requested"],
        "outcome": rec["outcome"],
        "status_code": rec["status_code"],
        "latency_ms": rec["latency_ms"],
        "ttft_ms": rec["ttft_ms"],
        "prompt_tokens": rec["prompt_tokens"],
        "completion_tokens": rec["completion_tokens"],
        "total_tokens": rec["total_tokens"],
        "stream": rec["stream"],
        "source": rec["source"],
        "metadata": _json_field(rec["metadata"]) or {},
    }


# ---------------------------------------------------------------------------------------------
# Commands

_MODEL = typer.Option(None, "--model", help="Only this model (as answered or as requested).")
_METADATA = typer.Option(None, "--metadata", help="key=value; repeat to require several pairs.")
_SINCE = typer.Option(None, "--since", help="Created at or after: ISO date/date-time (UTC) or Unix seconds.")
_UNTIL = typer.Option(None, "--until", help="Created before: ISO date/date-time (UTC) or Unix seconds.")


@app.command("list")
def list_cmd(
    model: Optional[str] = _MODEL,
    metadata: Optional[List[str]] = _METADATA,
    since: Optional[str] = _SINCE,
    until: Optional[str] = _UNTIL,
    outcome: Optional[str] = typer.Option(None, "--outcome", help="ok, upstream_error, unreachable, timeout, client_disconnected."),
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="How many to show."),
    order: str = typer.Option("desc", "--order", help="asc (oldest first) or desc (newest first)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Captured completions, newest first (errors included; see --outcome)."""
    from protege.store import select_records

    filters = dict(model=model, metadata=parse_metadata(metadata), since=parse_time(since, "--since"),
                   until=parse_time(until, "--until"), outcome=outcome)
    order = _order(order)
    with _store() as store:
        rows = [_summary(r) for r in select_records(store, **filters, limit=limit + 1, order=order)]
    has_more = len(rows) > limit
    rows = rows[:limit]
    if as_json:
        clikit.print_json({
            "object": "list", "data": rows, "first_id": rows[0]["id"] if rows else None,
            "last_id": rows[-1]["id"] if rows else None, "has_more": has_more,
        })
        return
    if not rows:
        typer.echo("no captured completions match")
        return
    header = ("ID", "CREATED (UTC)", "MODEL", "OUTCOME", "STATUS", "LATENCY", "TOKENS", "METADATA")
    table = [header] + [
        (
            r["id"], _iso(r["created"]), r["model"] or "-", r["outcome"], str(r["status_code"] or "-"),
            f"{r['latency_ms']:.0f}ms" if r["latency_ms"] is not None else "-",
            str(r["total_tokens"]) if r["total_tokens"] is not None else "-",
            ",".join(f"{k}={v}" for k, v in r["metadata"].items()) or "-",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    if has_more:
        typer.echo("... more (use --limit or --since/--until)")


@app.command("show")
def show_cmd(
    completion_id: str = typer.Argument(..., metavar="ID", help="The completion id the client saw."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """The whole capture: request, response, metadata, status, latency, ttft, usage, upstream, key hash."""
    from protege.store import get_record

    with _store() as store:
        rec = get_record(store, completion_id)
    if rec is None:
        clikit.fail(f"no captured completion with id {completion_id!r}")
    for key in ("request", "response", "metadata"):
        rec[key] = _json_field(rec[key])
    if as_json:
        clikit.print_json(rec)
        return
    usage = f"{rec['prompt_tokens']} prompt + {rec['completion_tokens']} completion = {rec['total_tokens']}"
    lines = [
        f"id           {rec['id']}",
        f"created      {_iso(rec['created'])} UTC ({rec['created']})",
        f"model        {rec['model'] or '-'} (requested {rec['model_requested'] or '-'})",
        f"outcome      {rec['outcome']} (HTTP {rec['status_code'] or '-'})" + (f": {rec['error']}" if rec["error"] else ""),
        f"latency      {_fmt_ms(rec['latency_ms'])}, ttft {_fmt_ms(rec['ttft_ms'])}, stream={rec['stream']}",
        f"usage        {usage}",
        f"upstream     {rec['upstream'] or '-'}",
        f"key hash     {rec['key_hash'] or '-'}",
        f"request id   {rec['request_id'] or '-'}",
        f"upstream id  {rec['upstream_id'] or '-'}",
        f"source       {rec['source']}" + (f", served by {rec['served_by']}" if rec["served_by"] else ""),
        f"metadata     {orjson.dumps(rec['metadata']).decode()}",
        "",
        "request:",
        orjson.dumps(rec["request"], option=orjson.OPT_INDENT_2).decode(),
        "",
        "response:",
        orjson.dumps(rec["response"], option=orjson.OPT_INDENT_2).decode(),
    ]
    typer.echo("\n".join(lines))


def _fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} ms"


@app.command("stats")
def stats_cmd(
    model: Optional[str] = _MODEL,
    metadata: Optional[List[str]] = _METADATA,
    since: Optional[str] = _SINCE,
    until: Optional[str] = _UNTIL,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Counts by model and outcome, tokens, latency p50/p95, ttft p50, error rate, captures per day."""
    from protege.store.stats import completion_stats

    with _store() as store:
        s = completion_stats(store, model=model, metadata=parse_metadata(metadata),
                             since=parse_time(since, "--since"), until=parse_time(until, "--until"))
    if as_json:
        clikit.print_json(s)
        return
    out = [
        f"captures     {s['total']} ({s['ok']} ok, {s['errors']} errors, error rate {s['error_rate'] * 100:.2f}%)",
        f"tokens       {s['tokens']['prompt']} prompt, {s['tokens']['completion']} completion, {s['tokens']['total']} total",
        f"latency      p50 {_fmt_ms(s['latency_ms']['p50'])}, p95 {_fmt_ms(s['latency_ms']['p95'])}; ttft p50 {_fmt_ms(s['ttft_ms']['p50'])}",
        "",
        "by model:",
    ]
    out += [f"  {m['model']:<32} {m['count']:>9}  ok {m['ok']:>9}  errors {m['errors']:>7}" for m in s["by_model"]] or ["  -"]
    out += ["", "by outcome:"] + ([f"  {k:<32} {v:>9}" for k, v in s["by_outcome"].items()] or ["  -"])
    out += ["", "per day (UTC):"] + [f"  {d['day']}  {d['count']:>9}" for d in s["per_day"]]
    typer.echo("\n".join(out))


@app.command("export")
def export_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="File to write."),
    fmt: str = typer.Option("jsonl", "--format", "-f", help="jsonl (OpenAI chat.completion lines) or parquet (every column)."),
    model: Optional[str] = _MODEL,
    metadata: Optional[List[str]] = _METADATA,
    since: Optional[str] = _SINCE,
    until: Optional[str] = _UNTIL,
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="At most this many."),
    order: str = typer.Option("asc", "--order", help="asc (oldest first) or desc."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary."),
) -> None:
    """Export completions: JSONL (successful ones, importable again) or Parquet (all captures, all columns)."""
    from protege.store import count_records
    from protege.store.io import export_jsonl, export_parquet

    if fmt not in ("jsonl", "parquet"):
        clikit.fail(f"--format must be jsonl or parquet, not {fmt!r}")
    if not out.parent.exists():
        clikit.fail(f"--out: directory {str(out.parent)!r} does not exist")
    filters = dict(model=model, metadata=parse_metadata(metadata), since=parse_time(since, "--since"),
                   until=parse_time(until, "--until"))
    order = _order(order)
    with _store() as store:
        if fmt == "jsonl":
            total = count_records(store, **filters, stored_only=True)
            with _progress(min(total, limit or total), "exporting") as advance:
                n = export_jsonl(store, out, **filters, order=order, limit=limit, progress=advance)
        else:
            n = export_parquet(store, out, **filters, order=order, limit=limit)
    if as_json:
        clikit.print_json({"exported": n, "format": fmt, "path": str(out)})
    else:
        typer.echo(f"exported {n} completions to {out}")


@app.command("import")
def import_cmd(
    file: Optional[Path] = typer.Argument(None, metavar="FILE.jsonl", help="JSONL of chat completions (not with --from-openai)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name for lines that do not say (fine-tuning lines); "
                                        "with --from-openai: only completions of this model."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary (with per-line errors)."),
    from_openai: bool = typer.Option(False, "--from-openai", help="Pull your Stored Completions from OpenAI's API "
                                     "(OPENAI_API_KEY, OPENAI_BASE_URL); running it again stores nothing twice."),
    metadata: Optional[List[str]] = typer.Option(None, "--metadata", help="With --from-openai: KEY=VALUE filter (repeatable, all must match)."),
    order: str = typer.Option("asc", "--order", help="With --from-openai: asc (oldest first) or desc."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="With --from-openai: at most this many completions."),
) -> None:
    """Import JSONL logs: chat.completion objects with messages/request, {request, response}, or {messages}.

    Bad lines are reported with their line numbers and skipped; the exit status is 1 if any failed.
    Importing is idempotent: completions already stored are skipped; a line whose id is taken by a
    different completion is stored under a new id (its own kept as upstream_id) and reported.
    With --from-openai, the Stored Completions kept at OpenAI are imported instead of a file.
    """
    if from_openai:
        if file is not None:
            clikit.fail("give a FILE or --from-openai, not both")
        _import_from_openai(model, parse_metadata(metadata), _order(order), limit, as_json)
        return
    if metadata or limit is not None:
        clikit.fail("--metadata and --limit filter --from-openai imports only")
    from protege.store.io import import_jsonl

    if file is None:
        clikit.fail("give a FILE.jsonl to import (or --from-openai)")
    if not file.is_file():
        clikit.fail(f"no such file: {file}")
    import duckdb

    with _store() as store, _progress(file.stat().st_size, "importing") as advance:
        try:
            result = import_jsonl(store, file, default_model=model, progress=advance)
        except duckdb.Error as exc:  # the database, not a line, failed: batches before it are kept
            clikit.fail(f"import stopped, the database could not be written: {str(exc).splitlines()[0]}")
    if as_json:
        clikit.print_json(result.as_dict())
    else:
        for line, msg in result.errors:
            typer.echo(f"error: line {line}: {msg}", err=True)
        if result.error_count > len(result.errors):
            typer.echo(f"error: ... and {result.error_count - len(result.errors)} more bad lines", err=True)
        for line, old, new in result.reided:
            typer.echo(f"note: line {line}: id {old} is taken by a different completion; imported as {new}", err=True)
        if result.reided_count > len(result.reided):
            typer.echo(f"note: ... and {result.reided_count - len(result.reided)} more given new ids", err=True)
        typer.echo(f"imported {result.imported} of {result.lines} lines from {file}" +
                   (f", {result.skipped} already stored (skipped)" if result.skipped else "") +
                   (f", {result.reided_count} with a new id (their id was taken)" if result.reided_count else "") +
                   (f", {result.error_count} failed" if result.error_count else ""))
    if result.error_count:
        raise typer.Exit(1)


def _import_from_openai(model: str | None, metadata: dict[str, str], order: str, limit: int | None, as_json: bool) -> None:
    """`completions import --from-openai`: one line on stderr for OpenAI's refusals, counts at the end."""
    import duckdb
    import openai

    from protege.store.openai_import import openai_client, pull_stored_completions

    try:
        client = openai_client()
    except openai.OpenAIError:
        clikit.fail("no OpenAI API key: set OPENAI_API_KEY (and OPENAI_BASE_URL for another endpoint)")
    with _store() as store, _progress(limit, "importing from OpenAI") as advance:
        try:
            result = pull_stored_completions(store, client, model=model, metadata=metadata or None, order=order, limit=limit,
                                             progress=advance)
        except openai.APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            clikit.fail(f"OpenAI refused to list stored completions ({exc.status_code}): {body.get('message') or exc}")
        except openai.APIConnectionError as exc:
            clikit.fail(f"OpenAI could not be reached at {client.base_url}: {exc}")
        except duckdb.Error as exc:
            clikit.fail(f"import stopped, the database could not be written: {str(exc).splitlines()[0]}")
    if as_json:
        clikit.print_json(result.as_dict())
    else:
        for err in result.errors:
            typer.echo(f"error: {err.get('id') or 'line ' + str(err.get('line'))}: {err['error']}", err=True)
        typer.echo(f"imported {result.imported} of {result.listed} stored completions from OpenAI"
                   + (f", {result.skipped} already here" if result.skipped else "")
                   + (f", {result.failed} failed" if result.failed else ""))
    if result.failed:
        raise typer.Exit(1)


__all__ = ["app", "parse_metadata", "parse_time"]
