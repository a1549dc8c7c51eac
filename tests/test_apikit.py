"""The HTTP kit (protege.apikit): every router answers bad page sizes, admin denials and unknown
paths with the same OpenAI error JSON, because they share one parser, one check and one handler."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from protege.distill.datasets.api import router as datasets_router
from protege.distill.feedback.api import router as feedback_router
from protege.distill.auto.api import router as auto_router
from protege.distill.finetune.api import router as finetune_router
from protege.distill.finetune.students_api import router as students_router
from protege.evals.api import router as evals_router
from protege.proxy.stored_api import stored_router
from protege.store import Store

from protege import apikit
from protege.settings import Settings

LISTS = (
    "/protege/v1/feedback",
    "/protege/v1/datasets",
    "/protege/v1/evals",
    "/protege/v1/fine_tuning/jobs",
    "/v1/chat/completions",
)
ADMIN_ONLY = LISTS[:-1] + ("/protege/v1/policies", "/protege/v1/routes", "/protege/v1/students")


def _app(tmp_path, db: str, **settings) -> tuple[TestClient, Store]:
    store = Store(db, data_dir=tmp_path / "kit-data")
    app = FastAPI()
    apikit.install(app)
    for r in (feedback_router, datasets_router, auto_router, finetune_router, students_router, evals_router):
        app.include_router(r)
    app.state.protege_settings = Settings(db=db, data_dir=str(tmp_path / "kit-data"), **settings)
    app.state.protege_store = store
    app.include_router(stored_router(store, list(app.state.protege_settings.proxy_keys), list(app.state.protege_settings.admin_keys)))
    return TestClient(app), store


@pytest.fixture
def client(tmp_path, store_db):
    c, store = _app(tmp_path, store_db)
    with c:
        yield c
    store.close()


@pytest.mark.parametrize("path", LISTS + ("/protege/v1/policies/policy_x/decisions",))
def test_one_limit_bound_and_one_error_body_for_every_list(client, path) -> None:
    for raw, code in (("0", "integer_out_of_range"), ("101", "integer_out_of_range"), ("abc", "invalid_type")):
        r = client.get(path, params={"limit": raw})
        assert r.status_code == 400, (path, raw, r.text)
        got = r.json()
        assert got == {"error": {"message": got["error"]["message"], "type": "invalid_request_error", "param": "limit", "code": code}}
        assert got["error"]["message"] == {
            "0": "Invalid 'limit': expected a value between 1 and 100, but got 0 instead.",
            "101": "Invalid 'limit': expected a value between 1 and 100, but got 101 instead.",
            "abc": "Invalid 'limit': expected an integer, but got 'abc' instead.",
        }[raw]
    assert client.get(path, params={"limit": "100"}).status_code in (200, 404)  # the bound itself is allowed


def test_unknown_paths_and_methods_are_openai_errors(client) -> None:
    r = client.get("/protege/v1/nowhere")
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = client.put("/protege/v1/feedback")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


def test_one_admin_check_for_every_router(tmp_path, store_db) -> None:
    c, store = _app(tmp_path, store_db, admin_keys=["ak-admin"], proxy_keys=["pk-user"])
    with c:
        for path in ADMIN_ONLY:
            missing = c.get(path)
            assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key", path
            assert missing.json()["error"]["type"] == "authentication_error", path
            proxy_key = c.get(path, headers={"Authorization": "Bearer pk-user"})
            assert proxy_key.status_code == 403 and proxy_key.json()["error"]["code"] == "insufficient_permissions", path
            assert proxy_key.json()["error"]["type"] == "permission_error", path
            assert c.get(path, headers={"Authorization": "Bearer ak-admin"}).status_code == 200, path
    store.close()


def test_missing_store_is_an_error_json_not_a_crash(tmp_path) -> None:
    app = FastAPI()
    apikit.install(app)
    app.include_router(feedback_router)
    with TestClient(app) as c:
        r = c.get("/protege/v1/feedback")
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_store"
