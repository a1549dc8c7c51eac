"""What each console page shows, gathered from the store, evals and distill (plain sync functions).

The routes run these in FastAPI's threadpool, never on the event loop: every call here may wait on
DuckDB. Nothing here writes SQL; the store's query functions do (store/traffic.py for the traffic
and overview pages), and changes go through the same public functions the HTTP API uses.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from protege.store import Store, get_record
from protege.store import traffic as store_traffic

from . import charts


# -- overview -----------------------------------------------------------------------------------

WINDOWS = {"1h": (3600, 60), "24h": (86_400, 900), "7d": (7 * 86_400, 3600)}


def overview(store: Store, window: str = "1h", now: float | None = None) -> dict[str, Any]:
    span, bucket = WINDOWS.get(window, WINDOWS["1h"])
    now = time.time() if now is None else now
    ov = store_traffic.overview(store, now - span, bucket)
    per_min = bucket / 60
    # Every bucket of the window, quiet ones as zero, so the x axis is the whole window.
    seen = {b["t"]: b for b in ov["buckets"]}
    first = int((now - span) // bucket) * bucket
    full = [seen.get(t) or {"t": t, "requests": 0, "errors": 0, "tokens": 0, "p50_ms": None, "p95_ms": None}
            for t in range(first, int(now) + 1, bucket)]
    rpm = [(b["t"], b["requests"] / per_min) for b in full]
    err = [(b["t"], b["errors"] / b["requests"] * 100 if b["requests"] else 0.0) for b in full]
    lat = [("p50", [(b["t"], b["p50_ms"]) for b in full]), ("p95", [(b["t"], b["p95_ms"]) for b in full])]
    tok = [(b["t"], float(b["tokens"])) for b in full]
    ov["rpm"] = ov["requests"] / (span / 60)
    xr = (float(first), float(now))
    ov["charts"] = {
        "requests": charts.responsive([("requests/min", rpm)], "Requests per minute", x_label=charts.clock, x_range=xr),
        "errors": charts.responsive([("error %", err)], "Error rate (%)", x_label=charts.clock, y_max=1.0, y_unit="%", x_range=xr),
        "latency": charts.responsive(lat, "Latency percentiles (ms)", x_label=charts.clock, x_range=xr),
        "tokens": charts.responsive([("tokens", tok)], "Tokens per bucket", x_label=charts.clock, x_range=xr),
    }
    ov["savings"] = savings(store, now - span)
    ov["window"] = window
    ov["bucket_s"] = bucket
    return ov


def savings(store: Store, since: float | None) -> dict[str, Any]:
    """What answers served by students would have cost at the teacher's price, against their own."""
    from protege.evals.pricing import cost, price_for

    rows = []
    saved = 0.0
    for r in store_traffic.student_usage(store, since):
        tp, sp = price_for(r["teacher_model"]), price_for(r["student_model"])
        teacher_cost = cost(r["prompt_tokens"], r["completion_tokens"], tp)
        student_cost = cost(r["prompt_tokens"], r["completion_tokens"], sp)
        diff = None if teacher_cost is None or student_cost is None else teacher_cost - student_cost
        saved += diff or 0.0
        rows.append({**r, "teacher_cost": teacher_cost, "student_cost": student_cost, "saved": diff})
    return {"rows": rows, "saved": saved}


# -- traffic ------------------------------------------------------------------------------------


def capture(store: Store, completion_id: str) -> dict[str, Any] | None:
    from protege.store.feedback import list_feedback

    from .render import capture_view

    rec = get_record(store, completion_id)
    if rec is None:
        return None
    rec["metadata"] = orjson.loads(rec["metadata"] or "{}")
    page = list_feedback(store, completion_id=completion_id, limit=100, order="desc")
    return {"record": rec, "view": capture_view(rec), "feedback": page.data}


# -- datasets -----------------------------------------------------------------------------------


