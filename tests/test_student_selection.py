"""The classifier student picks its model and regularisation on the validation split, records the
choice with every candidate's validation score, and still answers in about a millisecond."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sklearn.linear_model import SGDClassifier

from protege.distill.finetune import jobs
from protege.distill.finetune.local_student import FastScorer, load_student, train
from protege.store import Store
from tests.fixtures.topics import corpus, json_template, split, write_chat


@pytest.fixture(scope="module")
def pairs():
    tr, va = split(corpus())
    return [(q, json_template(c)) for q, c in tr], [(q, json_template(c)) for q, c in va]


def test_choice_is_made_on_validation_and_beats_the_default(pairs) -> None:
    """On this corpus the default configuration (SGD, alpha 2e-5) is not the best one."""
    tr, va = pairs
    chosen = train(tr, va)
    default = train(tr, va, select=False)
    sel = chosen.metrics["model_selection"]
    scores = [c["validation_accuracy"] for c in sel["candidates"]]
    assert sel["criterion"] == "validation_accuracy" and len(sel["candidates"]) >= 5
    assert sel["chosen"]["validation_accuracy"] == max(scores)
    assert sel["chosen"] != sel["default"] and sel["default"] == {**sel["candidates"][0]}
    assert {c["model"] for c in sel["candidates"]} == {"sgd_modified_huber", "logistic_regression", "linear_svc"}
    # the recorded scores are the students' own validation accuracy
    assert sel["default"]["validation_accuracy"] == default.metrics["validation_accuracy"]
    assert chosen.metrics["validation_accuracy"] == sel["chosen"]["validation_accuracy"] > default.metrics["validation_accuracy"]
    assert chosen.metrics["model"] == {k: v for k, v in sel["chosen"].items() if k not in ("validation_accuracy", "fit_seconds")}
    assert "model_selection" not in default.metrics and default.metrics["model"]["model"] == "sgd_modified_huber"
    # the fast serving path agrees with scikit-learn for whichever model was chosen
    texts = [q for q, _ in va]
    fast = FastScorer(chosen.pipeline)
    assert [fast.predict(t)[0] for t in texts] == chosen.predict_labels(texts)
    assert chosen.metrics["answer_ms_p50"] < 2.0  # ~1 ms per answer (a loose bound for a shared CPU)


def test_a_bad_first_candidate_is_not_kept(pairs) -> None:
    """The first candidate wins only ties: an over-regularised one loses."""
    tr, va = pairs
    grid = [{"clf": [SGDClassifier(loss="modified_huber", random_state=0)], "clf__alpha": [10.0, 1e-4]}]
    st = train(tr, va, grid=grid)
    sel = st.metrics["model_selection"]
    first, second = sel["candidates"]
    assert first["alpha"] == 10.0 and first["validation_accuracy"] + 0.2 < second["validation_accuracy"]
    assert sel["chosen"]["alpha"] == 1e-4 and st.pipeline.named_steps["clf"].alpha == 1e-4


@pytest.mark.parametrize("model", ["logistic_regression", "linear_svc"])
def test_every_model_in_the_grid_serves_and_reloads(pairs, tmp_path, model) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    tr, va = pairs
    clf = LogisticRegression(max_iter=300, C=30.0) if model == "logistic_regression" else LinearSVC(C=0.5)
    st = train(tr[:400], va[:100], grid=[{"clf": [clf]}])
    assert st.metrics["model"]["model"] == model
    _answer, label, conf = st.answer([{"role": "user", "content": va[0][0]}])
    assert 0.0 <= conf <= 1.0 and label in st.classes
    texts = [q for q, _ in va[:100]]
    assert [FastScorer(st.pipeline).predict(t)[0] for t in texts] == st.predict_labels(texts)


# A training job whose store use is incidental: DuckDB only; a local job's result, events and
# manifest on PostgreSQL are test_local_student.py's `trained` tests.
@pytest.mark.backends("duckdb")
def test_choice_is_recorded_in_the_job_and_manifest(store_db, tmp_path) -> None:
    tr, va = split(corpus())
    train_file = write_chat(tmp_path / "train.jsonl", tr, json_template)
    val_file = write_chat(tmp_path / "val.jsonl", va, json_template)
    store = Store(store_db, data_dir=tmp_path / "data")
    try:
        job = jobs.start_job(store, backend="local", training_file=train_file, validation_file=val_file, name="sel")
        job = jobs.wait_job(store, job["id"], interval=0.05, timeout=120)
        assert job["status"] == "succeeded", job["error"]
        manifest = json.loads(Path(job["result"]["student"]["manifest"]).read_text())
        sel = manifest["metrics"]["model_selection"]
        assert manifest["classifier"] == manifest["metrics"]["model"] and sel["chosen"]["validation_accuracy"] == manifest["metrics"]["validation_accuracy"]
        assert job["result"]["metrics"]["model_selection"] == sel
        messages = [e["message"] for e in jobs.list_events(store, job["id"], limit=100)[0]]
        assert any(f"with {manifest['classifier']['model']}" in m and "chosen from" in m for m in messages)
        loaded, _ = load_student(store, "sel")
        assert type(loaded.pipeline.named_steps["clf"]).__name__ in ("SGDClassifier", "LogisticRegression", "LinearSVC")
    finally:
        store.close()


def test_on_a_slice_a_clear_winner_is_confirmed_on_all_rows(pairs) -> None:
    from protege.distill.finetune.local_student import make_features, normalise_label, select_classifier

    tr, va = pairs
    feats = make_features()
    x_fit = feats.fit_transform([q for q, _ in tr])
    y_fit = [normalise_label(a) for _, a in tr]
    x_val, y_val = feats.transform([q for q, _ in va]), [normalise_label(a) for _, a in va]
    grid = [{"clf": [SGDClassifier(loss="modified_huber", random_state=0)], "clf__alpha": [10.0, 1e-4]}]
    clf, sel = select_classifier(x_fit, y_fit, x_val, y_val, grid=grid, max_select_examples=300)
    assert sel["selected_on"] == {"fit_examples": 300, "validation_examples": len(y_val)}
    confirmed = sel["confirmed_on_all_rows"]
    assert confirmed["chosen"] > confirmed["default"] + 0.2 and clf.alpha == 1e-4
    assert sel["chosen"]["validation_accuracy"] == confirmed["chosen"]
    # a gain within one standard error on a slice keeps the default (and costs no slow full fit)
    near = [{"clf": [SGDClassifier(loss="modified_huber", random_state=0)], "clf__alpha": [1e-4, 1.01e-4]}]
    clf, sel = select_classifier(x_fit, y_fit, x_val, y_val, grid=near, max_select_examples=300)
    assert clf.alpha == 1e-4 and sel["chosen"] == sel["default"]
