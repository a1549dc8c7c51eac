"""Who may use what (issue 8, "Access"): the whole Protege app (protege.app.build_app) under uvicorn
on 127.0.0.1, the fake OpenAI as upstream, the openai SDK and raw HTTP as clients."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from protege.settings import Settings
from protege.startup import StartupError, check_exposure
from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.http import Served
from tests.fixtures.stores import stored_bytes

MSG = [{"role": "user", "content": "hello there"}]
ADMIN_API = [
    ("GET", "/protege/v1/evals"),
    ("GET", "/protege/v1/feedback"),
    ("GET", "/protege/v1/datasets"),
    ("GET", "/protege/v1/fine_tuning/jobs"),
    ("GET", "/protege/v1/policies"),
    ("POST", "/protege/v1/evals"),
    ("GET", "/v1/chat/completions"),
]


class App:
    """protege.app.build_app (every router, the proxy, the store) served on an ephemeral port."""

    def __init__(self, settings: Settings) -> None:
        from protege.app import build_app

        self.app, self.store, self.writer = build_app(settings)
        self.served = Served(self.app)
        self.url = self.served.url

    def call(self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
        data = json.dumps(body).encode() if body is not None else (b"{}" if method == "POST" else None)
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={"content-type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                return resp.status, resp.headers.get("content-type", ""), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("content-type", ""), exc.read().decode()

    def stop(self) -> None:
        self.served.stop()


@pytest.fixture
def fake():
    f = start_fake_openai()
    yield f
    f.stop()


@pytest.fixture
def serve(tmp_path, make_db):
    apps: list[App] = []

    def start(**overrides) -> App:
        overrides.setdefault("db", make_db(f"app{len(apps)}"))
        overrides.setdefault("data_dir", str(tmp_path / f"app{len(apps)}-data"))  # each app its own, on PostgreSQL too
        app = App(Settings(**overrides))
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def error_of(status: int, ctype: str, text: str) -> dict:
    assert ctype.startswith("application/json"), (status, ctype, text)
    err = json.loads(text)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_proxy_keys_only_close_the_admin_api_and_say_how_to_open_it(fake, serve) -> None:
    app = serve(upstream=fake.base_url, upstream_api_key="sk-server-secret", proxy_keys=["pk-user"])
    for method, path in ADMIN_API:
        for headers, status in (({}, 401), (bearer("pk-user"), 403), (bearer("nope"), 401)):
            got = app.call(method, path, headers=headers)
            assert got[0] == status, (method, path, headers, got)
            err = error_of(*got)
            assert "PROTEGE_ADMIN_KEYS" in err["message"] and "admin_keys" in err["message"], err
    # The proxy itself works with the proxy key, and the SDK sees the closed API as a PermissionDeniedError.
    client = openai.OpenAI(base_url=app.url + "/v1", api_key="pk-user", max_retries=0)
    done = client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert done.choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError, match="PROTEGE_ADMIN_KEYS"):
        client.chat.completions.retrieve(done.id)


def test_an_admin_key_opens_it_read_by_one_parser_everywhere(fake, serve) -> None:
    app = serve(upstream=fake.base_url, upstream_api_key="sk-server-secret", proxy_keys=["pk-user"], admin_keys=["ak-admin"])
    for method, path in ADMIN_API:
        if method == "POST":
            continue
        assert app.call(method, path, headers=bearer("ak-admin"))[0] == 200, path
        assert app.call(method, path, headers={"api-key": "ak-admin"})[0] == 200, path  # Azure clients
        assert app.call(method, path, headers=bearer("pk-user"))[0] == 403, path
        # Both headers: every part of the app reads the same one (api-key, as Azure clients mean it).
        both = {**bearer("pk-user"), "api-key": "ak-admin"}
        assert app.call(method, path, headers=both)[0] == 200, path
        reversed_ = {**bearer("ak-admin"), "api-key": "pk-user"}
        assert app.call(method, path, headers=reversed_)[0] == 403, path
    azure = openai.AzureOpenAI(azure_endpoint=app.url, api_key="ak-admin", api_version="2025-02-01-preview", max_retries=0)
    assert azure.chat.completions.list().data == []


def test_admin_keys_alone_guard_the_admin_api(fake, serve) -> None:
    app = serve(upstream=fake.base_url, admin_keys=["ak-admin"])
    for method, path in ADMIN_API:
        err = error_of(*app.call(method, path))
        assert err["code"] == "missing_api_key", path
    assert app.call("GET", "/protege/v1/evals", headers=bearer("ak-admin"))[0] == 200


def test_dot_segments_do_not_slip_past_the_admin_check(fake, serve) -> None:
    import http.client

    app = serve(upstream=fake.base_url, proxy_keys=["pk-user"], admin_keys=["ak-admin"])
    host, port = app.url[len("http://"):].split(":")
    for path in ("/v1/../protege/v1/evals", "//protege/v1/evals", "/protege//v1/evals/", "/x/./../protege/v1/feedback"):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", path, headers=bearer("pk-user"))
        resp = conn.getresponse()
        assert resp.status == 403, (path, resp.status)
        conn.close()
    assert fake.requests == []


def test_eval_api_never_sends_a_server_credential_to_another_host(fake, serve, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-secret")
    other = start_fake_openai()  # somebody else's server: same machine, another port
    try:
        app = serve(upstream=fake.base_url, admin_keys=["ak-admin"])
        items = [{"messages": MSG, "reference": "hello there"}]
        bad = {"candidates": [{"name": "x", "model": "m", "base_url": other.base_url, "api_key_env": "OPENAI_API_KEY"}],
               "items": items, "metrics": ["exact_match"]}
        err = error_of(*app.call("POST", "/protege/v1/evals", bad, bearer("ak-admin")))
        assert err["code"] == "credential_host_not_allowed" and err["param"] == "candidates"
        assert "eval_allowed_hosts" in err["message"] and "sk-env-secret" not in err["message"]
        judge = {"candidates": [{"name": "x", "model": "m", "base_url": fake.base_url}], "items": items,
                 "metrics": [{"name": "judge", "model": "m", "base_url": other.base_url}]}
        err = error_of(*app.call("POST", "/protege/v1/evals", judge, bearer("ak-admin")))
        assert err["code"] == "credential_host_not_allowed" and err["param"] == "metrics"
        no_url = {"candidates": [{"name": "x", "model": "m", "api_key_env": "OPENAI_API_KEY"}], "items": items}
        monkeypatch.setenv("OPENAI_BASE_URL", other.base_url)  # where the SDK would go without a base_url
        assert app.call("POST", "/protege/v1/evals", no_url, bearer("ak-admin"))[0] == 400
        time.sleep(0.3)
        assert other.requests == []

        # The configured upstream may get it, and so may a host on the allow-list.
        ok = dict(bad, candidates=[{"name": "x", "model": "m", "base_url": fake.base_url, "api_key_env": "OPENAI_API_KEY"}])
        status, _, text = app.call("POST", "/protege/v1/evals", ok, bearer("ak-admin"))
        assert status == 200, text
        deadline = time.monotonic() + 20
        while not fake.chat_requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.chat_requests[0]["headers"]["authorization"] == "Bearer sk-env-secret"
    finally:
        other.stop()


def test_eval_allowed_hosts_lets_a_listed_host_have_the_credential(fake, serve, monkeypatch) -> None:
    monkeypatch.setenv("CANDIDATE_KEY", "sk-candidate")
    other = start_fake_openai()
    try:
        port = other.base_url.rsplit(":", 1)[1].split("/")[0]
        app = serve(upstream=fake.base_url, admin_keys=["ak-admin"], eval_allowed_hosts=[f"127.0.0.1:{port}"])
        spec = {"candidates": [{"name": "x", "model": "m", "base_url": other.base_url, "api_key_env": "CANDIDATE_KEY"}],
                "items": [{"messages": MSG, "reference": "hello there"}], "metrics": ["exact_match"]}
        status, _, text = app.call("POST", "/protege/v1/evals", spec, bearer("ak-admin"))
        assert status == 200, text
    finally:
        other.stop()


def test_finetune_api_takes_dataset_ids_never_server_paths(fake, serve, tmp_path) -> None:
    app = serve(upstream=fake.base_url, admin_keys=["ak-admin"])
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    for field in ("training_file", "validation_file"):
        for path in ("/etc/passwd", str(secret), "../" * 8 + "etc/passwd"):
            body = {"model": "gpt-4o-mini", field: path}
            err = error_of(*app.call("POST", "/protege/v1/fine_tuning/jobs", body, bearer("ak-admin")))
            assert err["code"] == "file_path_not_allowed" and err["param"] == field, err
            assert "line 1" not in err["message"] and "does not exist" not in err["message"]
    # A dataset id is looked up in the store (here: there is none), also under OpenAI's field name.
    err = error_of(*app.call("POST", "/protege/v1/fine_tuning/jobs", {"model": "m", "training_file": "ds_missing"}, bearer("ak-admin")))
    assert err["code"] == "dataset_not_found"


def test_openapi_and_docs_work_offline_and_are_admin_only_when_keyed(fake, serve) -> None:
    open_app = serve(upstream=fake.base_url)
    status, ctype, text = open_app.call("GET", "/openapi.json")
    assert status == 200 and ctype.startswith("application/json"), text[:300]
    schema = json.loads(text)
    assert "/v1/chat/completions/{completion_id}" in schema["paths"] and "/protege/v1/evals" in schema["paths"]
    status, ctype, html = open_app.call("GET", "/docs")
    assert status == 200 and ctype.startswith("text/html")
    assert "cdn." not in html and "/static-offline-docs/swagger-ui-bundle.js" in html
    status, _, js = open_app.call("GET", "/static-offline-docs/swagger-ui-bundle.js")
    assert status == 200 and len(js) > 100_000

    keyed = serve(upstream=fake.base_url, proxy_keys=["pk-user"], admin_keys=["ak-admin"])
    for path in ("/openapi.json", "/docs"):
        assert error_of(*keyed.call("GET", path))["code"] == "missing_api_key"
        assert keyed.call("GET", path, headers=bearer("pk-user"))[0] == 403
        assert keyed.call("GET", path, headers=bearer("ak-admin"))[0] == 200


# -- serve's bind check ----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost"])
def test_loopback_binds_start_without_keys(host) -> None:
    check_exposure(Settings(host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.com"])
def test_open_binds_need_keys_or_the_flag(host) -> None:
    with pytest.raises(StartupError, match="--allow-open"):
        check_exposure(Settings(host=host))
    check_exposure(Settings(host=host, proxy_keys=["pk"]))
    check_exposure(Settings(host=host, admin_keys=["ak"]))
    check_exposure(Settings(host=host, allow_open=True))


def _cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROTEGE_", "OPENAI_", "AZURE_OPENAI_"))}
    env["PROTEGE_CONFIG"] = str(tmp_path / "none.toml")
    return env


def test_protege_serve_refuses_a_public_bind_without_keys(tmp_path, make_db) -> None:
    cmd = [sys.executable, "-m", "protege", "--db", make_db("s"), "serve", "--host", "0.0.0.0", "--port", "0"]
    try:
        proc = subprocess.run(cmd, env=_cli_env(tmp_path), capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("protege serve started on 0.0.0.0 with no keys")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "0.0.0.0" in lines[0] and "--allow-open" in lines[0] and "PROTEGE_PROXY_KEYS" in lines[0]


# -- credentials in the upstream URL ---------------------------------------------------------------


def test_upstream_url_credentials_are_basic_auth_and_never_stored(fake, run_proxy, make_db, tmp_path, caplog) -> None:
    from protege.store import Store
    from protege.store.io import export_jsonl, export_parquet

    caplog.set_level(logging.DEBUG)
    secret = "pw-SECRET-1b2c3d"
    root = fake.base_url.replace("http://", f"http://alice:{secret}@")
    db, db2 = make_db("cred"), make_db("cred2")
    proxy = run_proxy(upstream=root, proxy_keys=["pk-user"], db=db)
    c = openai.OpenAI(base_url=proxy.base_url, api_key="pk-user", max_retries=0)
    c.chat.completions.create(model="m", messages=MSG)
    list(c.chat.completions.create(model="m", messages=MSG, stream=True))
    assert [m.id for m in c.models.list()]
    import base64

    basic = "Basic " + base64.b64encode(f"alice:{secret}".encode()).decode()
    assert [r["headers"]["authorization"] for r in fake.requests] == [basic] * 3
    records = proxy.records()
    assert len(records) == 2 and {r["upstream"] for r in records} == {fake.base_url}
    proxy.stop()

    # A client's own key on top (no proxy keys): its key goes upstream instead, no 500.
    open_proxy = run_proxy(upstream=root, db=db2)
    own = openai.OpenAI(base_url=open_proxy.base_url, api_key="sk-client-own", max_retries=0)
    assert own.chat.completions.create(model="m", messages=MSG).choices[0].message.content
    assert fake.requests[-1]["headers"]["authorization"] == "Bearer sk-client-own"
    assert open_proxy.records()[0]["upstream"] == fake.base_url
    open_proxy.stop()

    store = Store(db, data_dir=tmp_path / "export-data")
    export_jsonl(store, tmp_path / "out.jsonl")
    export_parquet(store, tmp_path / "out.parquet")
    store.close()
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    for stored in (db, db2):  # a PostgreSQL store's rows are not under tmp_path
        assert secret.encode() not in stored_bytes(stored), stored
    assert secret not in caplog.text


def test_url_credentials_and_an_upstream_key_are_refused_at_start(fake, tmp_path, make_db) -> None:
    from protege.app import build_app

    secret = "pw-SECRET-9z8y"
    settings = Settings(db=make_db("r"), upstream=fake.base_url.replace("http://", f"http://u:{secret}@"),
                        upstream_api_key="sk-server")
    with pytest.raises(StartupError) as exc:
        build_app(settings)
    assert "user:password@" in str(exc.value) and secret not in str(exc.value)
    cmd = [sys.executable, "-m", "protege", "--db", make_db("c"), "serve", "--port", "0",
           "--upstream", fake.base_url.replace("http://", f"http://u:{secret}@")]
    env = dict(_cli_env(tmp_path), OPENAI_API_KEY="sk-server")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert secret not in proc.stderr and "upstream" in proc.stderr
