"""HTTP API for policies and routes: a FastAPI app with the router, under uvicorn on 127.0.0.1."""

from __future__ import annotations

import threading
import time

import httpx2 as httpx  # the HTTP client the openai SDK uses
import pytest
import uvicorn
from fastapi import FastAPI
from protege import apikit
from protege.distill.auto.api import router
from protege.store import Store
from protege.store import auto as store_auto

from protege.settings import Settings

POLICY = {
    "name": "intent",
    "match": {"model": "gpt-4o-mini", "metadata": {"task": "intent"}},
    "trigger": {"min_new_completions": 100},
    "gate": {"metrics": ["exact_match"], "tolerance": 0.05, "min_items": 30},
    "rollout": {"stages": ["shadow", "canary", "full"], "canary_percent": 25},
}


@pytest.fixture
def api(make_db):
    db = make_db("api")

    def start(**settings):
        store = Store(db)
        app = FastAPI()
        apikit.install(app)  # the app's error handler, as protege.app's app has it
        app.include_router(router)
        app.state.protege_store = store
        app.state.protege_settings = Settings(db=db, **settings)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        started.append((server, thread, store))
        return httpx.Client(base_url=f"http://127.0.0.1:{port}"), store

    started: list = []
    yield start
    for server, thread, store in started:
        server.should_exit = True
        thread.join(10)
        store.close()


def _err(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_policy_crud_and_errors(api) -> None:
    client, _store = api()
    r = client.post("/protege/v1/policies", json=POLICY)
    assert r.status_code == 200, r.text
    pol = r.json()
    assert pol["id"].startswith("policy_") and pol["object"] == "protege.policy" and pol["gate"]["tolerance"] == 0.05
    # same name: updated in place
    r2 = client.post("/protege/v1/policies", json={**POLICY, "gate": {"tolerance": 0.1}})
    assert r2.json()["id"] == pol["id"] and r2.json()["gate"]["tolerance"] == 0.1
    lst = client.get("/protege/v1/policies").json()
    assert lst["object"] == "list" and [p["id"] for p in lst["data"]] == [pol["id"]]
    assert lst["first_id"] == lst["last_id"] == pol["id"] and lst["has_more"] is False
    assert client.get(f"/protege/v1/policies/{pol['id']}").json()["name"] == "intent"
    assert client.get("/protege/v1/policies/intent").json()["id"] == pol["id"]

    e = _err(client.post("/protege/v1/policies", json={**POLICY, "gate": {"tolerance": 3}}), 400)
    assert e["param"] == "gate.tolerance" and "less than or equal to 1" in e["message"] and e["code"] == "invalid_policy"
    e = _err(client.post("/protege/v1/policies", json={**POLICY, "triger": {}}), 400)
    assert e["param"] == "triger" and "unknown field" in e["message"]
    e = _err(client.post("/protege/v1/policies", content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert e["code"] == "invalid_json"
    e = _err(client.get("/protege/v1/policies/policy_nope"), 404)
    assert e["code"] == "policy_not_found" and e["param"] == "policy_id"

    status = client.get(f"/protege/v1/policies/{pol['id']}/status").json()
    assert status["eligible_since_last_run"] == 0 and status["route"] is None and status["cycle"] is None

    d = client.delete(f"/protege/v1/policies/{pol['id']}").json()
    assert d == {"id": pol["id"], "object": "protege.policy.deleted", "deleted": True}
    _err(client.delete(f"/protege/v1/policies/{pol['id']}"), 404)


def test_promote_rollback_decisions_and_routes(api) -> None:
    client, store = api()
    pol = client.post("/protege/v1/policies", json=POLICY).json()
    # nothing trained yet
    e = _err(client.post(f"/protege/v1/policies/{pol['id']}/promote"), 409)
    assert "no trained student" in e["message"]
    _err(client.post(f"/protege/v1/policies/{pol['id']}/rollback"), 409)
    # a finished cycle with a student (as the worker leaves it)
    cyc = store_auto.create_cycle(store, pol["id"], 0)
    store_auto.update_cycle(store, cyc.id, state="rejected", student_model="protege/intent@v1")
    # its gate rejected it: going live takes an explicit force (issue 11)
    e = _err(client.post(f"/protege/v1/policies/{pol['id']}/promote", json={"stage": "canary"}), 409)
    assert "rejected by its gate" in e["message"] and "--force" in e["message"]
    _err(client.post(f"/protege/v1/policies/{pol['id']}/promote", json={"force": "yes"}), 400)
    r = client.post(f"/protege/v1/policies/{pol['id']}/promote", json={"stage": "canary", "force": True})
    assert r.status_code == 200, r.text
    route = r.json()
    assert route["object"] == "protege.route" and route["stage"] == "canary" and route["percent"] == 25.0
    assert route["student_model"] == "protege/intent@v1" and route["match_metadata"] == {"task": "intent"}
    _err(client.post(f"/protege/v1/policies/{pol['id']}/promote", json={"stage": "everyone"}), 400)
    full = client.post(f"/protege/v1/policies/{pol['id']}/promote").json()
    assert full["id"] == route["id"] and full["stage"] == "full" and full["percent"] == 100.0
    e = _err(client.post(f"/protege/v1/policies/{pol['id']}/promote"), 409)
    assert "already at stage 'full'" in e["message"]
    routes = client.get("/protege/v1/routes").json()
    assert [r["id"] for r in routes["data"]] == [route["id"]]
    assert client.get(f"/protege/v1/routes/{route['id']}").json()["active"] is True
    _err(client.get("/protege/v1/routes/route_nope"), 404)
    rb = client.post(f"/protege/v1/policies/{pol['id']}/rollback").json()
    assert rb["active"] is False
    assert client.get("/protege/v1/routes").json()["data"] == []
    assert len(client.get("/protege/v1/routes?all=true").json()["data"]) == 1
    dec = client.get(f"/protege/v1/policies/{pol['id']}/decisions").json()
    assert [d["kind"] for d in dec["data"]] == ["manual_rollback", "promote", "promote"]
    assert dec["data"][0]["details"]["stage"] == "full" and dec["data"][0]["details"]["manual"] is True
    page = client.get(f"/protege/v1/policies/{pol['id']}/decisions?limit=1").json()
    assert page["has_more"] is True and len(page["data"]) == 1
    nxt = client.get(f"/protege/v1/policies/{pol['id']}/decisions?limit=5&after={page['last_id']}").json()
    assert [d["id"] for d in nxt["data"]] == [d["id"] for d in dec["data"][1:]]
    _err(client.get(f"/protege/v1/policies/{pol['id']}/decisions?limit=0"), 400)


def test_admin_key_required_when_configured(api) -> None:
    client, _store = api(admin_keys=["admin-secret"])
    e = _err(client.get("/protege/v1/policies"), 401)
    assert e["code"] == "missing_api_key"
    _err(client.get("/protege/v1/policies", headers={"Authorization": "Bearer wrong"}), 401)
    ok = client.get("/protege/v1/policies", headers={"Authorization": "Bearer admin-secret"})
    assert ok.status_code == 200 and ok.json()["data"] == []
