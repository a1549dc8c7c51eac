"""`protege <noun> <verb>`: the command line. Each area contributes its own Typer group."""

from __future__ import annotations

import logging
import shutil
import sys
from typing import Any, Optional

import typer

from . import clikit
from .settings import load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Capture LLM traffic and distill it into smaller models.")


@app.callback()
def _root(
    db: Optional[str] = typer.Option(None, "--db", help="DuckDB file (default protege.duckdb); also accepted after the subcommand."),
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
    from protege.store import JournalInUseError, StoreLockedError
    from protege.store.served import read_record

    from .app import serve as run
    from .startup import StartupError, check_exposure, split_upstream

    running = read_record(settings.db)
    if running is not None:
        clikit.fail(f"{settings.db} is already served by PID {running['pid']} at {running['url']}; "
                    "stop that server first, or pass another --db")
    try:
        check_exposure(settings)
        split_upstream(settings)
        run(settings)
    # Each is one line already: a refused setting, a DuckDB file held by a process that is not a
    # server (a CLI command, a worker), another replica on this data dir.
    except (StartupError, StoreLockedError, JournalInUseError) as exc:
        clikit.fail(str(exc))


def _mount_groups() -> None:
    """Each area's Typer group, mounted if present (areas own their commands)."""
    import importlib

    for module, name in (
        ("protege.store.cli", "completions"),
        ("protege.store.backup_cli", "store"),
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


def main(argv: list[str] | None = None) -> None:
    """``protege ...``: run the command here, or, when a live ``protege serve`` holds the selected
    database and the command opens the store, in that server (protege/remote.py)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from protege.store.served import read_record

    from . import cli_tree

    args = cli_tree.hoist_root_options(command(), list(sys.argv[1:] if argv is None else argv))
    root, rest = cli_tree.split_root_options(command(), args)
    try:
        record = read_record(load_settings(db=root.get("db"), data_dir=root.get("data_dir")).db)
    except Exception:  # noqa: BLE001 - bad settings: the command itself reports them, as before
        record = None
    clikit.forward_to(record)
    columns = shutil.get_terminal_size().columns
    try:
        command().main(args, prog_name=PROG, terminal_width=cli_tree.help_width(columns))
    except clikit.ServedElsewhere as exc:
        from . import remote

        sys.exit(remote.run(exc.record, rest, columns=columns))


PROG = "protege"
_command: Any = None


def command() -> Any:
    """The whole CLI as one click command tree, built once and made to read well at any width
    (protege/cli_tree.py): what ``main()`` runs and what the server runs for POST /protege/v1/cli."""
    global _command
    if _command is None:
        from . import cli_tree

        _command = cli_tree.prepare(typer.main.get_command(app))
    return _command
