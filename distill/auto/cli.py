"""`protege auto ...` (policies, status, decisions, manual promote/rollback) and `protege worker`."""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, closing
from datetime import UTC, datetime
from typing import Any, Callable

import typer

from protege import clikit
from protege.distill.auto import rollout
from protege.distill.auto.policies import PolicyError, load_policies_file, policy_object, save_policy
from protege.distill.auto.waiting import reachability_warnings
from protege.distill.auto.status import decision_object, policy_status, route_object
from protege.distill.auto.worker import Worker
from protege.store import auto as store_auto

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Automatic distillation: policies, rollout, decisions.")


def _store() -> AbstractContextManager[Any]:
    """The CLI's store, closed when the command is done with it."""
    return closing(clikit.open_cli_store())


def _print_list(envelope: dict[str, Any], json_out: bool, empty: str | None, line: Callable[[dict[str, Any]], str]) -> None:
    """A list command's output: the list envelope with --json, else one line an item (``empty`` when
    there is none and it says so)."""
    if json_out:
        clikit.print_json(envelope)
        return
    if not envelope["data"] and empty:
        typer.echo(empty)
    for item in envelope["data"]:
        typer.echo(line(item))


def _rollout(action: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A rollout action (promote, rollback) on the store; its refusal is the command's one-line error."""
    with _store() as store:
        try:
            return action(store, *args, **kwargs)
        except rollout.AutoError as exc:
            clikit.fail(str(exc))


def _policy_row(store: Any, ref: str) -> Any:
    row = store_auto.get_policy(store, ref)
    if row is None:
        clikit.fail(f"no policy {ref!r} (see `protege auto list`)")
    return row


def _ts(t: float | None) -> str:
    if not t:
        return "-"
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command("validate")
def validate(file: str = typer.Argument(..., help="Policies TOML file ([[policy]] tables).")) -> None:
    """Check a policies file without touching the store."""
    try:
        policies = load_policies_file(file)
    except PolicyError as exc:
        clikit.fail(exc.message)
    for p in policies:
        for warning in reachability_warnings(p):
            typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"{len(policies)} polic{'y' if len(policies) == 1 else 'ies'} OK: {', '.join(p.name for p in policies)}")


