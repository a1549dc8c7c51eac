"""The console's access rules and form handling over HTTP (no browser): the whole app's FastAPI part
on a real store (each backend), through Starlette's TestClient."""

from __future__ import annotations


import pytest
from fastapi.testclient import TestClient

from protege.app import build_app
from protege.settings import Settings
from protege.store import get_stored, insert_records, record_from_completion
from protege.store.traffic import TrafficFilter, traffic_page

ADMIN = "sk-admin-http-test"


def _records(n: int, **extra) -> list[dict]:
    return [record_from_completion(
        {"id": f"chatcmpl-h{i}", "object": "chat.completion", "created": 1_700_000_000 + i, "model": "gpt-4o-mini",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {i}"}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}},
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {i}"}]},
        metadata={"env": "prod" if i % 2 else "dev"}, **extra) for i in range(n)]


@pytest.fixture
def app(make_db):
    application, store, _writer = build_app(Settings(db=make_db("h"), admin_keys=[ADMIN]))
    insert_records(store, _records(30))
    with TestClient(application.api, base_url="http://127.0.0.1:8000") as client:
        client.store = store  # type: ignore[attr-defined]
        yield client


def _login(client: TestClient) -> None:
    r = client.post("/ui/login", data={"key": ADMIN, "next": "/ui/traffic"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/traffic"


def test_pages_need_a_session_and_the_cookie_is_not_the_key(app: TestClient) -> None:
    for path in ("/ui/", "/ui/traffic", "/ui/traffic/chatcmpl-h1", "/ui/datasets", "/ui/finetunes", "/ui/evals", "/ui/students"):
        r = app.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login?next="), path
    r = app.post("/ui/login", data={"key": "sk-wrong"}, follow_redirects=False)
    assert r.status_code == 401 and "set-cookie" not in r.headers
    r = app.post("/ui/login", data={"key": ADMIN, "next": "https://evil.example/"}, follow_redirects=False)
    assert r.headers["location"] == "/ui/"  # never redirects off the console
    cookie = r.headers["set-cookie"]
    assert ADMIN not in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age" not in cookie and "expires" not in cookie.lower()
    assert app.get("/ui/traffic").status_code == 200


def test_a_forged_cookie_is_refused_and_the_admin_header_works(app: TestClient) -> None:
    app.cookies.set("protege_console", "0" * 64)
    assert app.get("/ui/traffic", follow_redirects=False).status_code == 303
    app.cookies.clear()
    assert app.get("/ui/traffic", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    assert app.get("/ui/traffic", headers={"Authorization": "Bearer sk-nope"}, follow_redirects=False).status_code == 303
    # htmx requests are told where to sign in rather than given a login page to swap in
    r = app.get("/ui/traffic", headers={"HX-Request": "true"}, follow_redirects=False)
    assert r.status_code == 401 and r.headers["hx-redirect"] == "/ui/login"


def test_posts_from_another_origin_are_refused(app: TestClient) -> None:
    _login(app)
    r = app.post("/ui/traffic/chatcmpl-h3/feedback", data={"comment": "x"}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    r = app.post("/ui/traffic/chatcmpl-h3/feedback", data={"comment": "fine"}, headers={"Origin": "http://127.0.0.1:8000"}, follow_redirects=False)
    assert r.status_code == 303


def test_bad_form_input_is_a_message_and_changes_nothing(app: TestClient) -> None:
    _login(app)
    r = app.post("/ui/traffic/chatcmpl-h3/feedback", data={"score": "high"})
    assert r.status_code == 400 and "Score must be a number." in r.text
    r = app.post("/ui/traffic/chatcmpl-h3/feedback", data={})
    assert r.status_code == 400 and "Add at least one of" in r.text
    before = get_stored(app.store, "chatcmpl-h3")["metadata"]
    r = app.post("/ui/traffic/chatcmpl-h3/metadata", data={"key": [f"k{i}" for i in range(17)], "value": ["v"] * 17})
    assert r.status_code == 400 and "at most 16 pairs" in r.text
    assert get_stored(app.store, "chatcmpl-h3")["metadata"] == before
    r = app.post("/ui/traffic/chatcmpl-h3/metadata", data={"key": ["env", ""], "value": ["staging", "ignored"]}, follow_redirects=False)
    assert r.status_code == 303 and get_stored(app.store, "chatcmpl-h3")["metadata"] == {"env": "staging"}
    assert app.get("/ui/traffic/chatcmpl-nope").status_code == 404
    r = app.get("/ui/traffic?since=yesterday")
    assert r.status_code == 200 and "not a time" in r.text
    r = app.post("/ui/students/policy_nope/rollback", data={"confirm": "yes"})
    assert r.status_code == 404


def test_rollback_needs_the_confirmation_step(app: TestClient) -> None:
    from protege.distill.auto.rollout import open_route
    from protege.distill.auto.policies import parse_policy, save_policy
    from protege.store import auto as store_auto

    policy = parse_policy({"name": "p", "match": {"model": "gpt-4o-mini"}, "trigger": {"min_new_completions": 100}})
    pid = save_policy(app.store, policy).id
    open_route(app.store, pid, policy, "ft:gpt-4o-mini:acme::x", "full")
    _login(app)
    r = app.post(f"/ui/students/{pid}/rollback", data={}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/ui/students/{pid}/rollback"
    assert store_auto.active_routes(app.store, pid)
    r = app.post(f"/ui/students/{pid}/rollback", data={"confirm": "yes"}, follow_redirects=False)
    assert r.status_code == 303 and not store_auto.active_routes(app.store, pid)
    r = app.post(f"/ui/students/{pid}/rollback", data={"confirm": "yes"})
    assert r.status_code == 409 and "no live route" in r.text


def test_keyset_pages_cover_every_row_once_with_filters(app: TestClient) -> None:
    store = app.store
    insert_records(store, _records(25, served_by="student"))
    seen, before = [], None
    while True:
        page = traffic_page(store, TrafficFilter(metadata={"env": "dev"}), before=before, limit=7)
        seen += [r["seq"] for r in page.rows]
        assert all(r["metadata"]["env"] == "dev" for r in page.rows)
        if page.next_before is None:
            break
        before = page.next_before
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == 15 + 13
    students = traffic_page(store, TrafficFilter(served_by="student"), limit=100).rows
    teachers = traffic_page(store, TrafficFilter(served_by="teacher"), limit=100).rows
    assert len(students) == 25 and len(teachers) == 30
    assert students[0]["preview"] == "question 24"


def test_time_range_and_outcome_filters(app: TestClient) -> None:
    from protege.store import insert_records

    err = _records(1)[0]
    err.update(id="chatcmpl-err", outcome="upstream_error", status_code=500, response=None, created=1_700_000_100)
    insert_records(app.store, [err])
    _login(app)
    # created 1_700_000_000 + i: 2023-11-14 22:13:20 UTC + i seconds; `until` is exclusive
    r = app.get("/ui/traffic", params={"since": "2023-11-14T22:13:30", "until": "2023-11-14T22:13:35"})
    assert r.status_code == 200
    assert [f"question {i}" in r.text for i in range(8, 17)] == [False, False, True, True, True, True, True, False, False]
    r = app.get("/ui/traffic", params={"outcome": "upstream_error"})
    assert r.text.count('class="capture-link"') == 1 and "chatcmpl-err" in r.text
    r = app.get("/ui/traffic", params={"outcome": "upstream_error", "served_by": "student"})
    assert r.text.count('class="capture-link"') == 0 and "No captures match these filters." in r.text


def test_dataset_page_shows_steps_labels_and_serves_only_recorded_files(app: TestClient) -> None:
    from protege.distill.datasets.builder import DatasetOptions, build_dataset

    dv = build_dataset(app.store, DatasetOptions(name="labelled", stratify=True, label_source="metadata", label_key="env",
                                                 validation_fraction=0.2))
    _login(app)
    r = app.get(f"/ui/datasets/{dv.id}")
    assert r.status_code == 200
    # Free-form answers ("answer 7"): no answer distribution, but the labels the split used.
    assert "Counts after each step" in r.text and 'id="h-labels"' not in r.text and 'id="h-split"' in r.text
    train, val = dv.stats["labels"]["dev"]
    assert f"<td>dev</td><td class=\"n\">{train}</td><td class=\"n\">{val}</td>" in r.text
    r = app.get(f"/ui/datasets/{dv.id}/files/train")
    assert r.status_code == 200 and len(r.text.splitlines()) == dv.counts["train"]
    assert 'filename="labelled-v1-train.jsonl"' in r.headers["content-disposition"]
    assert app.get(f"/ui/datasets/{dv.id}/files/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert app.get("/ui/datasets/ds_nope").status_code == 404


def test_dataset_page_shows_the_answers_label_distribution(app: TestClient) -> None:
    """Label-like answers: the card's distribution (the one label rule: "Spam" and {"label": "spam"}
    are one class), with its chart."""
    from protege.distill.datasets.builder import DatasetOptions, build_dataset

    answers = ["spam", '{"label": "Spam"}', "ham", "ham ", "ham"]
    recs = _records(10)
    for i, rec in enumerate(recs):
        rec["id"] = f"chatcmpl-lab{i}"
        rec["metadata"] = '{"task": "spam"}'
        resp = __import__("json").loads(rec["response"])
        resp["id"] = rec["id"]
        resp["choices"][0]["message"]["content"] = answers[i % 5]
        rec["response"] = __import__("json").dumps(resp)
        rec["request"] = rec["request"].replace("question", f"mail {i} question")
    insert_records(app.store, recs)
    dv = build_dataset(app.store, DatasetOptions(name="spam", metadata={"task": "spam"}, validation_fraction=0.2))
    _login(app)
    r = app.get(f"/ui/datasets/{dv.id}")
    assert 'id="h-labels"' in r.text and 'aria-label="Label share"' in r.text
    rows = {x["label"]: (x["train"], x["validation"]) for x in dv.stats["label_distribution"]["labels"]}
    assert set(rows) == {"spam", "ham"} and sum(map(sum, rows.values())) == 10
    for label, (train, val) in rows.items():
        assert f"<td>{label}</td><td class=\"n\">{train}</td><td class=\"n\">{val}</td>" in r.text


def test_the_overview_counts_buckets_and_times_the_window(app: TestClient) -> None:
    """The overview page's numbers (store/traffic.overview): on PostgreSQL too, whose SQL has no
    quantile_cont or ``//`` (the page answered 500 there)."""
    from protege.store.traffic import overview

    insert_records(app.store, [{**r, "latency_ms": float(10 * (i + 1))} for i, r in enumerate(_records(40, source="proxy"))
                               if i >= 30])  # 10 more, created 1_700_000_030..39, 310..400 ms
    ov = overview(app.store, since=1_700_000_000, bucket_s=60)
    assert ov["requests"] == 40 and ov["errors"] == 0 and ov["tokens"] == 280
    assert ov["latency_ms"] == {"p50": 355.0, "p95": 395.5, "p99": 399.1}
    # 1_700_000_000 is 20 s into its minute: captures 0..39 share one bucket
    (bucket,) = ov["buckets"]
    assert bucket["t"] == 1_700_000_000 - 20 and bucket["requests"] == 40 and bucket["p50_ms"] == 355.0
    assert overview(app.store, since=1_700_000_035, bucket_s=60)["requests"] == 5
    r = app.get("/ui/", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200 and 'id="stat-requests">' in r.text
