"""Markdown report, sized for a pull request: the headline first, then the evidence.

Model outputs are quoted inside tables, so pipes, newlines and HTML are neutralised (GitHub renders
inline HTML in Markdown; an output containing ``<script>`` must stay text).
"""

from __future__ import annotations

from html import escape
from typing import Any

import orjson

from ..results import TEACHER
from .svg import disagreements
from .text import fmt, fmt_ci, fmt_diff, fmt_ms, fmt_ratio, fmt_usd, verdicts


def _text(text: Any) -> str:
    """Outside tables: only what could become HTML is neutralised."""
    return escape("" if text is None else str(text), quote=False)


def _cell(text: Any, limit: int = 300) -> str:
    """Inside a table cell: also pipes and line breaks, which would break the row."""
    s = "" if text is None else str(text)
    if len(s) > limit:
        s = s[:limit] + "…"
    return escape(s, quote=False).replace("|", "&#124;").replace("\r", " ").replace("\n", "<br>")


def render_markdown(data: dict[str, Any]) -> str:
    run, res, rep = data["run"], data["results"], data["reproducibility"]
    lines = [f"# Eval run `{run['id']}`" + (f" — {_text(run['name'])}" if run.get("name") else ""), ""]
    lines += [f"- **{_text(v)}**" for v in verdicts(data)]
    lines += ["", "## Headline", "",
              "| system | model | task accuracy | 95% CI | Δ vs teacher (95% CI) | p | prompt tokens (mean) | × teacher | cost | cost × teacher | latency p50 | p95 | answered | errors |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["headline"]:
        diff = "—" if r["system"] == TEACHER else f"{fmt_diff(r['diff_vs_teacher'])} {fmt_ci(r['diff_low'], r['diff_high'])}"
        lines.append(
            f"| {_cell(r['system'])} | {_cell(r['model'])} | {fmt(r['accuracy'])} | {fmt_ci(r['ci_low'], r['ci_high'])} | {diff} | "
            f"{'—' if r['system'] == TEACHER else fmt(r['p_value'])} | {fmt(r['prompt_tokens_mean'], 1)} | "
            f"{fmt_ratio(r['prompt_tokens_ratio'])} | {fmt_usd(r['cost_total_usd'])} | {fmt_ratio(r['cost_ratio'])} | "
            f"{fmt_ms(r['latency_p50_ms'])} | {fmt_ms(r['latency_p95_ms'])} | {fmt(r.get('answered'))} | {r['errors']} |"
        )
    kinds = res.get("reference_kinds") or {}
    primary = data["headline"][0]["metric"] if data["headline"] else None
    lines += ["", f"Task accuracy is **{primary}** against the reference ({kinds.get('gold', 0)} gold, "
              f"{kinds.get('teacher', 0)} teacher answers) over {res['n_items']} items; each system is scored over the "
              "items it answered, and failed calls are counted as errors, not scored. Costs use the price table "
              "below (USD per 1M tokens); edit it with `--prices FILE`.", ""]

    lines += ["## Metrics", "", "| metric | system | answered | errors | score | 95% CI | item mean |", "|---|---|---|---|---|---|---|"]
    for m in res["metrics"]:
        for system, s in res["scores"][m["name"]].items():
            lines.append(f"| {_cell(m['name'])} | {_cell(system)} | {s['n']} | {s.get('errors', 0)} | {fmt(s['score'])} | {fmt_ci(s['ci_low'], s['ci_high'])} | {fmt(s['mean'])} |")
    if any(res["paired"].values()):
        lines += ["", "### Candidate vs teacher (paired)", "", "| metric | candidate | Δ | 95% CI | p | test |", "|---|---|---|---|---|---|"]
        for metric, per in res["paired"].items():
            for cand, p in per.items():
                lines.append(f"| {_cell(metric)} | {_cell(cand)} | {fmt_diff(p['diff'])} | {fmt_ci(p['low'], p['high'])} | {fmt(p['p_value'])} | {_cell(p['test'])} |")
    for metric, per in res.get("labels", {}).items():
        lines += ["", f"### Labels ({_cell(metric)})", ""]
        kappa = res.get("kappa", {}).get(metric) or {}
        lines += ["| system | accuracy | macro P | macro R | macro F1 | κ vs teacher |", "|---|---|---|---|---|---|"]
        for system, rep_ in per.items():
            lines.append(f"| {_cell(system)} | {fmt(rep_.get('accuracy'))} | {fmt(rep_.get('precision'))} | {fmt(rep_.get('recall'))} | "
                         f"{fmt(rep_.get('f1'))} | {fmt(kappa.get(system)) if system != TEACHER else '—'} |")
        for system, rep_ in per.items():
            labels = rep_["labels"]
            off, total = disagreements(rep_["matrix"])
            lines += ["", f"Confusion matrix, {_cell(system)}: {off} of {total} disagreements (rows: reference, columns: predicted)", "",
                      "| | " + " | ".join(_cell(l) for l in labels) + " |", "|---" * (len(labels) + 1) + "|"]
            for lab, row in zip(labels, rep_["matrix"]):
                lines.append(f"| **{_cell(lab)}** | " + " | ".join(str(v) for v in row) + " |")

    for cand, rows in data.get("divergent", {}).items():
        if not rows:
            continue
        lines += ["", f"## Where {_cell(cand)} differs most from the teacher", "",
                  "| # | similarity | input | teacher | candidate |", "|---|---|---|---|---|"]
        for d in rows:
            out = d["candidate"] if d["candidate"] is not None else f"(error: {d.get('error')})"
            lines.append(f"| {d['idx']} | {fmt(d['similarity'])} | {_cell(d['input'], 160)} | {_cell(d['teacher'])} | {_cell(out)} |")

    lines += ["", "## Prices (USD per 1M tokens)", "", "| model | input | output |", "|---|---|---|"]
    for model, p in sorted(data.get("prices", {}).items()):
        lines.append(f"| {_cell(model)} | {p['input']} | {p['output']} |")
    lines += ["", "## Reproducibility", "", f"- seed: {rep['seed']}, bootstrap resamples: {rep['n_resamples']}"]
    lines += [f"- `{_text(name)}`: `{_text(sig)}`" for name, sig in rep["metric_signatures"].items()]
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in rep["versions"].items()))
    lines.append(f"- items: `{_text(orjson.dumps(rep.get('source')).decode())}`, reference: {_text(rep.get('reference'))}")
    return "\n".join(lines) + "\n"


__all__ = ["render_markdown"]
