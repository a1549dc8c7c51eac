"""HTTP API for eval runs: the router under TestClient, and the whole Protege app under uvicorn."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import pytest
from fastapi import FastAPI
from protege import apikit
from fastapi.testclient import TestClient

from protege.evals.api import router
from protege.evals.runs import RunSpec, create_run
from protege.settings import load_settings
from protege.store import Store
from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.http import Served
from tests.fixtures.evals import CAPITALS, WatchedStore, seed_completions, student_reply

ITEMS = [{"messages": [{"role": "user", "content": f"Capital of {c}?"}], "reference": city} for c, city in CAPITALS[:4]]


@pytest.fixture
def fake():
    f = start_fake_openai(student_reply())
    yield f
    f.stop()


@pytest.fixture
def client(make_db):
    db = make_db("a")
    store = Store(db)
    app = FastAPI()
    apikit.install(app)  # the app's error handler, as protege.app's app has it
    app.include_router(router)
    app.state.protege_store = store
    # The fake candidates run on 127.0.0.1: a server credential (api_key_env) may go there.
    app.state.protege_settings = load_settings(db=db, eval_allowed_hosts=["127.0.0.1"])
    with TestClient(app) as c:
        c.store = store  # type: ignore[attr-defined]
        yield c
    store.close()


def _wait(get, run_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = get(run_id)
        if run["status"] in ("completed", "failed", "canceled"):
            return run
        time.sleep(0.05)
    raise AssertionError("run did not finish")


def test_create_follow_list_report(client: TestClient, fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDENT_KEY", "sk-student-test")
    body = {"candidates": [{"name": "s", "model": "gpt-4o-mini", "base_url": fake.base_url, "api_key_env": "STUDENT_KEY"}],
            "metrics": ["exact_match"], "items": ITEMS, "n_resamples": 100, "name": "api"}
    r = client.post("/protege/v1/evals", json=body)
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["id"].startswith("evalrun_") and run["status"] in ("queued", "in_progress")
    assert run["object"] == "protege.eval.run" and isinstance(run["created_at"], int)
    assert run["result_counts"]["total"] == 4 and "sk-student" not in r.text
    done = _wait(lambda i: client.get(f"/protege/v1/evals/{i}").json(), run["id"])
    assert done["status"] == "completed" and done["result_counts"]["completed"] == 4
    assert fake.chat_requests[0]["headers"]["authorization"] == "Bearer sk-student-test"

    ids = [run["id"]]
    for _ in range(2):
        ids.append(client.post("/protege/v1/evals", json=body).json()["id"])
    for i in ids[1:]:
        _wait(lambda x: client.get(f"/protege/v1/evals/{x}").json(), i)
    page = client.get("/protege/v1/evals", params={"limit": 2}).json()
    assert page["object"] == "list" and page["has_more"] is True and len(page["data"]) == 2
    assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][1]["id"]
    rest = client.get("/protege/v1/evals", params={"limit": 2, "after": page["last_id"]}).json()
    assert rest["has_more"] is False and len(rest["data"]) == 1
    assert {d["id"] for d in page["data"] + rest["data"]} == set(ids)

    html = client.get(f"/protege/v1/evals/{run['id']}/report", params={"format": "html"})
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html") and "<svg" in html.text
    md = client.get(f"/protege/v1/evals/{run['id']}/report", params={"format": "md"})
    assert md.headers["content-type"].startswith("text/markdown") and "## Headline" in md.text
    js = client.get(f"/protege/v1/evals/{run['id']}/report", params={"format": "json"}).json()
    assert js["headline"][0]["system"] == "s" and js["headline"][0]["accuracy"] == 1.0
    assert js["results"]["reference_kinds"] == {"gold": 4, "teacher": 0}


def test_errors_are_openai_style(client: TestClient) -> None:
    def err(r, status: int) -> dict:
        assert r.status_code == status, r.text
        e = r.json()["error"]
        assert set(e) == {"message", "type", "param", "code"} and isinstance(e["message"], str)
        return e

    assert err(client.get("/protege/v1/evals/evalrun_nope"), 404)["code"] == "not_found"
    assert err(client.get("/protege/v1/evals/evalrun_nope/report"), 404)["param"] == "run_id"
    err(client.post("/protege/v1/evals", content=b"{nope", headers={"content-type": "application/json"}), 400)
    err(client.post("/protege/v1/evals", json=[1]), 400)
    assert "candidate" in err(client.post("/protege/v1/evals", json={"items": ITEMS}), 400)["message"]
    bad_metric = {"candidates": [{"model": "m"}], "items": ITEMS, "metrics": ["nope"]}
    assert "unknown metric" in err(client.post("/protege/v1/evals", json=bad_metric), 400)["message"]
    assert err(client.post("/protege/v1/evals", json={"candidates": [{"model": "m"}], "items_file": "/etc/passwd"}), 400)["param"] == "items_file"
    no_items = {"candidates": [{"model": "m"}], "model": "gpt-4o"}
    assert "no items matched" in err(client.post("/protege/v1/evals", json=no_items), 400)["message"]
    bad_item = {"candidates": [{"model": "m"}], "items": [{"messages": "hi"}]}
    assert "items[0]" in err(client.post("/protege/v1/evals", json=bad_item), 400)["message"]
    assert err(client.get("/protege/v1/evals", params={"limit": 0}), 400)["param"] == "limit"
    # A run that has not finished has no report yet.
    run = create_run(client.store, RunSpec.from_dict({"candidates": [{"model": "m"}], "items": ITEMS}))  # type: ignore[attr-defined]
    assert err(client.get(f"/protege/v1/evals/{run['id']}/report"), 409)["code"] == "run_not_completed"
    assert err(client.get(f"/protege/v1/evals/{run['id']}/report", params={"format": "pdf"}), 400)["param"] == "format"


def _http(method: str, url: str, body: dict | None = None, key: str | None = None) -> tuple[int, dict | str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    if key:
        req.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
            ctype = resp.headers.get("content-type", "")
            return resp.status, json.loads(text) if ctype.startswith("application/json") else text
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_real_server_runs_an_eval_over_captured_completions(make_db, fake) -> None:
    """protege.app's whole app under uvicorn on 127.0.0.1: start a run, follow it, fetch the report."""
    from protege.app import build_app

    dbfile = make_db("srv")
    s = Store(dbfile)
    seed_completions(s)
    s.close()
    settings = load_settings(db=dbfile, upstream=fake.base_url, admin_keys=["admin-test-key"])
    app, _store, _writer = build_app(settings)
    server = Served(app, fast=False)
    try:
        base = f"{server.url}/protege/v1/evals"
        spec = {"candidates": [{"name": "mini", "model": "gpt-4o-mini", "base_url": fake.base_url}],
                "model": "gpt-4o", "metrics": ["exact_match", "chrf"], "n_resamples": 100}
        status, denied = _http("POST", base, spec)
        assert status == 401 and denied["error"]["code"] == "missing_api_key"  # same codes as the proxy's keys
        status, run = _http("POST", base, spec, key="admin-test-key")
        assert status == 200 and run["n_items"] == 8
        done = _wait(lambda i: _http("GET", f"{base}/{i}", key="admin-test-key")[1], run["id"])
        assert done["status"] == "completed"
        status, page = _http("GET", f"{base}/{run['id']}/report?format=md", key="admin-test-key")
        assert status == 200 and "mini (gpt-4o-mini): exact_match 0.875 vs teacher 1.000" in page
    finally:
        server.stop(20)