def dataset_detail(store: Store, dataset_id: str) -> dict[str, Any] | None:
    from protege.distill.datasets.builder import get_dataset
    from protege.distill.datasets.card import STEP_TITLES
    from protege.evals.report.svg import bar_chart

    dv = get_dataset(store, dataset_id)
    if dv is None:
        return None
    d = dv.to_dict()
    steps = [(STEP_TITLES.get(k, k), v) for k, v in d["counts"].items()]
    # The answers' labels by the one label rule (the card's distribution; free-form answers have
    # none), and apart from them the labels the split was stratified or grouped by.
    dist = d["stats"].get("label_distribution") or {}
    label_rows = [] if dist.get("free_form") else [(str(x["label"]), int(x["train"]), int(x["validation"])) for x in dist.get("labels") or []]
    split = d["stats"].get("labels") or {}
    split_rows = sorted(((str(k), int(v[0]), int(v[1])) for k, v in split.items()), key=lambda r: -(r[1] + r[2]))
    total = sum(tr + va for _, tr, va in label_rows) or 1
    chart = bar_chart([(lab, (tr + va) / total, None, None) for lab, tr, va in label_rows[:20]], "Label share", vmax=1.0) if label_rows else ""
    card = ""
    if dv.card_path is not None and dv.card_path.exists():
        card = dv.card_path.read_text(encoding="utf-8")
    return {"ds": d, "steps": steps, "labels": label_rows, "label_chart": chart, "split_labels": split_rows,
            "split_source": d["stats"].get("label_source") or d.get("options", {}).get("label_source"), "card": card}


def dataset_file(store: Store, dataset_id: str, which: str) -> tuple[str, str] | None:
    """(path, download name) of one of a version's files, only as recorded in the store."""
    from protege.distill.datasets.builder import get_dataset

    dv = get_dataset(store, dataset_id)
    if dv is None or which not in dv.files:
        return None
    path = dv.files[which]["path"]
    suffix = ".md" if which == "card" else ".jsonl"
    return path, f"{dv.name}-v{dv.version}-{which}{suffix}"


def rebuild_dataset(store: Store, dataset_id: str) -> str:
    """A new version with the same options (it picks up captures, feedback and corrections since)."""
    from protege.distill.datasets.builder import DatasetOptions, build_dataset, get_dataset

    dv = get_dataset(store, dataset_id)
    if dv is None:
        raise LookupError(dataset_id)
    return build_dataset(store, DatasetOptions.from_dict(dv.options)).id


# -- fine-tunes ---------------------------------------------------------------------------------


def job_detail(store: Store, job_id: str) -> dict[str, Any] | None:
    from protege.store import jobs as store_jobs

    job = store_jobs.get_job(store, job_id)
    if job is None:
        return None
    events: list[dict[str, Any]] = []
    after = None
    while len(events) < 5000:  # newest first, a page at a time
        page, more = store_jobs.list_events(store, job_id, after=after, limit=100)
        events += page
        if not more or not page:
            break
        after = page[-1]["id"]
    steps = []
    for ev in reversed(events):
        data = ev.get("data") or {}
        if isinstance(data, dict) and data.get("step") is not None:
            loss = data.get("train_loss", data.get("loss"))
            if isinstance(loss, (int, float)):
                steps.append((float(data["step"]), float(loss), data.get("total_steps"), data.get("valid_loss")))
    total = next((s[2] for s in reversed(steps) if s[2]), None)
    progress = None
    if job["status"] == "succeeded":
        progress = 1.0
    elif steps and total:
        progress = min(1.0, steps[-1][0] / float(total))
    series = [("train loss", [(s, l) for s, l, _t, _v in steps])]
    valid = [(s, float(v)) for s, _l, _t, v in steps if isinstance(v, (int, float))]
    if valid:
        series.append(("valid loss", valid))
    chart = charts.responsive(series, "Training loss by step", y_min=None)
    history = store_jobs.status_history(store, job_id)
    return {"job": job, "events": events, "progress": progress, "loss_chart": chart, "steps": len(steps), "history": history}


# -- evals --------------------------------------------------------------------------------------


def eval_summary(store: Store, run_id: str) -> dict[str, Any] | None:
    from protege.evals.runs import run_object
    from protege.store import evals as store_evals

    run = store_evals.get_run(store, run_id)
    if run is None:
        return None
    return {"run": run_object(store, run), "metrics": _metric_rows(run.get("results"))}


