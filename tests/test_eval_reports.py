"""Reports of a finished run: JSON (everything), Markdown (for a PR), self-contained HTML."""

from __future__ import annotations

import asyncio
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from protege.evals.pricing import DEFAULT_PRICES, PriceTableError, cost, load_prices, price_for
from protege.evals.runs import RunSpec, create_run, execute_run
from protege.evals.report import render_report, report_data
from protege.store import Store, insert_records, record_from_completion
from protege.store import evals as db
from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.evals import FAST, seed_completions, student_reply
from tests.fixtures.once import once_per_backend

HOSTILE = '<script>alert("pwned")</script> | `x` </pre><img src=x onerror=alert(1)>'


@pytest.fixture
def finished(backend: str, request: pytest.FixtureRequest) -> tuple[Store, str]:
    """One completed run: a good student and one that sometimes answers with hostile HTML (built
    once per backend; the store stays open)."""
    return once_per_backend(request, "rep", _finished)


def _finished(path: str, data_dir: Path) -> tuple[Store, str]:
    store = Store(path, data_dir=data_dir)
    seed_completions(store)
    good = student_reply()

    def reply(body: dict) -> str:
        if body["model"] == "bad-model" and "Japan" in body["messages"][-1]["content"]:
            return HOSTILE
        return good(body)

    fake = start_fake_openai(reply)
    try:
        spec = RunSpec.from_dict({
            "candidates": [{"name": "mini", "model": "gpt-4o-mini", "base_url": fake.base_url},
                           {"name": "bad<b>", "model": "bad-model", "base_url": fake.base_url,
                            "price_input": 0.1, "price_output": 0.2}],
            "metrics": ["exact_match", "chrf"], "model": "gpt-4o", "n_resamples": 200, "seed": 7, "name": "geo <v1>",
        })
        run = create_run(store, spec)
        asyncio.run(execute_run(store, run["id"], policy=FAST))
    finally:
        fake.stop()
    return store, run["id"]


def test_headline_numbers(finished) -> None:
    store, run_id = finished
    data = report_data(store, run_id)
    rows = {r["system"]: r for r in data["headline"]}
    assert list(rows) == ["teacher", "mini", "bad<b>"]
    t, m = rows["teacher"], rows["mini"]
    assert t["accuracy"] == 1.0 and m["accuracy"] == pytest.approx(7 / 8) and m["metric"] == "exact_match"
    assert m["diff_vs_teacher"] == pytest.approx(-1 / 8) and 0 <= m["p_value"] <= 1
    assert t["prompt_tokens_mean"] == 120 and t["latency_p50_ms"] == pytest.approx(435.0)
    outs = [o for o in db.list_outputs(store, run_id) if o["candidate"] == "mini"]
    assert m["prompt_tokens_mean"] == pytest.approx(sum(o["prompt_tokens"] for o in outs) / 8)
    assert m["prompt_tokens_ratio"] == pytest.approx(m["prompt_tokens_mean"] / 120)
    teacher_cost = 8 * cost(120, 2, DEFAULT_PRICES["gpt-4o"])
    mini_cost = sum(cost(o["prompt_tokens"], o["completion_tokens"], DEFAULT_PRICES["gpt-4o-mini"]) for o in outs)
    assert t["cost_total_usd"] == pytest.approx(teacher_cost) and m["cost_ratio"] == pytest.approx(mini_cost / teacher_cost)
    # Per-candidate prices override the table (a local student has no list price).
    assert rows["bad<b>"]["cost_ratio"] is not None
    # An edited price table changes the ratio without re-scoring.
    cheaper = report_data(store, run_id, prices=load_prices(overrides={"gpt-4o-mini": {"input": 0.0, "output": 0.0}}))
    assert {r["system"]: r for r in cheaper["headline"]}["mini"]["cost_ratio"] == 0.0
    lat = sorted(o["latency_ms"] for o in outs)
    assert lat[0] <= m["latency_p50_ms"] <= m["latency_p95_ms"] <= lat[-1]


