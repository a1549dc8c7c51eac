"""The dataset card (README.md written beside the JSONL files).

A dataset is only reusable if one can tell what went into it: which filters, how many rows each
step removed, how labels are distributed, how many tokens it holds and what training would cost.
"""

from __future__ import annotations

from typing import Any

import orjson

STEP_TITLES = {
    "selected": "Selected (model, metadata, time range)",
    "status_ok": "Successful (outcome ok)",
    "finish_reason": "Finished (not truncated)",
    "no_refusal": "Not a refusal",
    "min_score": "Feedback score / not rejected",
    "exact_dedupe": "Exact duplicates removed",
    "valid": "Valid examples (format checks)",
    "near_dedupe": "Near duplicates removed",
    "final": "Final examples",
    "train": "Train",
    "validation": "Validation",
    "pairs": "Preference pairs",
}


def _label_distribution(dist: dict[str, Any] | None) -> list[str]:
    """The answers' classes, as the label metrics read them: count and share per label and split."""
    if not dist or not dist.get("examples"):
        return []
    distinct = f"{dist['distinct']}{'+' if dist.get('distinct_is_lower_bound') else ''}"
    lines = [
        "",
        "## Label distribution",
        "",
        f"The teacher's answers read as labels (normalised as `label_accuracy` reads them): {distinct} distinct in {dist['examples']} examples.",
    ]
    if dist.get("free_form"):
        lines.append("The answers look free-form, not a label-like task: the table shows the most frequent answers only.")
    lines += ["", "| Label | Count | Share | Train | Validation |", "|---|---:|---:|---:|---:|"]
    for row in dist.get("labels", []):
        label = str(row["label"]).replace("|", "\\|").replace("\n", " ") or "(empty)"
        lines.append(f"| {label} | {row['count']} | {row['share']:.1%} | {row['train']} | {row['validation']} |")
    other = dist.get("other")
    if other:
        lines.append(f"| ({other['labels']} more labels) | {other['count']} | {other['share']:.1%} | {other['train']} | {other['validation']} |")
    return lines


def render_card(info: dict[str, Any]) -> str:
    """Markdown for a dataset version (``info`` is :meth:`DatasetVersion.to_dict`)."""
    counts = info.get("counts", {})
    stats = info.get("stats", {})
    lines = [
        f"# Dataset {info['name']} v{info['version']}",
        "",
        f"- id: `{info['id']}`",
        f"- kind: {info.get('kind', 'sft')}",
        f"- created_at: {info['created_at']}",
        "",
        "## Counts after each step",
        "",
        "| Step | Examples |",
        "|---|---:|",
    ]
    for key, value in counts.items():
        lines.append(f"| {STEP_TITLES.get(key, key)} | {value} |")
    scrub = stats.get("scrub")
    if scrub:
        lines += ["", f"PII scrubbed: {scrub.get('examples_changed', 0)} examples had at least one value replaced by a typed placeholder."]
    dropped = stats.get("invalid_dropped") or {}
    if dropped:
        lines += ["", "Invalid examples dropped, by error: " + ", ".join(f"`{k}` {v}" for k, v in sorted(dropped.items()))]
    lines += ["", "## Filters and options", "", "```json", orjson.dumps(info.get("options", {}), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode(), "```"]
    sp = info.get("system_prompt")
    if sp:
        lines += [
            "",
            "## Pruned system prompt",
            "",
            f"Removed from every example that started with it (sha256 `{info.get('system_prompt_sha256')}`); serve the student without it.",
            "",
            "```text",
            sp if len(sp) <= 4000 else sp[:4000] + "\n...",
            "```",
        ]
    lines += _label_distribution(stats.get("label_distribution"))
    labels = stats.get("labels") or {}
    if labels:
        source = (info.get("options") or {}).get("label_source", "feedback")
        lines += ["", f"## Split labels (label_source {source})", "", "| Label | Train | Validation |", "|---|---:|---:|"]
        for label, (tr, va) in sorted(labels.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))[:50]:
            lines.append(f"| {label} | {tr} | {va} |")
        if len(labels) > 50:
            lines.append(f"| ... {len(labels) - 50} more | | |")
    tok = stats.get("tokens") or {}
    if tok:
        lines += ["", "## Tokens", "", "| Split | Examples | Total | Min | Median | Mean | Max | Exact | Estimated |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for split in ("train", "validation"):
            t = tok.get(split)
            if t:
                lines.append(f"| {split} | {t['examples']} | {t['total']} | {t['min']} | {t['median']} | {t['mean']} | {t['max']} | {t['exact']} | {t['estimated']} |")
        lines += ["", "Exact counts come from the captured usage (prompt + completion tokens); estimates (~4 characters a token) cover corrected answers, pruned prompts and captures without usage."]
    est = stats.get("training")
    if est:
        cost = est.get("estimated_cost_usd")
        lines += [
            "",
            "## Training estimate",
            "",
            f"- base model: {est.get('base_model')}",
            f"- epochs: {est.get('epochs')} ({est.get('epochs_source')})",
            f"- billed training tokens: {est.get('training_tokens')}",
            f"- price per 1M tokens: {est.get('price_per_million')}",
            f"- estimated cost: {'unknown' if cost is None else f'${cost:,.2f}'}",
        ]
    val = stats.get("validation") or {}
    if val:
        lines += ["", "## Validation (OpenAI fine-tuning format)", ""]
        for split, rep in val.items():
            state = "ok" if rep.get("ok") else "errors: " + ", ".join(f"`{k}` {v}" for k, v in rep.get("error_counts", {}).items())
            lines.append(f"- {split}: {state}")
    files = info.get("files") or {}
    if files:
        lines += ["", "## Files", "", "| File | Lines | Bytes | sha256 |", "|---|---:|---:|---|"]
        for name, f in files.items():
            lines.append(f"| {name} | {f.get('lines')} | {f.get('bytes')} | `{f.get('sha256')}` |")
    return "\n".join(lines) + "\n"


__all__ = ["render_card"]
