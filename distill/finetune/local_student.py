"""The local student: a scikit-learn text classifier for label-like tasks, trained on the CPU.

Classification, routing and moderation prompts have a small set of answers; a TF-IDF (word and
character n-grams) linear classifier learns them in seconds and answers in well under a millisecond,
offline. The teacher's answers are normalised to labels for training (``{"label": "spam"}``,
``Category: spam`` and ``spam`` are one class) and each class is answered with the teacher's most
frequent exact text for it, so clients parsing the teacher's format keep working.

Artifacts are versioned in the data dir (``students/<name>/v<n>/``): the pickled model and a manifest
(metrics, classes, templates, sha256). The hash is recorded in the store and checked before loading,
because unpickling runs code: only files Protege wrote itself are ever loaded.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import joblib
import numpy as np
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.model_selection import GridSearchCV, PredefinedSplit
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.svm import LinearSVC

from protege.store import jobs as store_jobs
from protege.store.messages import content_text, normalise_label

from protege.distill.finetune.interface import BackendStatus, FineTuneError, JobSpec, StartResult
from protege.distill.finetune.data import read_jsonl
from protege.distill.finetune.base import sha256_file

log = logging.getLogger("protege.distill.student")

FORMAT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


# --- data ------------------------------------------------------------------------------------


_text = content_text  # the one reading of message content (store.messages)


def input_text(messages: list[dict[str, Any]], include_system: bool = False) -> str:
    """What the classifier sees: the user turns (and the system prompt when it varies by task)."""
    parts = []
    for m in messages:
        role = m.get("role")
        if role == "user" or (include_system and role in ("system", "developer")):
            parts.append(_text(m.get("content")))
    return "\n".join(parts)


def examples_from_jsonl(path: str | Path, include_system: bool = False) -> list[tuple[str, str]]:
    """(input text, teacher answer) pairs from an OpenAI chat-format JSONL file; last assistant turn wins."""
    out: list[tuple[str, str]] = []
    for lineno, obj in read_jsonl(path, "training_file"):
        messages = obj.get("messages")
        if not isinstance(messages, list):
            raise FineTuneError(f"{path} line {lineno}: expected a chat example with 'messages'", param="training_file", code="invalid_training_file")
        answers = [m for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
        if not answers:
            raise FineTuneError(f"{path} line {lineno}: no assistant message", param="training_file", code="invalid_training_file")
        prompt = [m for m in messages[: messages.index(answers[-1])] if isinstance(m, dict)]
        out.append((input_text(prompt, include_system), _text(answers[-1].get("content"))))
    return out


# --- model -----------------------------------------------------------------------------------


def make_features() -> FeatureUnion:
    """Word 1-2-grams catch topic words, char 2-4-grams catch morphology and typos."""
    return FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, max_features=200_000, dtype=np.float32)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2, max_features=200_000, dtype=np.float32)),
        ]
    )


def default_classifier(random_state: int = 0) -> SGDClassifier:
    """A linear SGD model with modified-huber loss: one pass per epoch, still gives probabilities.

    One-vs-rest classes fit in parallel threads; each class has its own fixed seed, so the result
    is the same for any n_jobs."""
    return SGDClassifier(
        loss="modified_huber", alpha=2e-5, max_iter=25, tol=1e-4, random_state=random_state, n_jobs=min(4, os.cpu_count() or 1)
    )


def make_pipeline(random_state: int = 0) -> Pipeline:
    """The default configuration (TF-IDF features + :func:`default_classifier`)."""
    return Pipeline([("features", make_features()), ("clf", default_classifier(random_state))])


def model_grid(random_state: int = 0) -> list[dict[str, Any]]:
    """The configurations compared on the validation split, the default first (it wins ties).

    All linear, so serving stays one sparse dot product (~1 ms): SGD (modified huber) at three
    strengths of L2 regularisation, logistic regression, a linear SVM at two C. Logistic regression is
    the slowest to fit (seconds where SGD takes a tenth), so it gets one C."""
    sgd = default_classifier(random_state)
    return [
        {"clf": [sgd], "clf__alpha": [2e-5, 1e-5, 1e-4]},
        {"clf": [LogisticRegression(max_iter=300, random_state=random_state)], "clf__C": [30.0]},
        {"clf": [LinearSVC(random_state=random_state)], "clf__C": [0.5, 2.0]},
    ]


_CLF_NAMES = {SGDClassifier: "sgd_modified_huber", LogisticRegression: "logistic_regression", LinearSVC: "linear_svc"}


def describe(clf: Any) -> dict[str, Any]:
    """``{"model": "logistic_regression", "C": 10.0}``: the choice as recorded in the manifest."""
    name = _CLF_NAMES.get(type(clf), type(clf).__name__)
    params = clf.get_params()
    keys = {"sgd_modified_huber": ("alpha",), "logistic_regression": ("C",), "linear_svc": ("C",)}.get(name, ())
    return {"model": name, **{k: params[k] for k in keys}}


def select_classifier(
    x_fit: Any, y_fit: list[str], x_val: Any, y_val: list[str], *, random_state: int = 0,
    grid: list[dict[str, Any]] | None = None, max_select_examples: int = 5000,
) -> tuple[Any, dict[str, Any]]:
    """Pick the classifier with the best validation accuracy (scikit-learn's GridSearchCV over a
    PredefinedSplit: train on the fit rows, score on the validation rows), then fit it on all fit rows.

    Large datasets choose on a stratified-enough random slice of ``max_select_examples`` fit rows
    (choosing is what a grid costs; the final fit uses everything)."""
    import scipy.sparse as sp

    grid = grid or model_grid(random_state)
    n_fit = x_fit.shape[0]
    rows = np.arange(n_fit)
    if n_fit > max_select_examples:
        rows = np.sort(np.random.default_rng(random_state).choice(n_fit, max_select_examples, replace=False))
    x = sp.vstack([x_fit[rows], x_val]).tocsr()
    y = [y_fit[i] for i in rows] + list(y_val)
    fold = PredefinedSplit(np.r_[np.full(len(rows), -1), np.zeros(len(y_val))].astype(int))
    search = GridSearchCV(Pipeline([("clf", default_classifier(random_state))]), grid, cv=fold, scoring="accuracy", refit=False, n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        search.fit(x, y)
    res = search.cv_results_
    candidates = []
    for i, params in enumerate(res["params"]):
        candidates.append({**describe(Pipeline([("clf", default_classifier(random_state))]).set_params(**params).named_steps["clf"]),
                           "validation_accuracy": round(float(res["mean_test_score"][i]), 4),
                           "fit_seconds": round(float(res["mean_fit_time"][i]), 3)})
    best = int(search.best_index_)  # the first of the best: the default wins ties
    from sklearn.base import clone

    def make(i: int) -> Any:
        return clone(Pipeline([("clf", default_classifier(random_state))]).set_params(**res["params"][i]).named_steps["clf"])

    def fit(clf: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=ConvergenceWarning)
            return clf.fit(x_fit, y_fit)

    selection: dict[str, Any] = {
        "criterion": "validation_accuracy",
        "chosen": candidates[best],
        "default": candidates[0],
        "candidates": candidates,
        "selected_on": {"fit_examples": int(len(rows)), "validation_examples": len(y_val)},
    }
    if len(rows) < n_fit and best != 0:
        # Chosen on a slice: what wins on 5,000 rows can lose on 50,000, and the slower models cost
        # most on all rows. Switch only for a gain above one standard error of the default's score,
        # and then confirm on all rows against the default (cheap to fit).
        p0 = candidates[0]["validation_accuracy"]
        se = math.sqrt(max(p0 * (1 - p0), 1e-12) / max(1, len(y_val)))
        if candidates[best]["validation_accuracy"] - p0 <= se:
            selection["chosen"] = candidates[0]
            selection["note"] = f"the slice's best ({candidates[best]['model']}) was within one standard error ({se:.4f}) of the default; kept the default"
            return fit(make(0)), selection
        chosen, default = fit(make(best)), fit(make(0))
        acc_chosen = float(np.mean(chosen.predict(x_val) == np.asarray(y_val)))
        acc_default = float(np.mean(default.predict(x_val) == np.asarray(y_val)))
        selection["confirmed_on_all_rows"] = {"chosen": round(acc_chosen, 4), "default": round(acc_default, 4)}
        if acc_default >= acc_chosen:
            selection["chosen"] = {**candidates[0], "validation_accuracy": round(acc_default, 4)}
            selection["note"] = "the slice's choice did not beat the default on all rows; kept the default"
            return default, selection
        selection["chosen"] = {**candidates[best], "validation_accuracy": round(acc_chosen, 4)}
        return chosen, selection
    return fit(make(best)), selection


@dataclass
class TrainedStudent:
    """A fitted model plus what is needed to answer like the teacher."""

    pipeline: Pipeline
    classes: list[str]
    templates: dict[str, str]  # class -> the teacher's most frequent exact answer text
    include_system: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, tuple[str, float]] = field(default_factory=dict, repr=False)
    _fast: "FastScorer | None" = field(default=None, repr=False)

    def predict_labels(self, texts: list[str]) -> list[str]:
        return [str(x) for x in self.pipeline.predict(texts)]

    def predict(self, text: str) -> tuple[str, float]:
        """(label, confidence). Repeated prompts are common in production traffic: cached, bounded."""
        hit = self._cache.get(text)
        if hit is not None:
            return hit
        if self._fast is None:
            self._fast = FastScorer(self.pipeline)
        out = self._fast.predict(text)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[text] = out
        return out

    def answer(self, messages: list[dict[str, Any]]) -> tuple[str, str, float]:
        """(answer text in the teacher's format, label, confidence)."""
        label, conf = self.predict(input_text(messages, self.include_system))
        return self.templates.get(label, label), label, conf


class FastScorer:
    """Single-text prediction without scikit-learn's per-call overhead (~1 ms -> tens of µs).

    Serving sends one prompt at a time; ``Pipeline.predict`` builds sparse matrices and validates
    inputs for each call. This computes the same numbers directly: each vectorizer's analyzer,
    sublinear tf x idf, per-vectorizer L2 norm (as FeatureUnion stacks them), then the linear
    model's scores on just the columns present. A test checks it agrees with ``Pipeline.predict``.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        clf = pipeline.named_steps["clf"]
        self.logistic = isinstance(clf, LogisticRegression)
        coef = np.asarray(clf.coef_, dtype=np.float64)
        self.binary = coef.shape[0] == 1
        self.classes = [str(c) for c in clf.classes_]
        self.intercept = np.asarray(clf.intercept_, dtype=np.float64)
        self.parts = []
        offset = 0
        for _, vec in pipeline.named_steps["features"].transformer_list:
            n = len(vec.vocabulary_)
            self.parts.append(
                (vec.build_analyzer(), vec.vocabulary_, np.asarray(vec.idf_, dtype=np.float64), vec.sublinear_tf, vec.norm)
            )
            offset += n
        self.coef_t = np.ascontiguousarray(coef.T)  # features x classes: rows gathered per call
        self.offsets = []
        offset = 0
        for _, vocab, _, _, _ in self.parts:
            self.offsets.append(offset)
            offset += len(vocab)

    def scores(self, text: str) -> np.ndarray:
        total = self.intercept.copy()
        for (analyzer, vocab, idf, sublinear, norm), offset in zip(self.parts, self.offsets):
            counts: dict[int, int] = {}
            get = vocab.get
            for tok in analyzer(text):
                j = get(tok)
                if j is not None:
                    counts[j] = counts.get(j, 0) + 1
            if not counts:
                continue
            idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
            if sublinear:
                tf = np.log(tf) + 1.0
            vals = tf * idf[idx]
            if norm == "l2":
                vals /= np.sqrt(vals @ vals)
            total += vals @ self.coef_t[idx + offset]
        return total

    def predict(self, text: str) -> tuple[str, float]:
        """(label, confidence): the model's probability where it has one (logistic regression),
        else the modified-huber estimate (score + 1) / 2, clipped, as before."""
        s = self.scores(text)
        if self.binary:
            score = float(s[0])
            label = self.classes[int(score > 0)]
            if self.logistic:
                return label, float(1.0 / (1.0 + np.exp(-abs(score))))
            return label, float(np.clip((abs(score) + 1) / 2, 0.0, 1.0))
        i = int(np.argmax(s))
        if self.logistic:
            e = np.exp(s - s[i])
            return self.classes[i], float(1.0 / e.sum())
        return self.classes[i], float(np.clip((s[i] + 1) / 2, 0.0, 1.0))


def _answer_ms(pipeline: Pipeline, texts: list[str], n: int = 200) -> float | None:
    """Median time of one served answer (the fast scorer on one text), in ms, over up to ``n`` texts."""
    if not texts:
        return None
    fast = FastScorer(pipeline)
    sample = texts[:n]
    times = []
    for t in sample:
        t0 = time.perf_counter()
        fast.predict(t)
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)) * 1000, 4)


def _metrics(y_true: list[str], y_pred: list[str]) -> dict[str, Any]:
    total = len(y_true)
    correct = sum(a == b for a, b in zip(y_true, y_pred))
    per: dict[str, dict[str, Any]] = {}
    support = Counter(y_true)
    predicted = Counter(y_pred)
    hits = Counter(a for a, b in zip(y_true, y_pred) if a == b)
    for label in sorted(set(y_true) | set(y_pred)):
        p = hits[label] / predicted[label] if predicted[label] else 0.0
        r = hits[label] / support[label] if support[label] else 0.0
        per[label] = {
            "support": support[label],
            "accuracy": round(r, 4),  # per-class accuracy = recall on that class
            "precision": round(p, 4),
            "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
        }
    return {"validation_examples": total, "validation_accuracy": round(correct / total, 4) if total else None, "per_class": per}


# A local job's steps: read the files, then train()'s phases, then save the student.
TRAIN_STEPS = ("files", "features", "classifier", "metrics", "saved")


def train(
    train_pairs: list[tuple[str, str]],
    validation_pairs: list[tuple[str, str]] | None = None,
    *,
    include_system: bool = False,
    random_state: int = 0,
    validation_fraction: float = 0.1,
    max_label_ratio: float = 0.5,
    select: bool = True,
    grid: list[dict[str, Any]] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> TrainedStudent:
    """Fit on (input text, teacher answer) pairs; without a validation set, hold out a random slice.

    ``on_step(phase)``: called as each of the :data:`TRAIN_STEPS` phases ends (features, classifier,
    metrics), so a job can report steps as a LoRA job does.

    ``select``: choose the classifier and its regularisation on the validation split
    (:func:`model_grid`, or ``grid``); the choice and every candidate's score go in the metrics."""
    if len(train_pairs) < 2:
        raise FineTuneError("the local student needs at least 2 training examples", param="training_file", code="invalid_training_file")
    labels = [normalise_label(a) for _, a in train_pairs]
    counts = Counter(labels)
    if len(counts) < 2:
        raise FineTuneError("all training answers have the same label; nothing to classify", param="training_file", code="invalid_training_file")
    if len(train_pairs) >= 20 and len(counts) > max_label_ratio * len(train_pairs):
        raise FineTuneError(
            f"answers look free-form ({len(counts)} distinct answers in {len(train_pairs)} examples); "
            "the local student handles label-like tasks (classification, routing, moderation) only",
            param="backend",
            code="not_label_like",
        )
    by_class: dict[str, Counter] = defaultdict(Counter)
    for (_, answer), label in zip(train_pairs, labels):
        by_class[label][answer.strip()] += 1
    templates = {label: c.most_common(1)[0][0] for label, c in by_class.items()}

    texts = [t for t, _ in train_pairs]
    if validation_pairs:
        v_texts = [t for t, _ in validation_pairs]
        v_labels = [normalise_label(a) for _, a in validation_pairs]
        fit_texts, fit_labels = texts, labels
    else:
        rng = np.random.default_rng(random_state)
        order = rng.permutation(len(texts))
        n_val = max(1, int(len(texts) * validation_fraction)) if len(texts) >= 10 else 0
        val_idx, fit_idx = set(order[:n_val].tolist()), order[n_val:]
        fit_texts = [texts[i] for i in fit_idx]
        fit_labels = [labels[i] for i in fit_idx]
        v_texts = [texts[i] for i in sorted(val_idx)]
        v_labels = [labels[i] for i in sorted(val_idx)]
    t0 = time.perf_counter()
    step = on_step or (lambda phase: None)
    features = make_features()
    x_fit = features.fit_transform(fit_texts)
    step("features")
    selection: dict[str, Any] | None = None
    with warnings.catch_warnings():
        # A capped number of epochs is a deliberate speed/accuracy trade; not converging to tol is fine.
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        if select and v_texts and len(set(fit_labels)) >= 2:
            clf, selection = select_classifier(x_fit, fit_labels, features.transform(v_texts), v_labels, random_state=random_state, grid=grid)
        else:
            clf = default_classifier(random_state).fit(x_fit, fit_labels)
    pipeline = Pipeline([("features", features), ("clf", clf)])
    step("classifier")
    fit_s = time.perf_counter() - t0
    metrics = _metrics(v_labels, [str(x) for x in pipeline.predict(v_texts)]) if v_texts else {"validation_examples": 0, "validation_accuracy": None, "per_class": {}}
    majority = Counter(fit_labels).most_common(1)[0][0]
    metrics["majority_baseline_accuracy"] = round(sum(lab == majority for lab in v_labels) / len(v_labels), 4) if v_labels else None
    metrics.update({"train_examples": len(fit_texts), "classes": len(counts), "fit_seconds": round(fit_s, 3), "model": describe(clf)})
    if selection is not None:
        metrics["model_selection"] = selection
    metrics["answer_ms_p50"] = _answer_ms(pipeline, v_texts or fit_texts)
    step("metrics")
    return TrainedStudent(
        pipeline=pipeline, classes=sorted(counts), templates=templates, include_system=include_system, metrics=metrics
    )


# --- artifacts -------------------------------------------------------------------------------


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise FineTuneError(
            f"invalid student name {name!r}: use 1-64 letters, digits, '_', '-' or '.'", param="name", code="invalid_name"
        )
    return name


def save_student(store, name: str, student: TrainedStudent, *, job_id: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the next version under ``students/<name>/v<n>/`` and record path + hash in the store."""
    check_name(name)
    version = store_jobs.next_student_version(store, name)
    folder = store.artifact_dir("students", name, f"v{version}")
    model_path = folder / "model.joblib"
    payload = {
        "format": FORMAT_VERSION,
        "pipeline": student.pipeline,
        "classes": student.classes,
        "templates": student.templates,
        "include_system": student.include_system,
    }
    joblib.dump(payload, model_path, compress=3)
    digest = sha256_file(model_path)
    manifest = {
        "name": name,
        "version": version,
        "model": f"protege/{name}@v{version}",
        "created_at": int(time.time()),
        "format": FORMAT_VERSION,
        "sklearn_version": sklearn.__version__,
        "model_file": model_path.name,
        "sha256": digest,
        "classes": student.classes,
        "templates": student.templates,
        "include_system": student.include_system,
        "classifier": student.metrics.get("model"),
        "metrics": student.metrics,
        "job_id": job_id,
        **(extra or {}),
    }
    manifest_path = folder / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return store_jobs.record_student(
        store,
        name=name,
        version=version,
        path=str(model_path),
        sha256=digest,
        manifest_path=str(manifest_path),
        manifest=manifest,
        job_id=job_id,
    )


def load_student(store, name: str, version: int | None = None) -> tuple[TrainedStudent, dict[str, Any]]:
    """Load a recorded student after checking its file still has the recorded sha256."""
    row = store_jobs.get_student(store, name, version)
    if row is None:
        raise FineTuneError(f"no local student {name!r}" + (f" version {version}" if version else ""), param="model", code="model_not_found", status=404)
    path = store_jobs.resolve_artifact(store, row["path"])
    if not path.exists():
        raise FineTuneError(f"student file {path} is missing", code="artifact_missing", status=500)
    if sha256_file(path) != row["sha256"]:
        raise FineTuneError(f"student file {path} does not match its recorded sha256; refusing to load it", code="artifact_tampered", status=500)
    payload = joblib.load(path)
    manifest = row["manifest"]
    student = TrainedStudent(
        pipeline=payload["pipeline"],
        classes=list(payload["classes"]),
        templates=dict(payload["templates"]),
        include_system=bool(payload.get("include_system")),
        metrics=manifest.get("metrics", {}),
    )
    return student, row


def train_from_files(
    store,
    *,
    name: str,
    training_file: str,
    validation_file: str | None = None,
    include_system: bool = False,
    random_state: int = 0,
    job_id: str | None = None,
) -> dict[str, Any]:
    """Train from chat JSONL files and save a new version; returns the store's student record."""
    check_name(name)
    train_pairs = examples_from_jsonl(training_file, include_system)
    val_pairs = examples_from_jsonl(validation_file, include_system) if validation_file else None
    student = train(train_pairs, val_pairs, include_system=include_system, random_state=random_state)
    return save_student(store, name, student, job_id=job_id, extra={"training_file": str(training_file), "validation_file": validation_file})


# --- backend ---------------------------------------------------------------------------------


@dataclass
class _Run:
    status: str = "validating_files"
    events: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    fine_tuned_model: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, message: str, *, level: str = "info", type_: str = "message", data: Any = None) -> None:
        with self.lock:
            self.events.append(
                {
                    "id": f"ftevent_local_{len(self.events) + 1:04d}_{id(self):x}",
                    "created_at": int(time.time()),
                    "level": level,
                    "type": type_,
                    "message": message,
                    "data": data,
                }
            )


class LocalStudentBackend:
    """Trains in a background thread of this process; state lives in memory until the job is synced.

    Jobs are not resumable across restarts (training takes seconds): a job whose process exited
    reads as failed with a clear error on the next poll.
    """

    name = "local"

    def __init__(self, store, *, include_system: bool = False, random_state: int = 0) -> None:
        self.store = store
        self.include_system = include_system
        self.random_state = random_state
        self.runs: dict[str, _Run] = {}

    def start(self, spec: JobSpec) -> StartResult:
        if spec.method != "supervised":
            raise FineTuneError("the local student supports method 'supervised' only", param="method")
        name = check_name(spec.name or spec.suffix or "student")
        if not Path(spec.training_file).exists():
            raise FineTuneError(f"training file {spec.training_file} does not exist", param="training_file")
        provider_id = f"local-{spec.job_id or store_jobs.new_id('')}"
        run = _Run()
        run.event(f"Validating training file: {spec.training_file}")
        self.runs[provider_id] = run
        seed = self.random_state if spec.seed is None else int(spec.seed)
        run.thread = threading.Thread(
            target=self._train, args=(run, spec, name, seed), name=f"protege-student-{name}", daemon=False
        )
        run.thread.start()
        return StartResult(provider_job_id=provider_id, status="validating_files")

    def _train(self, run: _Run, spec: JobSpec, name: str, seed: int) -> None:
        def step(phase: str) -> None:
            # The same progress fields as a LoRA job (step, total_steps), so `finetune start --wait`
            # draws its bar and `finetune status` shows the step for either.
            run.result = {**run.result, "step": TRAIN_STEPS.index(phase) + 1, "total_steps": len(TRAIN_STEPS), "phase": phase}

        try:
            train_pairs = examples_from_jsonl(spec.training_file, self.include_system)
            val_pairs = examples_from_jsonl(spec.validation_file, self.include_system) if spec.validation_file else None
            step("files")
            run.event(f"Files validated: {len(train_pairs)} training, {len(val_pairs or [])} validation examples")
            if run.cancel.is_set():
                return
            run.status = "running"
            run.event("Training the local student (TF-IDF word+char n-grams; linear classifier chosen on the validation split)")
            student = train(train_pairs, val_pairs, include_system=self.include_system, random_state=seed, on_step=step)
            if run.cancel.is_set():
                run.event("Training finished after cancellation; result discarded")
                return
            m = student.metrics
            chosen = ", ".join(f"{k}={v}" for k, v in m["model"].items() if k != "model")
            run.event(
                f"Validation accuracy {m['validation_accuracy']} on {m['validation_examples']} examples ({m['classes']} classes) "
                f"with {m['model']['model']}{f' ({chosen})' if chosen else ''}"
                + (f", chosen from {len(m['model_selection']['candidates'])} configurations" if "model_selection" in m else ""),
                type_="metrics",
                data={k: m.get(k) for k in ("validation_accuracy", "validation_examples", "majority_baseline_accuracy", "fit_seconds", "model", "answer_ms_p50")},
            )
            row = save_student(self.store, name, student, job_id=spec.job_id, extra={"training_file": spec.training_file, "validation_file": spec.validation_file})
            run.fine_tuned_model = f"protege/{name}@v{row['version']}"
            run.result = {
                "step": len(TRAIN_STEPS), "total_steps": len(TRAIN_STEPS), "phase": "saved",
                "student": {"name": name, "version": row["version"], "path": str(store_jobs.resolve_artifact(self.store, row["path"])),
                            "sha256": row["sha256"], "manifest": str(store_jobs.resolve_artifact(self.store, row["manifest_path"]))},
                "metrics": m,
            }
            run.event(f"New local student created: {run.fine_tuned_model}")
            run.event("The job has successfully completed")
            run.status = "succeeded"
        except FineTuneError as exc:
            run.error = {"code": exc.code or "invalid_training_file", "message": exc.message, "param": exc.param}
            run.event(exc.message, level="error")
            run.status = "failed"
        except Exception as exc:  # noqa: BLE001 - a background job must record why it died
            log.exception("local student training failed")
            run.error = {"code": "training_error", "message": f"{exc.__class__.__name__}: {exc}", "param": None}
            run.event(run.error["message"], level="error")
            run.status = "failed"

    def _run(self, provider_job_id: str) -> _Run | None:
        return self.runs.get(provider_job_id)

    def status(self, provider_job_id: str) -> BackendStatus:
        run = self._run(provider_job_id)
        if run is None:
            return BackendStatus(
                status="failed",
                error={"code": "interrupted", "message": "the process training this local student exited before it finished", "param": None},
            )
        return BackendStatus(status=run.status, fine_tuned_model=run.fine_tuned_model, error=run.error, result=dict(run.result))

    def events(self, provider_job_id: str, known: set[str] | None = None) -> list[dict[str, Any]]:
        run = self._run(provider_job_id)
        if run is None:
            return []
        with run.lock:
            return list(run.events)

    def cancel(self, provider_job_id: str) -> BackendStatus:
        run = self._run(provider_job_id)
        if run is None:
            raise FineTuneError(f"job {provider_job_id} is not running in this process", code="not_running", status=409)
        if run.status in store_jobs.TERMINAL_STATUSES:
            raise FineTuneError(f"job has already completed ({run.status})", code="job_completed")
        run.cancel.set()
        run.status = "cancelled"
        run.event("Fine-tuning job cancelled")
        return self.status(provider_job_id)

    def checkpoints(self, provider_job_id: str) -> list[dict[str, Any]]:
        return []

    def join(self, provider_job_id: str, timeout: float | None = None) -> None:
        run = self._run(provider_job_id)
        if run is not None and run.thread is not None:
            run.thread.join(timeout)


_LOCAL: dict[int, LocalStudentBackend] = {}
_LOCAL_LOCK = threading.Lock()


def local_backend(*, store=None, settings: Any = None, **options: Any) -> LocalStudentBackend:
    """One backend per store in this process, so polls find the runs their start created."""
    if store is None:
        raise FineTuneError("the local backend needs a store")
    with _LOCAL_LOCK:
        backend = _LOCAL.get(id(store))
        if backend is None or backend.store is not store:
            backend = LocalStudentBackend(store, **options)
            _LOCAL[id(store)] = backend
        return backend


__all__ = [
    "LocalStudentBackend",
    "TrainedStudent",
    "examples_from_jsonl",
    "input_text",
    "load_student",
    "local_backend",
    "make_pipeline",
    "model_grid",
    "select_classifier",
    "normalise_label",
    "save_student",
    "train",
    "train_from_files",
]
