"""``protege students ...``: list students, register endpoint students, promote a version."""

from __future__ import annotations

from typing import Optional

import typer

from protege import clikit
from protege.distill.finetune import students_admin
from protege.distill.finetune.interface import FineTuneError

app = typer.Typer(help="Students: trained versions and students served by other OpenAI-compatible endpoints.", no_args_is_help=True)


def _run(fn, *args, **kwargs):  # type: ignore[no-untyped-def]

    store = clikit.open_cli_store()
    try:
        return fn(store, *args, **kwargs)
    except FineTuneError as exc:
        clikit.fail(exc.message)
    finally:
        store.close()


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Every student: versions (what the gate said, which one the bare name serves) and endpoints."""
    rows = _run(students_admin.list_all)
    if as_json:
        clikit.print_json({"object": "list", "data": rows})
        return
    for r in rows:
        if r["kind"] == "endpoint":
            typer.echo(f"{r['model']}  endpoint  {r['base_url']}  model={r['endpoint_model']}  key=${r['api_key_env'] or '-'}")
        else:
            marks = [m for m, on in (("serves protege/" + r["name"], r["serves_bare_name"]), ("promoted", r["promoted"]),
                                     ("forced", r["forced"]), ("gate pending", r["gate_pending"])) if on]
            typer.echo(f"{r['model']}  {r['kind']}  gate={r['gate'] or '-'}  {'  '.join(marks)}".rstrip())


@app.command("add")
def add(
    name: str = typer.Argument(..., help="Served as protege/NAME."),
    base_url: str = typer.Option(..., "--base-url", help="The endpoint's OpenAI-compatible base URL, e.g. http://127.0.0.1:11434/v1."),
    model: str = typer.Option(..., "--model", help="The model name the endpoint knows."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="NAME of the environment variable holding its key (the key is never stored)."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for an answer."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Register (or update) a student served by another OpenAI-compatible endpoint."""
    out = _run(students_admin.add_endpoint, name=name, base_url=base_url, model=model, api_key_env=api_key_env, timeout=timeout)
    if as_json:
        clikit.print_json(out)
    else:
        typer.echo(f"{out['model']} -> {out['base_url']} (model {out['endpoint_model']})")


@app.command("remove")
def remove(name: str = typer.Argument(..., help="The endpoint student's name.")) -> None:
    """Forget an endpoint student."""
    _run(students_admin.remove_endpoint, name)
    typer.echo(f"removed protege/{name}")


@app.command("promote")
def promote(
    model: str = typer.Argument(..., help="protege/NAME@vN (or NAME@vN)."),
    force: bool = typer.Option(False, "--force", help="Promote a version its gate rejected."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Why (kept with the promotion)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Let the bare name protege/NAME serve this version."""
    out = _run(students_admin.promote, model, force=force, reason=reason)
    if as_json:
        clikit.print_json(out)
    else:
        typer.echo(f"protege/{out['name']} now serves {out['model']}" + (" (forced over its gate's rejection)" if out["forced"] else ""))
