"""`protege feedback add|list`: feedback on captured completions."""

from __future__ import annotations

import typer

from protege import clikit
from protege.store.feedback import add_feedback, list_feedback

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Feedback on captured completions (scores, labels, corrections).")


def _line(fb: dict) -> str:
    parts = [fb["id"], fb["completion_id"]]
    for key in ("score", "label", "accepted"):
        if fb.get(key) is not None:
            parts.append(f"{key}={fb[key]}")
    if fb.get("correction") is not None:
        parts.append("correction=" + repr(fb["correction"][:60]))
    if fb.get("comment"):
        parts.append("comment=" + repr(fb["comment"][:60]))
    return "  ".join(parts)


@app.command()
def add(
    completion_id: str = typer.Argument(..., help="The completion's id (chatcmpl-...)."),
    score: float | None = typer.Option(None, help="A score (e.g. 0..1)."),
    label: str | None = typer.Option(None, help="A label (e.g. the right class)."),
    correction: str | None = typer.Option(None, help="The corrected answer; replaces the teacher's in datasets."),
    comment: str | None = typer.Option(None, help="Free text."),
    accept: bool | None = typer.Option(None, "--accept/--reject", help="Accept or reject the answer (preference pairs)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Record feedback on a stored completion."""
    if all(v is None for v in (score, label, correction, comment, accept)):
        clikit.fail("give at least one of --score, --label, --correction, --comment, --accept/--reject")
    store = clikit.open_cli_store()
    try:
        fb = add_feedback(store, completion_id, score=score, label=label, correction=correction, comment=comment, accepted=accept, source="cli")
    finally:
        store.close()
    if fb is None:
        clikit.fail(f"no completion with id {completion_id!r}")
    if json_out:
        clikit.print_json(fb)
    else:
        typer.echo(_line(fb))


@app.command("list")
def list_cmd(
    completion_id: str | None = typer.Option(None, "--completion", help="Only feedback on this completion."),
    label: str | None = typer.Option(None, help="Only this label."),
    min_score: float | None = typer.Option(None, "--min-score", help="Only scores at or above."),
    limit: int = typer.Option(100, help="At most this many."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Feedback, oldest first."""
    store = clikit.open_cli_store()
    try:
        page = list_feedback(store, completion_id=completion_id, label=label, min_score=min_score, limit=limit)
    finally:
        store.close()
    if json_out:
        clikit.print_json({"object": "list", "data": page.data, "has_more": page.has_more})
        return
    if not page.data:
        typer.echo("no feedback")
    for fb in page.data:
        typer.echo(_line(fb))