def test_json_report_has_everything(finished) -> None:
    store, run_id = finished
    data = json.loads(render_report(store, run_id, "json"))
    assert data["object"] == "protege.eval.report" and data["run"]["id"] == run_id
    assert len(data["items"]) == 8 and data["items"][1]["candidates"]["bad<b>"]["output"] == HOSTILE
    assert data["items"][0]["teacher"]["scores"]["exact_match"] == 1.0
    rep = data["reproducibility"]
    assert rep["seed"] == 7 and rep["n_resamples"] == 200
    assert "version:" in rep["metric_signatures"]["chrf"] or "sacrebleu" in rep["metric_signatures"]["chrf"]
    assert {"python", "openai", "sacrebleu", "duckdb"} <= set(rep["versions"])
    assert data["results"]["scores"]["chrf"]["mini"]["ci_low"] <= data["results"]["scores"]["chrf"]["mini"]["score"]
    # Deterministic: the same seed gives the same report.
    again = json.loads(render_report(store, run_id, "json"))
    assert again["results"] == data["results"]


def test_markdown_report(finished) -> None:
    store, run_id = finished
    md = render_report(store, run_id, "md")
    lines = md.splitlines()
    assert lines[0].startswith(f"# Eval run `{run_id}`")
    assert lines[2].startswith("- **mini (gpt-4o-mini): exact_match 0.875 vs teacher 1.000")
    assert "## Headline" in md and md.index("## Headline") < md.index("## Metrics")
    html = MarkdownIt("commonmark").enable("table").render(md)
    assert html.count("<table>") >= 4
    # Tables stay tables: every row of a table has the same number of cells.
    for block in re.split(r"\n\n", md):
        rows = [r for r in block.splitlines() if r.startswith("|")]
        if rows:
            assert len({len(re.findall(r"(?<!\\)\|", r)) for r in rows}) == 1, block
    assert "<script" not in html and "<img" not in html and "&lt;script&gt;" in md
    assert "seed: 7" in md and "sacrebleu" in md


