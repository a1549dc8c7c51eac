"""Line charts as inline SVG, rendered on the server like the eval reports' charts (evals/svg.py).

No script draws them, so they work offline and in any browser. Each chart scales to its container
(``viewBox`` with ``width="100%"``) so it reads at 1280 px and on a phone, carries a ``<title>``
and an ``aria-label`` for screen readers, and every point has a ``<title>`` with its exact value.
"""

from __future__ import annotations

import math
import time
from html import escape
from typing import Callable, Sequence

from protege.evals.report.svg import PALETTE

Series = tuple[str, Sequence[tuple[float, float | None]]]  # (name, [(x, y), ...])


def _fmt(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3f}".rstrip("0").rstrip(".") if v != int(v) else str(int(v))


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5, 5 (times a power of ten) at least ``raw``: round axis labels."""
    if raw <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw - 1e-12)


def clock(t: float) -> str:
    """A Unix time as UTC ``HH:MM`` (the charts' x labels for time series)."""
    return time.strftime("%H:%M", time.gmtime(t))


def line_chart(
    series: Sequence[Series], title: str, *, x_label: Callable[[float], str] = _fmt, y_min: float | None = 0.0,
    y_max: float | None = None, threshold: float | None = None, width: int = 640, height: int = 220, y_unit: str = "",
    x_range: tuple[float, float] | None = None,
) -> str:
    """One or more lines over a shared x axis (``x_range``, else the data's); an optional dashed
    horizontal ``threshold`` line."""
    left, right, top, bottom = 52, 14, 26, 30
    pw, ph = width - left - right, height - top - bottom
    pts = [(x, y) for _, s in series for x, y in s if y is not None]
    parts = [f'<text x="4" y="15" font-size="13" font-weight="bold">{escape(title)}</text>']
    if not pts:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" font-size="12" text-anchor="middle" fill="#555">no data yet</text>')
        return _svg(width, height, "".join(parts), title)
    xs = [x for x, _ in pts]
    ys = [y for _, y in pts] + ([threshold] if threshold is not None else [])
    x0, x1 = x_range if x_range is not None else (min(xs), max(xs))
    lo = min(ys) if y_min is None else min(y_min, min(ys))
    hi = max(ys) if y_max is None else max(y_max, max(ys))
    if hi == lo:
        hi = lo + 1
    step = _nice_step((hi - lo) / 4)
    lo, hi = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    n_ticks = max(1, round((hi - lo) / step))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    sx = lambda x: left + pw * (x - x0) / (x1 - x0)  # noqa: E731
    sy = lambda y: top + ph * (1 - (y - lo) / (hi - lo))  # noqa: E731
    for i in range(n_ticks + 1):  # y grid on round numbers
        v = lo + step * i
        y = sy(v)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#444">{escape(_fmt(v) + y_unit)}</text>')
    for i in range(4):  # x ticks
        v = x0 + (x1 - x0) * i / 3
        anchor = "start" if i == 0 else "end" if i == 3 else "middle"
        parts.append(f'<text x="{sx(v):.1f}" y="{height - 10}" font-size="11" text-anchor="{anchor}" fill="#444">{escape(x_label(v))}</text>')
    parts.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#888"/>')
    if threshold is not None:
        y = sy(threshold)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#c0392b" stroke-dasharray="5 4"/>')
        parts.append(f'<text x="{left + pw}" y="{y - 4:.1f}" font-size="11" text-anchor="end" fill="#c0392b">threshold {escape(_fmt(threshold))}</text>')
    legend_x = width - right
    for i, (name, s) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        good = [(x, y) for x, y in s if y is not None]
        if len(good) > 1:
            d = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f} {sy(y):.1f}" for j, (x, y) in enumerate(good))
            parts.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
        if len(good) <= 60:
            for x, y in good:
                parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"><title>{escape(name)} at {escape(x_label(x))}: {escape(_fmt(y) + y_unit)}</title></circle>')
        if len(series) > 1:
            parts.append(f'<text x="{legend_x}" y="{15 + 0}" font-size="11" text-anchor="end" fill="{color}" dx="{-i * 110}">■ {escape(name[:14])}</text>')
    return _svg(width, height, "".join(parts), title)


def responsive(series: Sequence[Series], title: str, **kw: object) -> str:
    """The chart twice: drawn for a wide column and for a phone (360 units wide, so its text stays
    at its own size); the stylesheet shows the one that fits (``.chart-wide`` / ``.chart-narrow``)."""
    wide = line_chart(series, title, **kw)  # type: ignore[arg-type]
    narrow = line_chart(series, title, **{**kw, "width": 360})  # type: ignore[arg-type]
    return f'<div class="chart-wide">{wide}</div><div class="chart-narrow" aria-hidden="true">{narrow}</div>'


def _svg(width: int, height: int, body: str, title: str) -> str:
    return (
        f'<svg class="chart" width="100%" viewBox="0 0 {width} {height}" preserveAspectRatio="xMidYMid meet" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>{body}</svg>'
    )


__all__ = ["clock", "line_chart", "responsive"]
