"""Eval run reports: the data (:mod:`.data`) and its renderings (:mod:`.markdown`, :mod:`.html`, :mod:`.json`).

Imports go one way: the renderers read the plain dict that :func:`report_data` builds (and the
formatting in :mod:`.text`); :func:`render_report` picks one. Nothing below this package imports it.
"""

from __future__ import annotations

from typing import Mapping

from protege.store import Store

from .data import report_data, versions
from .html import render_html
from .json import render_json
from .markdown import render_markdown
from .text import verdicts

FORMATS = {"json": "application/json", "md": "text/markdown; charset=utf-8", "html": "text/html; charset=utf-8"}

_RENDERERS = {"json": render_json, "md": render_markdown, "html": render_html}


def render_report(store: Store, run_id: str, fmt: str = "html", *, prices: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """The report of a scored run in one of :data:`FORMATS`."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    data = report_data(store, run_id, prices=prices, include_items=fmt == "json")
    return _RENDERERS[fmt](data)


__all__ = ["FORMATS", "render_html", "render_json", "render_markdown", "render_report", "report_data", "verdicts",
           "versions"]
