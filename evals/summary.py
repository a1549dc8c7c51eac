"""The numbers behind every report: scores, intervals, paired comparisons, and the headline.

Two stages. :func:`compute_results` runs once when a run's generation is done (scoring and
bootstraps are the expensive part) and its result is cached on the run. :func:`report_data` adds
what is cheap and may change between reports -- costs from an editable price table, token counts,
latencies, the items themselves -- so a user can re-price a run without re-scoring it.

The headline leads with the three numbers teams judge a student by: task accuracy (the first
metric), prompt length, and inference cost, each relative to the teacher.
"""

from __future__ import annotations

import importlib.metadata
import platform
import statistics
from typing import Any, Mapping, Sequence

from protege.store import Store
from protege.store import evals as db

from .pricing import cost, load_prices, price_for

TEACHER = "teacher"
HIST_BINS = 10
N_DIVERGENT = 10
VERSIONED_PACKAGES = ("protege", "openai", "sacrebleu", "rouge-score", "rapidfuzz", "numpy", "scipy", "scikit-learn", "duckdb")


# ---------------------------------------------------------------------------------------------
# Adapters to the metrics/statistics modules (another area's public surface)


def parse_metric(spec: Any) -> tuple[str, dict[str, Any]]:
    """``"bleu"``, ``"bleu:tokenize=char,lowercase=true"`` or ``{"name": "bleu", ...options}``."""
    if isinstance(spec, Mapping):
        opts = dict(spec)
        return str(opts.pop("name")), opts
    name, _, rest = str(spec).partition(":")
    opts: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        low = value.strip().lower()
        opts[key.strip()] = True if low == "true" else False if low == "false" else _number(value.strip())
    return name.strip(), opts


