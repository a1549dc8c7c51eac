"""`protege <noun> <verb>`: the command line. Each area contributes its own Typer group."""

from __future__ import annotations

import logging
from typing import Optional

import typer

from . import clikit
from .settings import load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Capture LLM traffic and distill it into smaller models.")


@app.callback()
def _root(
    db: Optional[str] = typer.Option(None, "--db", help="DuckDB file (default protege.duckdb)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Artifacts directory (default beside the db)."),
) -> None:
    clikit.set_settings(load_settings(db=db, data_dir=data_dir))


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Bind address (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default 8000)."),
    upstream: Optional[str] = typer.Option(None, help="OpenAI-compatible upstream base URL."),
    azure_endpoint: Optional[str] = typer.Option(None, help="Azure OpenAI endpoint (instead of --upstream)."),
    azure_auth: Optional[str] = typer.Option(None, help="Azure auth: key or entra."),
    capture: Optional[str] = typer.Option(None, help="What to capture: all, store or none."),
    forward_store: Optional[bool] = typer.Option(None, "--forward-store/--strip-store", help="Forward store/metadata upstream."),
    worker: Optional[bool] = typer.Option(None, "--worker/--no-worker", help="Run the automatic distillation loop too."),
    policies: Optional[str] = typer.Option(None, help="Policies TOML file for the loop."),
    allow_open: bool = typer.Option(
        False, "--allow-open", help="Listen on a non-loopback address with no keys (anyone reaching it can read captures)."
    ),
) -> None:
    """Start the proxy (FastAPI under uvicorn) on the embedded DuckDB store."""
    base = clikit.settings()
    overrides = dict(
        host=host, port=port, upstream=upstream, azure_endpoint=azure_endpoint, azure_auth=azure_auth,
        capture=capture, forward_store=forward_store, run_worker=worker, policies_file=policies, allow_open=allow_open or None,
    )
    settings = base.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    if settings.capture not in ("all", "store", "none"):
        clikit.fail(f"--capture must be all, store or none, not {settings.capture!r}")
    from .app import serve as run
    from .startup import StartupError, check_exposure, split_upstream

    try:
        check_exposure(settings)
        split_upstream(settings)
    except StartupError as exc:
        clikit.fail(str(exc))
    run(settings)


def _mount_groups() -> None:
    """Each area's Typer group, mounted if present (areas own their commands)."""
    import importlib

    for module, name in (
        ("protege.store.cli", "completions"),
        ("protege.distill.datasets.cli", "dataset"),
        ("protege.distill.finetune.cli", "finetune"),
        ("protege.distill.feedback.cli", "feedback"),
        ("protege.evals.cli", "eval"),
        ("protege.distill.auto.cli", "auto"),
        ("protege.distill.finetune.students_cli", "students"),
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            raise
        app.add_typer(mod.app, name=name)
    try:
        worker_mod = importlib.import_module("protege.distill.auto.cli")
        if hasattr(worker_mod, "worker"):
            app.command(name="worker")(worker_mod.worker)
    except ModuleNotFoundError:
        pass


_mount_groups()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
