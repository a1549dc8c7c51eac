"""Number formatting and the one-sentence verdicts, shared by the Markdown and HTML reports."""

from __future__ import annotations

from typing import Any

from ..results import TEACHER


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def fmt_ratio(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}×"


def fmt_usd(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"${v:.4f}" if v < 1 else f"${v:,.2f}"


def fmt_ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f} ms"


def fmt_ci(low: float | None, high: float | None) -> str:
    return "n/a" if low is None or high is None else f"[{low:.3f}, {high:.3f}]"


def fmt_diff(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def answered(row: dict[str, Any]) -> str:
    """``on 7 of 8 items (1 error)``: what a headline score is computed over, errors beside it."""
    n, total, errors = row.get("answered"), row.get("n_items"), row.get("errors") or 0
    if n is None or total is None:
        return f"({errors} error{'s' if errors != 1 else ''})"
    return f"on {n} of {total} items ({errors} error{'s' if errors != 1 else ''})"


def verdicts(data: dict[str, Any]) -> list[str]:
    """One plain sentence per candidate with the three numbers that decide a replacement."""
    rows = {r["system"]: r for r in data["headline"]}
    teacher = rows.get(TEACHER)
    out = []
    for r in data["headline"]:
        if r["system"] == TEACHER:
            continue
        parts = [f"{r['metric']} {fmt(r['accuracy'])}"]
        if teacher is not None and r.get("answered") != 0:
            parts[0] += f" vs teacher {fmt(teacher['accuracy'])} (Δ {fmt_diff(r['diff_vs_teacher'])}, 95% CI {fmt_ci(r['diff_low'], r['diff_high'])}, p={fmt(r['p_value'])})"
        parts[0] += " " + answered(r)
        parts.append(f"prompt tokens {fmt_ratio(r['prompt_tokens_ratio'])} the teacher's")
        parts.append(f"cost {fmt_ratio(r['cost_ratio'])} the teacher's")
        out.append(f"{r['system']} ({r['model']}): " + "; ".join(parts))
    return out


__all__ = ["answered", "fmt", "fmt_ci", "fmt_diff", "fmt_ms", "fmt_ratio", "fmt_usd", "verdicts"]