def _number(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def load_metrics(specs: Sequence[Any]) -> list[Any]:
    from .runs import RunSpecError

    try:
        from .metrics import available_metrics, get_metric
    except ImportError as exc:  # pragma: no cover - the metrics module ships with protege
        raise RunSpecError(f"metrics are unavailable: {exc}") from exc
    out = []
    for spec in specs:
        name, opts = parse_metric(spec)
        try:
            out.append(get_metric(name, **opts))
        except (KeyError, ValueError, TypeError) as exc:
            raise RunSpecError(f"unknown metric or option {spec!r} ({exc}); available: {', '.join(available_metrics())}") from exc
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise RunSpecError(f"metric names must be unique in one run, got {names}")
    return out


def _get(obj: Any, *names: str) -> Any:
    for name in names:
        if isinstance(obj, Mapping) and name in obj:
            return obj[name]
        if hasattr(obj, name):
            return getattr(obj, name)
    return None


def _f(x: Any) -> float | None:
    try:
        return None if x is None else float(x)
    except (TypeError, ValueError):
        return None


def _is_label_metric(metric: Any) -> bool:
    """Label metrics (labels.LabelAccuracy) expose ``report()`` with a confusion matrix and an ``extractor``."""
    return callable(getattr(metric, "report", None)) and getattr(metric, "extractor", None) is not None


# ---------------------------------------------------------------------------------------------
# Stage 1: scores and statistics (cached on the run)


def _histogram(values: Sequence[float]) -> dict[str, Any]:
    counts = [0] * HIST_BINS
    for v in values:
        counts[min(HIST_BINS - 1, max(0, int(v * HIST_BINS)))] += 1
    return {"edges": [i / HIST_BINS for i in range(HIST_BINS + 1)], "counts": counts}


def _label_report(metric: Any, hyps: list[str], refs: list[str]) -> dict[str, Any]:
    report = metric.report(hyps, refs)
    out = {"labels": [str(x) for x in _get(report, "labels") or []],
           "matrix": [[int(v) for v in row] for row in (_get(report, "confusion", "matrix") or [])]}
    for key in ("accuracy", "precision", "recall", "f1", "average", "missing", "n"):
        value = _get(report, key)
        if value is not None:
            out[key] = value
    return out


def _kappa(stats: Any, a: list[str], b: list[str]) -> float | None:
    k = stats.cohen_kappa(a, b)
    return float(k) if isinstance(k, (int, float)) else _f(_get(k, "kappa", "value"))


def _labels_of(metric: Any, texts: list[str]) -> list[str]:
    return [metric.extractor.extract(t) for t in texts]


def compute_results(store: Store, run_id: str) -> dict[str, Any]:
    """Score every system on every metric, bootstrap CIs, paired comparisons with the teacher."""
    from . import scoring, stats

    run = db.get_run(store, run_id)
    if run is None:
        raise KeyError(run_id)
    spec = run["spec"]
    seed, n_resamples = int(spec.get("seed") or 0), int(spec.get("n_resamples") or 1000)
    metrics = load_metrics(spec.get("metrics") or [])
    items = db.list_items(store, run_id)
    refs = [it["reference"] or "" for it in items]
    outputs = {(o["item_id"], o["candidate"]): o for o in db.list_outputs(store, run_id)}
    cand_names = [c["name"] for c in spec["candidates"]]
    hyps: dict[str, list[str]] = {}
    if items and all(it["teacher_output"] is not None for it in items):
        hyps[TEACHER] = [it["teacher_output"] for it in items]
    for name in cand_names:
        # A failed generation scores as an empty answer: a student that errors is not "as good".
        hyps[name] = [
            (outputs[(it["id"], name)]["output"] or "") if outputs.get((it["id"], name), {}).get("status") == "ok" else ""
            for it in items
        ]
    results: dict[str, Any] = {
        "seed": seed, "n_resamples": n_resamples, "n_items": len(items), "systems": list(hyps),
        "reference_kinds": {k: sum(1 for it in items if it["reference_kind"] == k) for k in ("gold", "teacher")},
        "metrics": [], "scores": {}, "paired": {}, "labels": {}, "kappa": {}, "divergent": {},
        "errors": {n: sum(1 for it in items if outputs.get((it["id"], n), {}).get("status") != "ok") for n in cand_names},
    }
    score_rows: list[tuple[str, str, str, float | None]] = []
    # One batch-scoring pass per system (scoring.score_pairs: dedupes identical pairs, shares
    # tokenisation across metrics, parallel for big runs); bootstraps reuse its per-item data.
    scored: dict[str, dict[str, Any]] = {}
    if items:
        for system, h in hyps.items():
            scored[system] = scoring.score_pairs(h, refs, metrics, bootstrap=n_resamples, seed=seed)
    for i, metric in enumerate(metrics):
        name = metric.name
        results["metrics"].append({"name": name, "signature": metric.signature(), "kind": getattr(metric, "kind", "mean"),
                                   "scale": getattr(metric, "scale", "continuous"), "primary": i == 0})
        per: dict[str, Any] = {}
        for system in hyps:
            r = scored[system][name] if items else None
            scores = [float(x) for x in r.items] if r is not None else []
            score_rows += [(it["id"], system, name, x) for it, x in zip(items, scores)]
            per[system] = {
                "n": len(items),
                "score": _f(r.corpus) if r is not None else None,
                "mean": statistics.fmean(scores) if scores else None,
                "ci_low": _f(_get(r.ci, "low")) if r is not None else None,
                "ci_high": _f(_get(r.ci, "high")) if r is not None else None,
                "histogram": _histogram(scores),
            }
        results["scores"][name] = per
        if TEACHER in hyps and items:
            results["paired"][name] = {}
            for cand in cand_names:
                a, b = scored[TEACHER][name], scored[cand][name]
                data_a, data_b = (a.stats, b.stats) if a.kind == "corpus" else (a.items, b.items)
                pr = stats.paired_difference_data(metric, data_a, data_b, seed=seed, n_resamples=n_resamples)
                results["paired"][name][cand] = {
                    "diff": _f(_get(pr, "diff")), "low": _f(_get(pr, "low")), "high": _f(_get(pr, "high")),
                    "p_value": _f(_get(pr, "p_value")), "test": _get(pr, "test"),
                }
        if _is_label_metric(metric) and items:
            results["labels"][name] = {s: _label_report(metric, h, refs) for s, h in hyps.items()}
            if TEACHER in hyps:
                teacher_labels = _labels_of(metric, hyps[TEACHER])
                results["kappa"][name] = {cand: _kappa(stats, teacher_labels, _labels_of(metric, hyps[cand])) for cand in cand_names}
    # Where does each candidate differ most from the teacher? Scored with the primary metric,
    # the teacher's answer as the reference, lowest similarity first.
    if metrics and TEACHER in hyps and items:
        primary = metrics[0]
        for cand in cand_names:
            sims = [float(s) for s in primary.item_scores(hyps[cand], hyps[TEACHER])]
            order = sorted(range(len(items)), key=lambda j: (sims[j], j))[:N_DIVERGENT]
            results["divergent"][cand] = [
                {"item_id": items[j]["id"], "idx": items[j]["idx"], "similarity": sims[j]} for j in order if sims[j] < 1.0
            ]
    db.save_scores(store, run_id, score_rows)
    return results


# ---------------------------------------------------------------------------------------------
# Stage 2: the report's data (prices, usage, latency, items)


def _pct(values: Sequence[float], q: float) -> float | None:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    k = (len(vals) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in VERSIONED_PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def report_data(
    store: Store, run_id: str, *, prices: Mapping[str, Mapping[str, float]] | None = None, include_items: bool = True
) -> dict[str, Any]:
    """Everything a report shows. Raises KeyError for an unknown run, ValueError if not scored yet."""
    from .runs import run_object

    run = db.get_run(store, run_id)
    if run is None:
        raise KeyError(run_id)
    results = run["results"]
    if results is None:
        raise ValueError(f"eval run {run_id} has no results yet (status {run['status']}); run or resume it first")
    prices = prices if prices is not None else load_prices()
    spec = run["spec"]
    items = db.list_items(store, run_id)
    outputs = {(o["item_id"], o["candidate"]): o for o in db.list_outputs(store, run_id)}
    cands = {c["name"]: c for c in spec["candidates"]}
    primary = results["metrics"][0]["name"] if results["metrics"] else None

    usage: dict[str, dict[str, list[Any]]] = {}
    if TEACHER in results["systems"]:
        usage[TEACHER] = {
            "prompt": [it["teacher_prompt_tokens"] for it in items],
            "completion": [it["teacher_completion_tokens"] for it in items],
            "latency": [it["teacher_latency_ms"] for it in items],
            "cost": [cost(it["teacher_prompt_tokens"], it["teacher_completion_tokens"], price_for(it["teacher_model"], prices))
                     for it in items],
            "model": [it["teacher_model"] for it in items],
        }
    for name, cand in cands.items():
        override = ({"input": cand["price_input"], "output": cand["price_output"]}
                    if cand.get("price_input") is not None and cand.get("price_output") is not None else None)
        rows = [outputs.get((it["id"], name)) or {} for it in items]
        ok = [r if r.get("status") == "ok" else {} for r in rows]
        usage[name] = {
            "prompt": [r.get("prompt_tokens") for r in ok],
            "completion": [r.get("completion_tokens") for r in ok],
            "latency": [r.get("latency_ms") for r in ok],
            "cost": [cost(r.get("prompt_tokens"), r.get("completion_tokens"), override or price_for(r.get("model") or cand["model"], prices))
                     if r else None for r in ok],
            "model": [r.get("model") or cand["model"] for r in ok] or [cand["model"]],
        }

    teacher_u = usage.get(TEACHER)
    headline = []
    for system in results["systems"]:
        u = usage[system]
        score = (results["scores"].get(primary) or {}).get(system, {}) if primary else {}
        paired = (results["paired"].get(primary) or {}).get(system) if primary else None
        row: dict[str, Any] = {
            "system": system,
            "model": next((m for m in u["model"] if m), None) if system == TEACHER else cands[system]["model"],
            "metric": primary,
            "accuracy": score.get("score"), "ci_low": score.get("ci_low"), "ci_high": score.get("ci_high"),
            "diff_vs_teacher": paired.get("diff") if paired else None,
            "diff_low": paired.get("low") if paired else None, "diff_high": paired.get("high") if paired else None,
            "p_value": paired.get("p_value") if paired else None,
            "prompt_tokens_mean": _mean(u["prompt"]), "completion_tokens_mean": _mean(u["completion"]),
            "latency_p50_ms": _pct(u["latency"], 0.5), "latency_p95_ms": _pct(u["latency"], 0.95),
            "cost_total_usd": sum(c for c in u["cost"] if c is not None) if any(c is not None for c in u["cost"]) else None,
            "errors": results["errors"].get(system, 0),
            "prompt_tokens_ratio": None, "cost_ratio": None, "priced_items": sum(1 for c in u["cost"] if c is not None),
        }
        if teacher_u is not None:
            tp, sp = _mean(teacher_u["prompt"]), row["prompt_tokens_mean"]
            row["prompt_tokens_ratio"] = sp / tp if tp and sp is not None else None
            # Cost ratio over the items where both costs are known, so missing usage cannot flatter a side.
            both = [(c, t) for c, t in zip(u["cost"], teacher_u["cost"]) if c is not None and t is not None]
            t_sum = sum(t for _, t in both)
            row["cost_ratio"] = sum(c for c, _ in both) / t_sum if both and t_sum > 0 else None
        headline.append(row)

    divergent = {}
    by_id = {it["id"]: it for it in items}
    for cand, rows in (results.get("divergent") or {}).items():
        divergent[cand] = []
        for d in rows:
            it = by_id.get(d["item_id"])
            if it is None:
                continue
            out = outputs.get((it["id"], cand)) or {}
            divergent[cand].append({
                **d, "input": _last_user(it["messages"]), "teacher": it["teacher_output"], "reference": it["reference"],
                "reference_kind": it["reference_kind"], "candidate": out.get("output") if out.get("status") == "ok" else None,
                "error": out.get("error"),
            })

    data: dict[str, Any] = {
        "object": "protege.eval.report",
        "run": run_object(store, run),
        "headline": headline,
        "results": results,
        "divergent": divergent,
        "prices": _used_prices(usage, prices),
        "reproducibility": {
            "seed": results["seed"], "n_resamples": results["n_resamples"],
            "metric_signatures": {m["name"]: m["signature"] for m in results["metrics"]},
            "versions": versions(), "source": spec.get("source"), "reference": spec.get("reference"),
        },
    }
    if include_items:
        scores: dict[tuple[str, str], dict[str, float | None]] = {}
        for s in db.list_scores(store, run_id):
            scores.setdefault((s["item_id"], s["candidate"]), {})[s["metric"]] = s["score"]
        data["items"] = [
            {
                "id": it["id"], "idx": it["idx"], "source_id": it["source_id"], "messages": it["messages"],
                "reference": it["reference"], "reference_kind": it["reference_kind"], "metadata": it["metadata"],
                "teacher": {"output": it["teacher_output"], "model": it["teacher_model"],
                            "prompt_tokens": it["teacher_prompt_tokens"], "completion_tokens": it["teacher_completion_tokens"],
                            "latency_ms": it["teacher_latency_ms"], "scores": scores.get((it["id"], TEACHER), {})},
                "candidates": {
                    name: {k: (outputs.get((it["id"], name)) or {}).get(k) for k in
                           ("status", "output", "model", "latency_ms", "prompt_tokens", "completion_tokens", "attempts", "error")}
                    | {"scores": scores.get((it["id"], name), {})}
                    for name in cands
                },
            }
            for it in items
        ]
    return data


def _used_prices(usage: Mapping[str, Mapping[str, list[Any]]], prices: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    out = {}
    for u in usage.values():
        for model in set(m for m in u["model"] if m):
            p = price_for(model, prices)
            if p is not None:
                out[model] = p
    return out


def _last_user(messages: list[dict[str, Any]]) -> str:
    for msg in reversed(messages or []):
        if msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""




FORMATS = {"json": "application/json", "md": "text/markdown; charset=utf-8", "html": "text/html; charset=utf-8"}


def render_report(store: Store, run_id: str, fmt: str = "html", *, prices: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """The report of a scored run in one of :data:`FORMATS`."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    data = report_data(store, run_id, prices=prices, include_items=fmt == "json")
    if fmt == "json":
        from .report_json import render_json

        return render_json(data)
    if fmt == "md":
        from .report_md import render_markdown

        return render_markdown(data)
    from .report_html import render_html

    return render_html(data)


__all__ = ["FORMATS", "TEACHER", "compute_results", "load_metrics", "parse_metric", "render_report", "report_data", "versions"]
