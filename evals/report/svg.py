"""Tiny inline SVG charts, so an HTML report opens offline with no script, font or stylesheet to fetch.

Every label goes through :func:`html.escape`: metric names, candidate names and class labels come
from users and model outputs.
"""

from __future__ import annotations

from html import escape
from typing import Sequence

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")


def _svg(width: int, height: int, body: str, title: str) -> str:
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>{body}</svg>'
    )


def _num(v: float) -> str:
    return f"{v:.3f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:.0f}"


def bar_chart(
    rows: Sequence[tuple[str, float | None, float | None, float | None]], title: str, *, vmax: float = 1.0,
    width: int = 560,
) -> str:
    """Horizontal bars (label, value, ci_low, ci_high) on a 0..vmax axis with CI whiskers."""
    label_w, bar_h, gap, top = 150, 18, 8, 24
    plot_w = width - label_w - 60
    height = top + len(rows) * (bar_h + gap) + 20
    vmax = max([vmax] + [v for _, v, _, hi in rows for v in (v, hi) if v is not None]) or 1.0
    x = lambda v: label_w + plot_w * max(0.0, v) / vmax  # noqa: E731
    parts = [f'<text x="4" y="14" font-size="12" font-weight="bold">{escape(title)}</text>']
    for i, (label, value, low, high) in enumerate(rows):
        y = top + i * (bar_h + gap)
        color = PALETTE[i % len(PALETTE)]
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_h - 5}" font-size="11" text-anchor="end">{escape(label[:24])}</text>')
        if value is None:
            parts.append(f'<text x="{label_w + 4}" y="{y + bar_h - 5}" font-size="11" fill="#777">n/a</text>')
            continue
        parts.append(f'<rect x="{label_w}" y="{y}" width="{x(value) - label_w:.1f}" height="{bar_h}" fill="{color}" opacity="0.85"/>')
        if low is not None and high is not None:
            cy = y + bar_h / 2
            parts.append(
                f'<path d="M{x(low):.1f} {cy}H{x(high):.1f}M{x(low):.1f} {cy - 5}V{cy + 5}M{x(high):.1f} {cy - 5}V{cy + 5}" '
                'stroke="#222" stroke-width="1.5" fill="none"/>'
            )
        parts.append(f'<text x="{max(x(value), x(high) if high is not None else 0) + 4:.1f}" y="{y + bar_h - 5}" font-size="11">{_num(value)}</text>')
    axis_y = top + len(rows) * (bar_h + gap)
    parts.append(f'<line x1="{label_w}" y1="{axis_y}" x2="{label_w + plot_w}" y2="{axis_y}" stroke="#999"/>')
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<text x="{x(t * vmax):.1f}" y="{axis_y + 13}" font-size="9" text-anchor="middle" fill="#555">{_num(t * vmax)}</text>')
    return _svg(width, height, "".join(parts), title)


def histogram(edges: Sequence[float], counts: Sequence[int], title: str, *, color: str = PALETTE[0], width: int = 260) -> str:
    """Item-score distribution: one bar per bin, its count written above it (items, not a share)."""
    height, top, bottom, left = 142, 32, 18, 8
    plot_h, plot_w = height - top - bottom, width - 2 * left
    n = max(len(counts), 1)
    peak = max(counts) if counts and max(counts) > 0 else 1
    bw = plot_w / n
    total = sum(counts)
    parts = [f'<text x="{left}" y="13" font-size="11" font-weight="bold">{escape(title)}</text>',
             f'<text x="{left + plot_w}" y="13" font-size="9" fill="#555" text-anchor="end">{total} items</text>']
    for i, c in enumerate(counts):
        h = plot_h * c / peak
        parts.append(
            f'<rect x="{left + i * bw + 1:.1f}" y="{top + plot_h - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" fill="{color}">'
            f'<title>{_num(edges[i])}-{_num(edges[i + 1])}: {c}</title></rect>'
        )
        if c:
            parts.append(f'<text class="count" x="{left + i * bw + bw / 2:.1f}" y="{top + plot_h - h - 3:.1f}" font-size="9" '
                         f'text-anchor="middle">{c}</text>')
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>')
    parts.append(f'<text x="{left}" y="{height - 4}" font-size="9" fill="#555">{_num(edges[0]) if edges else 0}</text>')
    parts.append(f'<text x="{left + plot_w}" y="{height - 4}" font-size="9" fill="#555" text-anchor="end">{_num(edges[-1]) if edges else 1}</text>')
    return _svg(width, height, "".join(parts), title)


SHORT_LABEL = 10  # labels up to this long are written on the axes; longer ones get keys and a legend


def normalise_label(label: object) -> str:
    """A label as shown: whitespace runs (newlines in a whole-output label) collapsed to one space."""
    return " ".join(str(label).split())


def label_keys(labels: Sequence[object]) -> tuple[list[str], bool]:
    """What the axes show for each label: the normalised labels when all are short, else keys
    ``A, B, ..., Z, AA, ...`` (True: the caller prints the legend, :func:`legend_rows`)."""
    shown = [normalise_label(lab) for lab in labels]
    if all(len(s) <= SHORT_LABEL for s in shown):
        return shown, False
    return [_key(i) for i in range(len(shown))], True


def _key(i: int) -> str:
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = chr(65 + r) + out
    return out


def disagreements(matrix: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(off-diagonal items, all items) of a confusion matrix."""
    total = sum(v for row in matrix for v in row)
    agree = sum(row[i] for i, row in enumerate(matrix) if i < len(row))
    return total - agree, total


def heatmap(labels: Sequence[str], matrix: Sequence[Sequence[int]], title: str, *, cell: int = 34) -> str:
    """Confusion matrix: rows are the reference label, columns the predicted label. Short labels are
    written in full on both axes (cells widen to fit them); long ones are keys (:func:`label_keys`)."""
    n = len(labels)
    keys, _ = label_keys(labels)
    longest = max((len(k) for k in keys), default=1)
    cell = max(cell, int(6.2 * longest) + 10)
    left, top = max(40, int(6.2 * longest) + 16), 40
    width, height = max(left + n * cell + 10, 240), top + n * cell + 30
    peak = max((v for row in matrix for v in row), default=0) or 1
    parts = [f'<text x="4" y="14" font-size="12" font-weight="bold">{escape(title)}</text>',
             f'<text x="{left}" y="30" font-size="10" fill="#555">predicted →</text>']
    for j, key in enumerate(keys):
        parts.append(f'<text class="col" x="{left + j * cell + cell / 2}" y="{top + n * cell + 14}" font-size="10" '
                     f'text-anchor="middle">{escape(key)}</text>')
    for i, row in enumerate(matrix):
        parts.append(f'<text class="row" x="{left - 6}" y="{top + i * cell + cell / 2 + 4}" font-size="10" '
                     f'text-anchor="end">{escape(keys[i])}</text>')
        for j, v in enumerate(row):
            shade = int(255 - 200 * v / peak)
            fill = f"rgb({shade},{shade},255)" if i != j else f"rgb({shade},255,{shade})"
            parts.append(
                f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell - 1}" height="{cell - 1}" fill="{fill}">'
                f'<title>{escape(normalise_label(labels[i]))} → {escape(normalise_label(labels[j]))}: {v}</title></rect>'
                f'<text x="{left + j * cell + cell / 2}" y="{top + i * cell + cell / 2 + 4}" font-size="10" text-anchor="middle">{v}</text>'
            )
    return _svg(width, height, "".join(parts), title)


__all__ = ["SHORT_LABEL", "bar_chart", "disagreements", "heatmap", "histogram", "label_keys", "normalise_label"]