def test_run_cut_off_by_a_restart_shows_interrupted_and_resumes(client: TestClient, fake) -> None:
    # A run created but never executed in this process, as after a server restart mid-run.
    spec = RunSpec.from_dict({"candidates": [{"name": "s", "model": "m", "base_url": fake.base_url}], "items": ITEMS,
                              "metrics": ["exact_match"], "n_resamples": 50})
    run = create_run(client.store, spec)  # type: ignore[attr-defined]
    got = client.get(f"/protege/v1/evals/{run['id']}").json()
    assert got["status"] == "canceled" and got["error"]["code"] == "interrupted"
    r = client.post(f"/protege/v1/evals/{run['id']}/resume")
    assert r.status_code == 200 and r.json()["status"] == "in_progress"
    done = _wait(lambda i: client.get(f"/protege/v1/evals/{i}").json(), run["id"])
    assert done["status"] == "completed" and done["error"] is None and len(fake.chat_requests) == 4
    assert client.post("/protege/v1/evals/evalrun_nope/resume").status_code == 404


def test_handlers_call_the_store_off_the_event_loop(make_db, fake) -> None:
    """Every handler (create, list, get, resume, report) and the background run reach the store
    from worker threads only: a slow disk must not stall the loop that serves every other request."""
    store = WatchedStore(make_db("w"))
    app = FastAPI()
    apikit.install(app)  # the app's error handler, as protege.app's app has it
    app.include_router(router)
    app.state.protege_store = store
    try:
        with TestClient(app) as client:
            body = {"candidates": [{"name": "s", "model": "m", "base_url": fake.base_url}], "items": ITEMS,
                    "metrics": ["exact_match"], "n_resamples": 50}
            run = client.post("/protege/v1/evals", json=body).json()
            done = _wait(lambda i: client.get(f"/protege/v1/evals/{i}").json(), run["id"])
            assert done["status"] == "completed"
            assert client.get("/protege/v1/evals").json()["data"][0]["id"] == run["id"]
            assert client.get(f"/protege/v1/evals/{run['id']}/report?format=md").status_code == 200
            assert client.post(f"/protege/v1/evals/{run['id']}/resume").status_code == 200
            assert _wait(lambda i: client.get(f"/protege/v1/evals/{i}").json(), run["id"])["status"] == "completed"
            assert client.get("/protege/v1/evals/evalrun_nope").status_code == 404
            assert client.post("/protege/v1/evals/evalrun_nope/resume").status_code == 404
            assert client.get("/protege/v1/evals/evalrun_nope/report").status_code == 404
    finally:
        store.close()
    assert store.on_loop == []
