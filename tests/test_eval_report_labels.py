"""The HTML report of a classification run reads well: confusion-matrix labels in full (or keys with
a legend when they are long), "N of M disagreements", and histograms that show their counts.

A real run on a real store, on each backend (the student is the fake OpenAI server on 127.0.0.1, called through
the openai SDK), its HTML report parsed with the stdlib HTML parser; a screenshot of it in Debian's
chromium is written to ``$PROTEGE_TEST_ARTIFACTS`` (default tests/artifacts/eval-report) when
chromium is installed.
"""

from __future__ import annotations

import asyncio
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import orjson
import pytest

from protege.evals.report import render_report
from protege.evals.runs import RunSpec, create_run, execute_run
from protege.store import Store
from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.evals import FAST
from tests.fixtures.once import once_per_backend

LABELS = ["positive", "negative", "neutral"]
N = 12
WRONG = {1: "positive", 5: "negative", 9: "neutral"}  # the student's 3 mistakes (item -> its label)
ARTIFACTS = Path(os.environ.get("PROTEGE_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts" / "eval-report")


def gold(i: int) -> str:
    return LABELS[i % 3]


def answer(label: str) -> str:
    return orjson.dumps({"label": label, "confidence": "high"}).decode()


@pytest.fixture
def report_html(backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The "long" and "short" label runs' HTML reports, built once per backend."""
    return once_per_backend(request, "labels", _report_html)


def _report_html(db: str, data_dir: Path) -> dict[str, str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    items = data_dir / "items.jsonl"
    items.write_text("".join(
        orjson.dumps({"messages": [{"role": "user", "content": f"Review {i}: classify it."},
                                   {"role": "assistant", "content": answer(gold(i))}]}).decode() + "\n"
        for i in range(N)))

    def student(body: dict) -> str:
        i = int(re.search(r"Review (\d+)", body["messages"][-1]["content"]).group(1))
        return answer(WRONG.get(i, gold(i)))

    store = Store(db, data_dir=data_dir)
    fake = start_fake_openai(student)
    html = {}
    try:
        # The whole output as the label (long JSON labels), and its "label" field (short labels).
        for kind, metric in (("long", "label_accuracy"), ("short", "label_accuracy:source=json,field=label")):
            run = create_run(store, RunSpec.from_dict({
                "candidates": [{"name": "student", "model": "protege/sentiment", "base_url": fake.base_url}],
                "metrics": [metric], "items_file": str(items), "n_resamples": 50}))
            asyncio.run(execute_run(store, run["id"], policy=FAST))
            html[kind] = render_report(store, run["id"], "html")
    finally:
        fake.stop()
        store.close()
    return html


class Report(HTMLParser):
    """The texts of every SVG (by its title) and of every figure's caption and legend table."""

    def __init__(self) -> None:
        super().__init__()
        self.svgs: list[dict] = []
        self.figures: list[dict] = []
        self._svg: dict | None = None
        self._text: list[str] | None = None
        self._class: str | None = None
        self._cell: list[str] | None = None
        self._caption: list[str] | None = None

    def handle_starttag(self, tag, attrs) -> None:
        a = dict(attrs)
        if tag == "svg":
            self._svg = {"title": a.get("aria-label"), "texts": []}
            self.svgs.append(self._svg)
        elif tag == "text" and self._svg is not None:
            self._text, self._class = [], a.get("class")
        elif tag == "figure":
            self.figures.append({"caption": "", "legend": [], "svg": None})
        elif tag == "figcaption":
            self._caption = []
        elif tag == "tr" and self.figures and a is not None and self._in_figure():
            self.figures[-1]["legend"].append([])
        elif tag in ("td", "th") and self._in_figure():
            self._cell = []

    def _in_figure(self) -> bool:
        return bool(self.figures) and self.figures[-1].get("open", True)

    def handle_endtag(self, tag) -> None:
        if tag == "svg":
            if self.figures and self._in_figure() and self.figures[-1]["svg"] is None:
                self.figures[-1]["svg"] = self._svg
            self._svg = None
        elif tag == "text" and self._text is not None:
            self._svg["texts"].append((self._class, "".join(self._text)))
            self._text = None
        elif tag == "figcaption":
            self.figures[-1]["caption"] = "".join(self._caption)
            self._caption = None
        elif tag in ("td", "th") and self._cell is not None:
            self.figures[-1]["legend"][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "figure":
            self.figures[-1]["open"] = False

    def handle_data(self, data) -> None:
        for buf in (self._text, self._cell, self._caption):
            if buf is not None:
                buf.append(data)


def parsed(html: str) -> Report:
    p = Report()
    p.feed(html)
    return p


def confusion(html: str, system: str) -> dict:
    figs = [f for f in parsed(html).figures if f["svg"] and f["svg"]["title"] == f"Confusion matrix: {system}"]
    assert len(figs) == 1
    return figs[0]


def test_short_labels_are_written_in_full_on_both_axes(report_html: dict[str, str]) -> None:
    fig = confusion(report_html["short"], "student")
    texts = fig["svg"]["texts"]
    cols = [t for c, t in texts if c == "col"]
    rows = [t for c, t in texts if c == "row"]
    assert sorted(cols) == sorted(LABELS) and sorted(rows) == sorted(LABELS)
    assert fig["legend"] == []  # nothing abbreviated, no legend needed
    assert "3 of 12 disagreements" in fig["caption"]


def test_long_labels_get_keys_and_a_legend_with_the_full_label(report_html: dict[str, str]) -> None:
    fig = confusion(report_html["long"], "student")
    texts = fig["svg"]["texts"]
    cols = [t for c, t in texts if c == "col"]
    rows = [t for c, t in texts if c == "row"]
    assert cols == rows == ["A", "B", "C"]
    head, *legend = fig["legend"]
    assert head == ["key", "label", "reference", "predicted"]
    full = {answer(lab) for lab in LABELS}
    assert {row[1] for row in legend} == full  # every label in full, normalised
    assert [row[0] for row in legend] == ["A", "B", "C"]
    assert sum(int(r[2]) for r in legend) == N and sum(int(r[3]) for r in legend) == N
    assert "3 of 12 disagreements" in fig["caption"]
    # The teacher agrees with the reference everywhere.
    teacher = confusion(report_html["long"], "teacher")
    assert "0 of 12 disagreements" in teacher["caption"]


def test_histograms_show_their_counts(report_html: dict[str, str]) -> None:
    p = parsed(report_html["long"])
    hist = [s for s in p.svgs if s["title"] == "student"]
    assert hist, [s["title"] for s in p.svgs]
    for s in hist:
        counts = [int(t) for c, t in s["texts"] if c == "count"]
        assert sum(counts) == N and all(c > 0 for c in counts)
        assert f"{N} items" in [t for _, t in s["texts"]]
    # label_accuracy per item is 0 or 1: 3 wrong, 9 right.
    assert sorted(int(t) for c, t in hist[0]["texts"] if c == "count") == [3, 9]


# A picture of the same HTML whatever the store (the tests above check that HTML on both backends),
# and a chromium start: DuckDB only.
@pytest.mark.backends("duckdb")
def test_screenshot_in_chromium(report_html: dict[str, str], tmp_path: Path) -> None:
    chromium = os.environ.get("PROTEGE_CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).exists():
        pytest.skip(f"no chromium at {chromium}")
    from playwright.sync_api import sync_playwright

    page_file = tmp_path / "report.html"
    page_file.write_text(report_html["long"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                     args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri())
            page.locator("text=Labels: label_accuracy").scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
            # The legend's labels are laid out, not clipped away.
            assert page.locator("table.legend").first.is_visible()
        finally:
            browser.close()
    assert all(u.startswith("file://") for u in requests)  # the report fetches nothing