@app.command("apply")
def apply(
    file: str = typer.Argument(..., help="Policies TOML file ([[policy]] tables)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Create or update the policies of a TOML file (matched by name)."""
    try:
        policies = load_policies_file(file)
    except PolicyError as exc:
        clikit.fail(exc.message)
    with _store() as store:
        rows = [save_policy(store, p) for p in policies]
    if json_out:
        clikit.print_json({"object": "list", "data": [policy_object(r) for r in rows]})
        return
    for r in rows:
        typer.echo(f"{r.id}  {r.name}")


@app.command("list")
def list_(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """The stored policies."""
    with _store() as store:
        data = [policy_object(r) for r in store_auto.list_policies(store)]
    _print_list({"object": "list", "data": data}, json_out, "no policies (add some with `protege auto apply policies.toml`)",
                lambda p: f"{p['id']}  {p['name']}  {'enabled' if p['enabled'] else 'disabled'}")


@app.command("show")
def show(policy: str = typer.Argument(..., help="Policy id or name.")) -> None:
    """One policy, as JSON."""
    with _store() as store:
        clikit.print_json(policy_object(_policy_row(store, policy)))


def _set_enabled(policy: str, enabled: bool) -> None:
    import orjson
    with _store() as store:
        row = _policy_row(store, policy)
        store_auto.put_policy(store, row.name, orjson.loads(row.spec) | {"enabled": enabled}, enabled=enabled)
    typer.echo(f"{row.name} {'enabled' if enabled else 'disabled'}")


@app.command("enable")
def enable(policy: str = typer.Argument(..., help="Policy id or name.")) -> None:
    """Let the worker act on this policy again."""
    _set_enabled(policy, True)


@app.command("disable")
def disable(policy: str = typer.Argument(..., help="Policy id or name.")) -> None:
    """Stop starting new cycles for this policy (its live route stays; roll it back to remove it)."""
    _set_enabled(policy, False)


@app.command("delete")
def delete(policy: str = typer.Argument(..., help="Policy id or name.")) -> None:
    """Delete a policy and take its live route down (history stays)."""
    with _store() as store:
        row = _policy_row(store, policy)
        store_auto.delete_policy(store, row.id)
    typer.echo(f"deleted {row.name}")


@app.command("status")
def status(
    policy: str | None = typer.Argument(None, help="Only this policy (id or name)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Per policy: new eligible traffic, the current job, the last evaluation, the live route and its agreement."""
    with _store() as store:
        rows = [_policy_row(store, policy)] if policy else store_auto.list_policies(store)
        data = [policy_status(store, r) for r in rows]
    if json_out:
        clikit.print_json({"object": "list", "data": data})
        return
    if not data:
        typer.echo("no policies")
    for s in data:
        typer.echo(f"{s['name']} ({s['id']}){'' if s['enabled'] else ' [disabled]'}")
        typer.echo(f"  eligible since last run: {s.get('eligible_since_last_run', '?')}")
        w = s.get("waiting")
        typer.echo(f"  worker: {w['message'] if w else 'acts on its next pass'}")
        c = s["cycle"]
        typer.echo(f"  cycle: {'-' if not c else c['id'] + ' ' + c['state'] + (' (' + c['error'] + ')' if c.get('error') else '')}")
        j = s["job"]
        typer.echo(f"  job: {'-' if not j else str(j.get('id')) + ' ' + str(j.get('status', '')) + (' -> ' + j['fine_tuned_model'] if j.get('fine_tuned_model') else '')}")
        e = s["last_evaluation"]
        if e:
            typer.echo(f"  last evaluation: {'PASSED' if e['passed'] else 'FAILED'} on {e['n_items']} held-out items: {e['reason']}")
        else:
            typer.echo("  last evaluation: -")
        r = s["route"]
        if r:
            ag = "n/a" if r["agreement"] is None else f"{r['agreement']:.3f}"
            typer.echo(f"  route: {r['student_model']} stage={r['stage']} percent={r['percent']:g} agreement={ag} over {r['compared']} (threshold {r['threshold']})")
        else:
            typer.echo("  route: - (the teacher answers everything)")


@app.command("decisions")
def decisions(
    policy: str = typer.Argument(..., help="Policy id or name."),
    limit: int = typer.Option(20, min=1, max=1000, help="How many, newest first."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Every decision (gate, select, candidate, advance, rollback) with the numbers behind it."""
    with _store() as store:
        row = _policy_row(store, policy)
        rows, has_more = store_auto.list_decisions(store, row.id, limit=limit)
    data = [decision_object(d) for d in rows]
    envelope = {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": has_more}
    _print_list(envelope, json_out, "no decisions yet", lambda d: f"{_ts(d['created_at'])}  {d['kind']:<15} {d['outcome']:<8} {d['reason']}")


@app.command("promote")
def promote(
    policy: str = typer.Argument(..., help="Policy id or name."),
    stage: str | None = typer.Option(None, "--stage", help="shadow, canary or full (default: the next stage)."),
    force: bool = typer.Option(False, "--force", help="Also a student its gate rejected."),
) -> None:
    """Move the policy's student to the next (or given) stage now."""
    route = _rollout(rollout.promote, policy, stage, force=force)
    typer.echo(f"{route.student_model} is now at stage {route.stage} ({route.percent:g}% served by the student)")


@app.command("rollback")
def rollback(policy: str = typer.Argument(..., help="Policy id or name.")) -> None:
    """Take the policy's student out of the traffic now (the teacher answers everything)."""
    route = _rollout(rollout.rollback, policy)
    typer.echo(f"rolled back {route.student_model}; the teacher answers all matching traffic")


@app.command("routes")
def routes(
    all_: bool = typer.Option(False, "--all", help="Include ended routes."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Live routes (and, with --all, the ended ones)."""
    with _store() as store:
        data = [route_object(r) for r in store_auto.list_routes(store, include_ended=all_)]
    _print_list({"object": "list", "data": data}, json_out, None,
                lambda r: f"{r['id']}  {r['student_model']}  {r['stage']}  {r['percent']:g}%  {'live' if r['active'] else 'ended'}")


_ONCE_MAX_PASSES = 20  # --once: passes after waiting for local training (best policies start several jobs)


def worker(
    policies: str | None = typer.Option(None, "--policies", help="Policies TOML file to load (upserted by name)."),
    interval: float = typer.Option(5.0, "--interval", min=0.05, help="Seconds between passes."),
    once: bool = typer.Option(False, "--once", help="Do what can be done now, then exit."),
) -> None:
    """Run the automatic distillation loop (without the proxy).

    Each pass prints what it did, and for each policy it leaves alone, why (below the trigger,
    min_interval, a fine-tune still running). --once does one pass, and while a local student
    trains in this process waits for it and passes again (so one --once goes from traffic to a
    gated student and its route); a cloud fine-tune is polled, not waited for."""
    settings = clikit.settings()
    policies = policies or settings.policies_file
    if policies:
        try:
            load_policies_file(policies)
        except PolicyError as exc:
            clikit.fail(exc.message)
    logging.getLogger("protege").setLevel(logging.INFO)
    store = clikit.open_cli_store()
    w = Worker(store, settings, interval=interval, policies_file=policies)
    shown: list[str] = []

    def one_pass() -> None:
        nonlocal shown
        for action in w.run_once():
            typer.echo(action)
        if not once:  # a waiting line is printed once, until it changes
            for line in w.waiting:
                if line not in shown:
                    typer.echo(line)
            shown = list(w.waiting)

    try:
        if once:
            one_pass()
            for _ in range(_ONCE_MAX_PASSES):
                if not w.local_jobs_training():
                    break
                w.wait_local_jobs()
                one_pass()
            for line in w.waiting:  # what is left to wait for when this run ends
                typer.echo(line)
            return
        while True:
            one_pass()
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        w.wait_local_jobs()  # a local student still training needs the store to save itself
        store.close()
