"""Feedback and dataset HTTP API: a FastAPI app with the router under uvicorn on 127.0.0.1."""

from __future__ import annotations


import pytest
from fastapi import FastAPI
from protege import apikit
from protege.distill.datasets.api import router as datasets_router
from protege.distill.feedback.api import router as feedback_router
from protege.store import Store, insert_records

from protege.settings import Settings
from tests.fixtures.http import Served, call
from tests.fixtures.records import make_record


def Server(app) -> Served:
    return Served(app, lifespan="off", fast=False, timeout=10)


@pytest.fixture
def api(store_db, tmp_path):
    store = Store(store_db, data_dir=tmp_path / "api-data")
    insert_records(store, [make_record(i, answer=["billing", "technical"][i % 2]) for i in range(15)])
    app = FastAPI()
    apikit.install(app)  # the app's error handler, as protege.app's app has it
    app.include_router(feedback_router)
    app.include_router(datasets_router)
    app.state.protege_store = store
    app.state.protege_settings = Settings(db=store_db, data_dir=str(tmp_path / "api-data"))
    srv = Server(app)
    yield srv.url, app
    srv.stop()
    store.close()


def test_feedback_create_list_filter(api):
    url, _ = api
    status, fb = call("POST", f"{url}/protege/v1/completions/chatcmpl-1/feedback",
                      {"score": 0.9, "label": "billing", "correction": "billing!", "comment": "ok", "accepted": True})
    assert status == 200
    assert fb["id"].startswith("fb_") and fb["object"] == "feedback" and fb["completion_id"] == "chatcmpl-1"
    assert (fb["score"], fb["label"], fb["correction"], fb["comment"], fb["accepted"]) == (0.9, "billing", "billing!", "ok", True)
    call("POST", f"{url}/protege/v1/completions/chatcmpl-1/feedback", {"score": 0.2})
    call("POST", f"{url}/protege/v1/completions/chatcmpl-2/feedback", {"accepted": False})
    status, page = call("GET", f"{url}/protege/v1/completions/chatcmpl-1/feedback")
    assert status == 200 and page["object"] == "list" and len(page["data"]) == 2
    assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][-1]["id"] and page["has_more"] is False
    status, page = call("GET", f"{url}/protege/v1/feedback?min_score=0.5")
    assert [f["id"] for f in page["data"]] == [fb["id"]]
    status, page = call("GET", f"{url}/protege/v1/feedback?accepted=false")
    assert [f["completion_id"] for f in page["data"]] == ["chatcmpl-2"]
    # Cursor pagination.
    status, p1 = call("GET", f"{url}/protege/v1/feedback?limit=2")
    assert len(p1["data"]) == 2 and p1["has_more"] is True
    status, p2 = call("GET", f"{url}/protege/v1/feedback?limit=2&after={p1['last_id']}")
    assert len(p2["data"]) == 1 and p2["has_more"] is False
    status, one = call("GET", f"{url}/protege/v1/feedback/{fb['id']}")
    assert status == 200 and one == fb


def test_feedback_errors_are_openai_style(api):
    url, _ = api
    status, body = call("POST", f"{url}/protege/v1/completions/chatcmpl-nope/feedback", {"score": 1})
    assert status == 404
    assert body["error"]["code"] == "not_found" and body["error"]["type"] == "invalid_request_error"
    assert "chatcmpl-nope" in body["error"]["message"]
    status, body = call("GET", f"{url}/protege/v1/completions/chatcmpl-nope/feedback")
    assert status == 404 and body["error"]["param"] == "completion_id"
    status, body = call("POST", f"{url}/protege/v1/completions/chatcmpl-1/feedback", {"score": "high"})
    assert status == 400 and body["error"]["param"] == "score"
    status, body = call("POST", f"{url}/protege/v1/completions/chatcmpl-1/feedback", {"rating": 1})
    assert status == 400 and body["error"]["code"] == "unknown_parameter"
    status, body = call("POST", f"{url}/protege/v1/completions/chatcmpl-1/feedback", {})
    assert status == 400 and body["error"]["code"] == "missing_required_parameter"
    status, body = call("POST", f"{url}/protege/v1/completions/chatcmpl-1/feedback", raw=b"{oops")
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body = call("GET", f"{url}/protege/v1/feedback?limit=0")
    assert status == 400 and body["error"]["param"] == "limit"
    status, body = call("GET", f"{url}/protege/v1/feedback/fb_nope")
    assert status == 404


def test_datasets_api(api):
    url, _ = api
    status, dv = call("POST", f"{url}/protege/v1/datasets", {"name": "api", "validation_fraction": 0.2, "seed": 2})
    assert status == 200 and dv["object"] == "dataset" and dv["id"].startswith("ds_")
    assert dv["counts"]["final"] == 15 and dv["counts"]["validation"] == 3
    status, page = call("GET", f"{url}/protege/v1/datasets")
    assert [d["id"] for d in page["data"]] == [dv["id"]] and page["object"] == "list"
    status, one = call("GET", f"{url}/protege/v1/datasets/{dv['id']}")
    assert status == 200 and one["files"]["train"]["sha256"] == dv["files"]["train"]["sha256"]
    status, body = call("GET", f"{url}/protege/v1/datasets/ds_nope")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = call("POST", f"{url}/protege/v1/datasets", {"name": "x", "models": "gpt-4o"})
    assert status == 400 and "models" in body["error"]["message"]
    status, body = call("POST", f"{url}/protege/v1/datasets", {"validation_fraction": 0.1})
    assert status == 400 and body["error"]["param"] == "name"
    status, body = call("POST", f"{url}/protege/v1/datasets", {"name": "x", "models": ["nope"]})
    assert status == 400 and "nothing to build" in body["error"]["message"]


def test_admin_key_required_when_configured(api):
    url, app = api
    app.state.protege_settings = app.state.protege_settings.model_copy(update={"admin_keys": ["admin-test-key"]})
    status, body = call("GET", f"{url}/protege/v1/feedback")
    assert status == 401 and body["error"]["code"] == "missing_api_key"
    status, body = call("GET", f"{url}/protege/v1/feedback", headers={"authorization": "Bearer wrong"})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, body = call("GET", f"{url}/protege/v1/feedback", headers={"authorization": "Bearer admin-test-key"})
    assert status == 200
