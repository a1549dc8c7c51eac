"""A dataset says what it holds and what is wrong with it: the label distribution (the one label
rule), validation problems on `dataset build` (stderr and --json), and a progress bar on terminals."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from protege.distill import DatasetOptions, build_dataset
from protege.store import Store, insert_records
from protege.store.messages import normalise_label
from typer.testing import CliRunner

from protege.cli import app
from tests.fixtures.records import make_record
from tests.fixtures.terminal import run_protege

# Six spellings of two classes: the label metrics read them as spam (4) and ham (2).
ANSWERS = ['{"label": "Spam"}', "spam", "Category: spam.", ' "SPAM" ', '{"label": "ham"}', "label=Ham"]


def _records(n: int) -> list[dict]:
    return [make_record(i, answer=ANSWERS[i % len(ANSWERS)]) for i in range(n)]


def test_label_distribution_uses_the_one_label_rule_in_object_and_card(store_db) -> None:
    store = Store(store_db)
    insert_records(store, _records(60))
    for stratify in (False, True):  # the one-pass and the two-pass build count the same
        dv = build_dataset(store, DatasetOptions(name=f"labels{stratify}", validation_fraction=0.2, seed=1, stratify=stratify,
                                                 label_source="output"))
        dist = dv.to_dict()["stats"]["label_distribution"]
        assert {normalise_label(a) for a in ANSWERS} == {"spam", "ham"}
        assert dist["examples"] == 60 and dist["distinct"] == 2 and dist["free_form"] is False
        rows = {r["label"]: r for r in dist["labels"]}
        assert set(rows) == {"spam", "ham"}
        assert rows["spam"]["count"] == 40 and rows["ham"]["count"] == 20
        assert rows["spam"]["share"] == 0.6667 and rows["ham"]["share"] == 0.3333
        assert rows["spam"]["train"] + rows["spam"]["validation"] == 40
        assert sum(r["validation"] for r in rows.values()) == dv.counts["validation"]
        card = Path(dv.card_path).read_text()
        assert "## Label distribution" in card and "2 distinct in 60 examples" in card
        assert f"| spam | 40 | 66.7% | {rows['spam']['train']} | {rows['spam']['validation']} |" in card
        assert f"| ham | 20 | 33.3% | {rows['ham']['train']} | {rows['ham']['validation']} |" in card
    store.close()


def test_free_form_answers_are_said_to_be_and_capped(store_db) -> None:
    store = Store(store_db)
    insert_records(store, [make_record(i, answer=f"A long free answer number {i}.") for i in range(80)])
    dv = build_dataset(store, DatasetOptions(name="free", validation_fraction=0.1))
    dist = dv.stats["label_distribution"]
    assert dist["free_form"] is True and dist["distinct"] == 80 and len(dist["labels"]) == 50
    assert dist["other"]["labels"] == 30 and dist["other"]["count"] == 30
    card = Path(dv.card_path).read_text()
    assert "look free-form" in card and "| (30 more labels) | 30 | 37.5% |" in card
    store.close()


def _cli(db: str, *args: str):
    return CliRunner().invoke(app, ["--db", str(db), *args])


def test_build_says_what_validation_found_on_stderr_and_in_json(store_db) -> None:
    db = store_db
    store = Store(db)
    recs = _records(6)
    recs.append(make_record(40, user=""))  # empty user content: dropped as missing_content
    recs.append(make_record(41, user="", answer="ham"))
    recs.append(make_record(42, answer=None))  # no content: dropped as message_missing_key
    insert_records(store, recs)
    store.close()

    r = _cli(db, "dataset", "build", "--name", "few", "--validation", "0")
    assert r.exit_code == 0, r.output
    err = r.stderr.splitlines()
    assert "warning: train: 6 examples; fine-tuning needs at least 10" in err
    assert "warning: 2 examples dropped: missing_content" in err
    assert "warning: 1 example dropped: message_missing_key" in err
    assert "validation found 3 kinds of problem" in r.stdout

    r = _cli(db, "dataset", "build", "--name", "few", "--validation", "0", "--json")
    assert r.exit_code == 0, r.output
    dv = orjson.loads(r.stdout)  # stdout is the JSON only; the warnings are on stderr
    kinds = {(p["kind"], p["split"], p["count"], p["dropped"]) for p in dv["problems"]}
    assert kinds == {("too_few_examples", "train", 1, False), ("missing_content", None, 2, True), ("message_missing_key", None, 1, True)}
    assert "warning: train: 6 examples" in r.stderr

    # A clean build says nothing of the kind.
    store = Store(db)
    insert_records(store, [make_record(100 + i, answer=ANSWERS[i % 6]) for i in range(20)])
    store.close()
    r = _cli(db, "dataset", "build", "--name", "clean", "--model", "gpt-4o", "--validation", "0.1", "--since", "1700000100")
    assert r.exit_code == 0, r.output
    assert r.stderr == "" and "problem" not in r.stdout


def _build_process(db: str, *extra: str, tty: bool) -> tuple[int, str, str]:
    """`protege dataset build` as its own process, stderr a pseudo-terminal when ``tty``."""
    return run_protege(["--db", str(db), "dataset", "build", "--name", "bar", *extra], tty=tty)


# The bar does not depend on the store and each run is a CLI process: DuckDB only; `dataset build`
# through the CLI on PostgreSQL is test_build_says_what_validation_found_... and test_dataset_cli.py.
@pytest.mark.backends("duckdb")
def test_progress_bar_on_a_terminal_only_and_json_untouched(store_db) -> None:
    db = store_db
    store = Store(db)
    insert_records(store, _records(30))
    store.close()
    rc, out, err = _build_process(db, "--json", tty=True)
    assert rc == 0, err
    assert "building dataset" in err  # the bar, drawn on the terminal
    assert orjson.loads(out)["counts"]["final"] == 30  # stdout: the JSON and nothing else
    rc, out, err = _build_process(db, tty=False)
    assert rc == 0, err
    assert "building dataset" not in err and err == ""
    assert "bar v2" in out


def test_free_form_batches_stop_reading_labels_but_label_like_ones_never_do(make_db) -> None:
    from protege.distill.datasets.builder import LABEL_SAMPLE

    store = Store(make_db("ff"))
    n = LABEL_SAMPLE + 200
    insert_records(store, [make_record(i, answer=f"Free answer {i}, long enough to be prose.") for i in range(n)])
    dv = build_dataset(store, DatasetOptions(name="ff", validation_fraction=0.1))
    dist = dv.stats["label_distribution"]
    assert dist["examples"] == n and dist["free_form"] is True and dist["distinct_is_lower_bound"] is True
    assert 0 < dist["not_read"] < n - LABEL_SAMPLE + 1 and dist["distinct"] == n - dist["not_read"]
    assert dist["other"]["count"] == n - 50
    store.close()
    # A label-like dataset of the same size is read in full.
    store = Store(make_db("ll"))
    insert_records(store, [make_record(i, answer=ANSWERS[i % 6]) for i in range(n)])
    dist = build_dataset(store, DatasetOptions(name="ll", validation_fraction=0.1)).stats["label_distribution"]
    assert dist["not_read"] == 0 and dist["distinct"] == 2 and dist["free_form"] is False and dist["examples"] == n
    store.close()
