"""One self-contained HTML file: inline CSS, inline SVG charts, no script and nothing fetched.

It must open offline (attached to a ticket, opened from a laptop with no network) and be safe to
open: every string that came from a user or a model is escaped with :func:`html.escape`.
"""

from __future__ import annotations

from html import escape
from typing import Any

import orjson

from ..results import TEACHER
from . import svg
from .text import fmt, fmt_ci, fmt_diff, fmt_ms, fmt_ratio, fmt_usd, verdicts

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#1d1d1f;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border:1px solid #ddd;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f5f5f7}td.l,th.l{text-align:left}.verdict{background:#f0f6ff;border-left:4px solid #4e79a7;padding:8px 12px;margin:6px 0}
.charts{display:flex;flex-wrap:wrap;gap:12px}.side{display:grid;grid-template-columns:1fr 1fr 1fr;gap:8px;margin:12px 0;border:1px solid #ddd;padding:8px}
.side pre{white-space:pre-wrap;word-break:break-word;background:#fafafa;padding:6px;margin:0;font-size:12px;max-height:320px;overflow:auto}
.muted{color:#666;font-size:12px}figure.confusion{margin:0}figcaption{font-size:13px;margin:4px 0}
table.legend td.l{max-width:480px;word-break:break-word}code{background:#f5f5f7;padding:1px 3px}
"""


def _e(v: Any) -> str:
    return escape("" if v is None else str(v))


def _table(head: list[str], rows: list[list[Any]], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(head))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{_e(c)}</td>' for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _confusion(system: str, labels: list[str], matrix: list[list[int]]) -> str:
    """One system's confusion matrix: the chart, how many items it puts off the diagonal, and a
    legend of the keys when the labels are too long for the axes."""
    off, total = svg.disagreements(matrix)
    keys, legend = svg.label_keys(labels)
    parts = [f'<figure class="confusion"><figcaption>{_e(system)}: <b>{off} of {total} disagreements</b> '
             "(rows: reference, columns: predicted)</figcaption>",
             svg.heatmap(labels, matrix, f"Confusion matrix: {system}")]
    if legend:
        rows = [[k, svg.normalise_label(lab), sum(matrix[i]), sum(row[i] for row in matrix)]
                for i, (k, lab) in enumerate(zip(keys, labels))]
        parts.append(_table(["key", "label", "reference", "predicted"], rows, left=2).replace("<table>", '<table class="legend">', 1))
    parts.append("</figure>")
    return "".join(parts)


def render_html(data: dict[str, Any]) -> str:
    run, res, rep = data["run"], data["results"], data["reproducibility"]
    title = f"Eval run {run['id']}" + (f" — {run['name']}" if run.get("name") else "")
    out = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>",
           f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>"]
    out += [f'<div class="verdict">{_e(v)}</div>' for v in verdicts(data)]

    out.append("<h2>Headline</h2>")
    rows = []
    for r in data["headline"]:
        is_t = r["system"] == TEACHER
        rows.append([
            r["system"], r["model"], fmt(r["accuracy"]), fmt_ci(r["ci_low"], r["ci_high"]),
            "—" if is_t else f"{fmt_diff(r['diff_vs_teacher'])} {fmt_ci(r['diff_low'], r['diff_high'])}",
            "—" if is_t else fmt(r["p_value"]), fmt(r["prompt_tokens_mean"], 1), fmt_ratio(r["prompt_tokens_ratio"]),
            fmt_usd(r["cost_total_usd"]), fmt_ratio(r["cost_ratio"]), fmt_ms(r["latency_p50_ms"]), fmt_ms(r["latency_p95_ms"]),
            fmt(r.get("answered")), r["errors"],
        ])
    out.append(_table(["system", "model", "task accuracy", "95% CI", "Δ vs teacher (95% CI)", "p", "prompt tokens",
                       "× teacher", "cost", "cost × teacher", "latency p50", "p95", "answered", "errors"], rows, left=2))
    kinds = res.get("reference_kinds") or {}
    primary = data["headline"][0]["metric"] if data["headline"] else None
    out.append(f'<p class="muted">Task accuracy is <code>{_e(primary)}</code> against the reference '
               f'({kinds.get("gold", 0)} gold, {kinds.get("teacher", 0)} teacher answers) over {res["n_items"]} items; '
               "each system is scored over the items it answered, and failed calls are counted as errors, not scored. "
               "Costs use the price table below (USD per 1M tokens).</p>")

    out.append("<h2>Metrics</h2><div class=\"charts\">")
    for m in res["metrics"]:
        per = res["scores"][m["name"]]
        bars = [(system, s["score"], s["ci_low"], s["ci_high"]) for system, s in per.items()]
        out.append(svg.bar_chart(bars, f"{m['name']} (95% CI)"))
    out.append("</div>")
    table_rows = [[m["name"], system, s["n"], s.get("errors", 0), fmt(s["score"]), fmt_ci(s["ci_low"], s["ci_high"]), fmt(s["mean"])]
                  for m in res["metrics"] for system, s in res["scores"][m["name"]].items()]
    out.append(_table(["metric", "system", "answered", "errors", "score", "95% CI", "item mean"], table_rows, left=2))
    paired_rows = [[metric, cand, fmt_diff(p["diff"]), fmt_ci(p["low"], p["high"]), fmt(p["p_value"]), p["test"]]
                   for metric, per in res["paired"].items() for cand, p in per.items()]
    if paired_rows:
        out.append("<h3>Candidate vs teacher (paired)</h3>")
        out.append(_table(["metric", "candidate", "Δ", "95% CI", "p", "test"], paired_rows, left=2))

    out.append("<h2>Score distributions</h2>")
    for m in res["metrics"]:
        out.append(f"<h3>{_e(m['name'])}</h3><div class=\"charts\">")
        for i, (system, s) in enumerate(res["scores"][m["name"]].items()):
            h = s["histogram"]
            out.append(svg.histogram(h["edges"], h["counts"], system, color=svg.PALETTE[i % len(svg.PALETTE)]))
        out.append("</div>")

    for metric, per in res.get("labels", {}).items():
        out.append(f"<h2>Labels: {_e(metric)}</h2>")
        kappa = res.get("kappa", {}).get(metric) or {}
        out.append(_table(["system", "accuracy", "macro P", "macro R", "macro F1", "κ vs teacher"], [
            [system, fmt(r.get("accuracy")), fmt(r.get("precision")), fmt(r.get("recall")), fmt(r.get("f1")),
             "—" if system == TEACHER else fmt(kappa.get(system))] for system, r in per.items()]))
        out.append('<div class="charts">')
        for system, r in per.items():
            out.append(_confusion(system, r["labels"], r["matrix"]))
        out.append("</div>")

    for cand, rows_ in data.get("divergent", {}).items():
        if not rows_:
            continue
        out.append(f"<h2>Where {_e(cand)} differs most from the teacher</h2>")
        for d in rows_:
            cand_out = d["candidate"] if d["candidate"] is not None else f"(error: {d.get('error')})"
            ref = "" if d["reference_kind"] != "gold" else f'<p class="muted">gold reference: {_e(d["reference"])}</p>'
            out.append(
                f'<p class="muted">item {d["idx"]} — similarity {fmt(d["similarity"])}</p>{ref}<div class="side">'
                f"<div><b>input</b><pre>{_e(d['input'])}</pre></div>"
                f"<div><b>teacher</b><pre>{_e(d['teacher'])}</pre></div>"
                f"<div><b>{_e(cand)}</b><pre>{_e(cand_out)}</pre></div></div>"
            )

    out.append("<h2>Prices (USD per 1M tokens)</h2>")
    out.append(_table(["model", "input", "output"], [[m, p["input"], p["output"]] for m, p in sorted(data.get("prices", {}).items())]))
    out.append("<h2>Reproducibility</h2><ul>")
    out.append(f"<li>seed {_e(rep['seed'])}, bootstrap resamples {_e(rep['n_resamples'])}</li>")
    out += [f"<li><code>{_e(n)}</code>: <code>{_e(s)}</code></li>" for n, s in rep["metric_signatures"].items()]
    out.append("<li>versions: " + _e(", ".join(f"{k} {v}" for k, v in rep["versions"].items())) + "</li>")
    out.append(f"<li>items: <code>{_e(orjson.dumps(rep.get('source')).decode())}</code>, reference: {_e(rep.get('reference'))}</li></ul>")
    out.append("</body></html>\n")
    return "".join(out)


__all__ = ["render_html"]