class _Checker(HTMLParser):
    VOID = {"meta", "br", "img", "hr", "input", "link", "rect", "path", "line"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()


def test_html_report_is_self_contained_and_escaped(finished) -> None:
    store, run_id = finished
    page = render_report(store, run_id, "html")
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == ["html"] or checker.stack == []
    tags = {t for t, _ in checker.tags}
    assert "svg" in tags and "<svg" in page and "script" not in tags and "img" not in tags and "link" not in tags
    assert not re.search(r"https?://", page)
    assert not any(k in ("src", "href") for _, attrs in checker.tags for k in attrs)
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in page
    assert "bad&lt;b&gt;" in page and "geo &lt;v1&gt;" in page
    # Side by side: the teacher's answer and the student's for the item where they differ.
    assert "Where bad&lt;b&gt; differs most from the teacher" in page and ">Tokyo</pre>" in page
    assert "exact_match (95% CI)" in page and "seed 7" in page


def test_label_metric_confusion_matrix_and_kappa(store_db: str) -> None:
    store = Store(store_db)
    texts = [("great film", "positive"), ("awful", "negative"), ("fine I guess", "neutral"), ("loved it", "positive"),
             ("boring", "negative"), ("meh", "neutral")]
    recs = [record_from_completion(
        {"id": f"c{i}", "model": "gpt-4o", "created": 1_700_000_000 + i,
         "choices": [{"message": {"role": "assistant", "content": lab}}], "usage": {"prompt_tokens": 30, "completion_tokens": 1}},
        {"model": "gpt-4o", "messages": [{"role": "user", "content": t}]}) for i, (t, lab) in enumerate(texts)]
    insert_records(store, recs)
    answers = {t: lab for t, lab in texts} | {"meh": "negative"}
    fake = start_fake_openai(lambda body: answers[body["messages"][-1]["content"]])
    try:
        spec = RunSpec.from_dict({"candidates": [{"name": "s", "model": "gpt-4o-mini", "base_url": fake.base_url}],
                                  "metrics": ["label_accuracy"], "n_resamples": 100})
        run = create_run(store, spec)
        asyncio.run(execute_run(store, run["id"], policy=FAST))
    finally:
        fake.stop()
    res = db.get_run(store, run["id"])["results"]
    lab = res["labels"]["label_accuracy"]["s"]
    assert lab["labels"] == ["negative", "neutral", "positive"]
    assert lab["matrix"] == [[2, 0, 0], [1, 1, 0], [0, 0, 2]]
    assert 0 < res["kappa"]["label_accuracy"]["s"] < 1
    page = render_report(store, run["id"], "html")
    assert "Confusion matrix: s" in page and "macro F1" in page
    md = render_report(store, run["id"], "md")
    assert "| **neutral** | 1 | 1 | 0 |" in md
    store.close()


def test_report_of_unfinished_run_is_refused(store_db: str) -> None:
    store = Store(store_db)
    seed_completions(store, 1)
    run = create_run(store, RunSpec.from_dict({"candidates": [{"model": "m", "base_url": "http://127.0.0.1:9/v1"}],
                                               "model": "gpt-4o"}))
    with pytest.raises(ValueError, match="no results yet"):
        render_report(store, run["id"], "md")
    with pytest.raises(KeyError):
        render_report(store, "evalrun_nope", "md")
    with pytest.raises(ValueError, match="format must be"):
        render_report(store, run["id"], "pdf")
    store.close()


def test_price_table(tmp_path: Path) -> None:
    assert price_for("gpt-4o-mini-2024-07-18") == DEFAULT_PRICES["gpt-4o-mini"]
    assert price_for("gpt-4o-2024-08-06") == DEFAULT_PRICES["gpt-4o"]
    assert price_for("ft:gpt-4o-mini-2024-07-18:acme::abc") == DEFAULT_PRICES["ft:gpt-4o-mini"]
    assert price_for("gpt-4oops") is None and price_for("llama-3-8b") is None and price_for(None) is None
    assert cost(1_000_000, 1_000_000, {"input": 1.0, "output": 2.0}) == 3.0 and cost(None, 1, {"input": 1, "output": 1}) is None
    toml = tmp_path / "prices.toml"
    toml.write_text('[models."llama-3-8b"]\ninput = 0.05\noutput = 0.08\n[models.gpt-4o]\ninput = 2.0\noutput = 8.0\n')
    table = load_prices(toml)
    assert table["llama-3-8b"] == {"input": 0.05, "output": 0.08} and table["gpt-4o"]["input"] == 2.0
    assert price_for("llama-3-8b-instruct", table) == {"input": 0.05, "output": 0.08}
    js = tmp_path / "p.json"
    js.write_text('{"my-student": {"input": 0, "output": 0}}')
    assert load_prices(js)["my-student"] == {"input": 0.0, "output": 0.0}
    js.write_text('{"x": {"input": "cheap", "output": 1}}')
    with pytest.raises(PriceTableError, match="non-numeric"):
        load_prices(js)
    js.write_text('{"x": {"input": 1}}')
    with pytest.raises(PriceTableError, match="needs numeric"):
        load_prices(js)
    with pytest.raises(PriceTableError, match="cannot read"):
        load_prices(tmp_path / "missing.toml")
    toml.write_text("[models\n")
    with pytest.raises(PriceTableError, match="not valid TOML"):
        load_prices(toml)


def test_local_students_cost_nothing_by_default() -> None:
    from protege.evals.pricing import price_for

    assert price_for("protege/topics") == {"input": 0.0, "output": 0.0}
    assert price_for("protege/topics@v2") == {"input": 0.0, "output": 0.0}
    assert price_for("gpt-4o-mini-2024-07-18") == {"input": 0.15, "output": 0.60}