def _metric_rows(results: Any) -> list[dict[str, Any]]:
    """(metric, system, score, CI) rows from a run's cached results (``results["scores"][metric][system]``);
    tolerant of missing parts, since the evals package owns that shape."""
    rows: list[dict[str, Any]] = []
    scores = results.get("scores") if isinstance(results, dict) else None
    if not isinstance(scores, dict):
        return rows
    for metric, per in scores.items():
        for system, m in (per or {}).items():
            if isinstance(m, dict):
                value = m.get("score") if m.get("score") is not None else m.get("mean")
                rows.append({"metric": metric, "system": system, "value": value, "low": m.get("ci_low"), "high": m.get("ci_high")})
    return rows


def eval_report(store: Store, run_id: str) -> str:
    """The evals package's own HTML report (its public ``render_report``)."""
    from protege.evals import render_report

    return render_report(store, run_id, "html")


# -- students and rollouts ----------------------------------------------------------------------


def policies(store: Store) -> list[dict[str, Any]]:
    from protege.distill.auto.status import policy_status
    from protege.store import auto as store_auto

    return [policy_status(store, row) for row in store_auto.list_policies(store)]


def policy_detail(store: Store, ref: str) -> dict[str, Any] | None:
    from protege.distill.auto.agreement import get_comparator
    from protege.distill.auto.status import decision_object, policy_status, route_object
    from protege.distill.auto.policies import stored_policy
    from protege.store import auto as store_auto

    row = store_auto.get_policy(store, ref)
    if row is None:
        return None
    status = policy_status(store, row)
    decisions, _ = store_auto.list_decisions(store, row.id, limit=200)
    routes = [route_object(r) for r in store_auto.list_routes(store, row.id, include_ended=True, limit=50)]
    chart = ""
    try:
        policy = stored_policy(row)
    except Exception:  # an invalid stored spec: show what there is
        policy = None
    threshold = None
    if policy is not None:
        threshold = policy.rollout.agreement_threshold
        # Every answer pair of the policy's traffic (the latest 100k), across its routes and stages.
        pairs = store_traffic.paired_answers_timed(store, policy.match.model, policy.match.metadata, 0)
        compare = get_comparator(policy.rollout.comparison, policy.rollout.similarity_threshold)
        chart = charts.responsive([("agreement", agreement_series(pairs, compare))], "Online agreement over time",
                                  x_label=charts.clock, y_max=1.0, threshold=threshold)
    return {
        "status": status, "decisions": [decision_object(d) for d in decisions], "routes": routes,
        "agreement_chart": chart, "threshold": threshold, "policy_spec": orjson.loads(row.spec or "{}"),
    }


def agreement_series(pairs: list[tuple[int, str, str]], compare: Any, buckets: int = 30) -> list[tuple[float, float | None]]:
    """Agreement rate per time bucket over the paired answers (oldest first)."""
    from protege.distill.auto.agreement import response_text

    if not pairs:
        return []
    t0, t1 = pairs[0][0], pairs[-1][0]
    width = max(1.0, (t1 - t0) / buckets) if t1 > t0 else 1.0
    sums: dict[int, list[int]] = {}
    for t, p, s in pairs:
        b = int((t - t0) // width)
        acc = sums.setdefault(b, [0, 0])
        acc[0] += 1
        acc[1] += bool(compare(response_text(p), response_text(s)))
    return [(t0 + (b + 0.5) * width, agreed / n) for b, (n, agreed) in sorted(sums.items())]


def promote(store: Store, ref: str, stage: str | None) -> dict[str, Any]:
    from protege.distill.auto.rollout import promote as do_promote
    from protege.distill.auto.status import route_object

    return route_object(do_promote(store, ref, stage or None))


def rollback(store: Store, ref: str) -> dict[str, Any]:
    from protege.distill.auto.rollout import rollback as do_rollback
    from protege.distill.auto.status import route_object

    return route_object(do_rollback(store, ref, "manual rollback from the console"))


__all__ = [
    "WINDOWS", "agreement_series", "capture", "dataset_detail", "dataset_file", "eval_report", "eval_summary", "job_detail",
    "overview", "policies", "policy_detail", "promote", "rebuild_dataset", "rollback", "savings",
]
