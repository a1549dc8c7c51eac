"""A report's data: the cached scores of a run plus what is cheap and may change between reports.

``results.compute_results`` ran once when the run's generation finished (scoring and bootstraps are
the expensive part). :func:`report_data` adds costs from an editable price table, token counts,
latencies and the items themselves, so a user can re-price a run without re-scoring it.

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
from protege.store.messages import last_user_text

from ..pricing import cost, load_prices, price_for
from ..results import TEACHER
from ..runs import run_object

VERSIONED_PACKAGES = ("protege", "openai", "sacrebleu", "rouge-score", "rapidfuzz", "numpy", "scipy", "scikit-learn", "duckdb")



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
            # Scores are over the answered items; failed outputs are counted here, not scored.
            "errors": results["errors"].get(system, 0),
            "answered": (results.get("answered") or {}).get(system, results["n_items"] - results["errors"].get(system, 0)),
            "n_items": results["n_items"],
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
                **d, "input": last_user_text(it["messages"]), "teacher": it["teacher_output"], "reference": it["reference"],
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


__all__ = ["VERSIONED_PACKAGES", "report_data", "versions"]
