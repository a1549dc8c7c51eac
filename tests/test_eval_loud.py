"""Eval runs fail loudly: a candidate that cannot answer stops the run with one line and a non-zero
exit, failed outputs are counted apart from scores everywhere (never scored as wrong answers), and a
``protege/<name>`` candidate without a base URL goes to the server that serves this store.

Real parts throughout: a store on each backend, the fake OpenAI server on 127.0.0.1, the ``openai`` SDK, the
CLI app and the HTTP API; an unreachable candidate is a closed port on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from protege.cli import app
from protege.evals.breaker import CandidateUnavailable
from protege.evals.report import render_report
from protege.evals.runs import RunSpec, create_run, execute_run
from protege.store import Store, served
from protege.store import evals as db
from tests.fakes.openai_upstream import FakeError, start_fake_openai
from tests.fixtures.evals import FAST, seed_completions, seeded_store_file, student_reply
from tests.fixtures.once import once_per_backend

runner = CliRunner()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dbfile(make_db) -> str:
    return seeded_store_file(make_db("loud"))


def cli(dbfile: str, *args: str):
    return runner.invoke(app, ["--db", dbfile, "eval", *args])


def one_error_line(res) -> str:
    lines = res.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, res.stderr
    return errors[0]


# ---------------------------------------------------------------------------------------------
# Stop early on a candidate that cannot be reached


def test_unreachable_candidate_stops_the_cli_run_at_once(dbfile: str) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    started = time.monotonic()
    res = cli(dbfile, "run", "--model", "gpt-4o", "--candidate", f"name=down,model=m,base_url={url}", "--metric", "exact_match")
    elapsed = time.monotonic() - started
    assert res.exit_code != 0
    line = one_error_line(res)
    # Which candidate, which URL, what kind of error, and how to continue.
    assert "candidate down cannot connect to " + url in line and "ConnectError" in line, line
    assert "--resume evalrun_" in line
    assert "completed" not in res.stdout and "exact_match" not in res.stdout
    assert elapsed < 20  # not every item's full retry back-off (~15 s each)
    store = Store(dbfile, read_only=True)
    try:
        (run,), _ = db.list_runs(store)
        assert run["status"] == "failed" and run["error"]["code"] == "candidate_unreachable"
        assert url in run["error"]["message"]
        assert run["results"] is None  # nothing was scored
    finally:
        store.close()


def test_refused_model_stops_after_five_items_in_a_row(store_db: str) -> None:
    """401/403/404 are the same for every item: after five in a row, the run stops."""
    store = Store(store_db)
    seed_completions(store)

    def unknown(body: dict) -> str:
        raise FakeError(404, f"The model `{body['model']}` does not exist or you do not have access to it.",
                        code="model_not_found")

    fake = start_fake_openai(unknown)
    try:
        run = create_run(store, RunSpec.from_dict({
            "candidates": [{"name": "ghost", "model": "protege/ghost", "base_url": fake.base_url}],
            "metrics": ["exact_match"], "model": "gpt-4o", "concurrency": 1, "n_resamples": 50}))
        with pytest.raises(CandidateUnavailable, match=r"candidate ghost is refused by .*HTTP 404 model_not_found"):
            asyncio.run(execute_run(store, run["id"], policy=FAST))
        # 404 is final: one attempt per item; five items (one more may have started as it tripped), not 8.
        assert 5 <= len(fake.chat_requests) <= 6
        got = db.get_run(store, run["id"])
        assert got["status"] == "failed" and got["error"]["code"] == "candidate_refused"
    finally:
        fake.stop()
        store.close()


def test_item_errors_do_not_stop_a_run(store_db: str) -> None:
    """A 400 is about one item's request: every item may fail so and the run still completes."""
    store = Store(store_db)
    seed_completions(store)

    def reject(body: dict) -> str:
        raise FakeError(400, "Invalid 'messages': bad", param="messages")

    fake = start_fake_openai(reject)
    try:
        run = create_run(store, RunSpec.from_dict({
            "candidates": [{"name": "picky", "model": "m", "base_url": fake.base_url}],
            "metrics": ["exact_match"], "model": "gpt-4o", "n_resamples": 50}))
        done = asyncio.run(execute_run(store, run["id"], policy=FAST))
    finally:
        fake.stop()
    assert done["status"] == "completed" and done["result_counts"]["errored"] == 8
    results = db.get_run(store, run["id"])["results"]
    # Nothing answered: no score at all, not a score of 0.
    assert results["scores"]["exact_match"]["picky"]["score"] is None
    assert results["scores"]["exact_match"]["picky"]["n"] == 0 and results["errors"] == {"picky": 8}
    assert "picky" not in results["paired"]["exact_match"]
    store.close()


@pytest.mark.backends("duckdb")  # the server record (store/served.py) exists beside a DuckDB file only
def test_candidate_that_goes_down_mid_run_stops_and_resumes(tmp_path: Path) -> None:
    """A protege/ candidate without base_url goes to the server recorded beside the database; when
    that server is gone the run stops, and ``--resume`` continues once one is up again."""
    dbfile = str(tmp_path / "mid.duckdb")
    store = Store(dbfile)
    seed_completions(store)
    good = student_reply()
    fake = start_fake_openai(good)
    served.write_record(dbfile, fake.root_url)  # what `protege serve` leaves beside its database
    try:
        run = create_run(store, RunSpec.from_dict({
            "candidates": [{"name": "student", "model": "protege/geo"}],
            "metrics": ["exact_match"], "model": "gpt-4o", "n_resamples": 50}))
        assert run["candidates"][0]["base_url"] is None  # resolved when it runs, not stored
        dead = f"http://127.0.0.1:{closed_port()}"
        served.write_record(dbfile, dead)
        with pytest.raises(CandidateUnavailable) as info:
            asyncio.run(execute_run(store, run["id"], policy=FAST))
        assert f"{dead}/v1" in str(info.value)
        assert db.get_run(store, run["id"])["status"] == "failed"
        store.close()

        served.write_record(dbfile, fake.root_url)
        res = runner.invoke(app, ["--db", dbfile, "eval", "run", "--resume", run["id"], "--json"])
        assert res.exit_code == 0, res.stderr
        obj = json.loads(res.stdout)
        assert obj["status"] == "completed" and obj["error"] is None
        assert obj["result_counts"] == {"total": 8, "completed": 8, "errored": 0, "pending": 0}
        assert {r["json"]["model"] for r in fake.chat_requests} == {"protege/geo"}
        assert all(r["path"] == "/v1/chat/completions" for r in fake.chat_requests)
    finally:
        served.remove_record(dbfile)
        fake.stop()


def test_student_without_server_is_a_one_line_error(dbfile: str) -> None:
    res = cli(dbfile, "run", "--model", "gpt-4o", "--candidate", "name=s,model=protege/geo")
    assert res.exit_code != 0
    line = one_error_line(res)
    assert "protege/geo" in line and "`protege serve`" in line and "base_url" in line, line
    store = Store(dbfile, read_only=True)
    try:
        assert db.list_runs(store)[0] == []  # refused before any item was frozen
    finally:
        store.close()


@pytest.mark.backends("postgresql")  # a database URL: its replicas leave no server record to follow
def test_student_on_a_database_url_says_to_name_a_replica_and_hides_the_password(dbfile: str) -> None:
    """On PostgreSQL no one server holds the store, so a protege/ candidate without base_url cannot
    be sent anywhere: one line that says to give a replica's base_url, with the URL's password hidden."""
    user, rest = dbfile.split("://", 1)[1].split("@", 1)
    with_password = f"postgresql://{user}:sk-not-a-real-password@{rest}"  # the test server trusts 127.0.0.1
    res = cli(with_password, "run", "--model", "gpt-4o", "--candidate", "name=s,model=protege/geo")
    assert res.exit_code != 0
    line = one_error_line(res)
    assert "protege/geo" in line and "base_url of a `protege serve` replica" in line and ":***@" in line, line
    assert "sk-not-a-real-password" not in res.stdout + res.stderr
    store = Store(dbfile, read_only=True)
    try:
        assert db.list_runs(store)[0] == []  # refused before any item was frozen
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------
# Errors are counted apart from scores


@pytest.fixture
def half_failed(backend: str, request: pytest.FixtureRequest) -> tuple[str, str]:
    """A finished run where the student fails (HTTP 500, after retries) on 2 of 8 items and answers
    the others right: its exact_match is 1.0 over 6 answered items, not 0.75 over 8. Built once per
    backend (``--db``, run id)."""
    return once_per_backend(request, "half", _half_failed)


def _half_failed(path: str, data_dir: Path) -> tuple[str, str]:
    store = Store(path, data_dir=data_dir)
    seed_completions(store)
    good = student_reply(wrong=set())

    def reply(body: dict) -> str:
        if any(c in body["messages"][-1]["content"] for c in ("Peru", "Kenya")):
            raise FakeError(500, "The server had an error while processing your request.", type="server_error")
        return good(body)

    fake = start_fake_openai(reply)
    try:
        run = create_run(store, RunSpec.from_dict({
            "candidates": [{"name": "mini", "model": "gpt-4o-mini", "base_url": fake.base_url}],
            "metrics": ["exact_match", "chrf"], "model": "gpt-4o", "n_resamples": 100}))
        asyncio.run(execute_run(store, run["id"], policy=FAST))
    finally:
        fake.stop()
    store.close()
    return path, run["id"]


def test_scores_are_over_answered_items(half_failed) -> None:
    path, run_id = half_failed
    store = Store(path, read_only=True)
    try:
        results = db.get_run(store, run_id)["results"]
        scores = db.list_scores(store, run_id)
    finally:
        store.close()
    em = results["scores"]["exact_match"]["mini"]
    assert em["score"] == 1.0 and em["n"] == 6 and em["errors"] == 2
    assert results["answered"] == {"teacher": 8, "mini": 6} and results["errors"] == {"mini": 2}
    assert sum(em["histogram"]["counts"]) == 6
    # Paired with the teacher on the 6 items both answered: no difference.
    assert results["paired"]["exact_match"]["mini"]["diff"] == 0.0 and results["paired"]["exact_match"]["mini"]["n"] == 6
    # No item score of 0 (or any score) is written for a failed output.
    mini_scores = [s for s in scores if s["candidate"] == "mini"]
    assert len(mini_scores) == 6 * 2 and all(s["score"] is not None for s in mini_scores)
    assert results["divergent"]["mini"] == []


def test_reports_show_errors_beside_scores(half_failed) -> None:
    path, run_id = half_failed
    store = Store(path, read_only=True)
    try:
        data = json.loads(render_report(store, run_id, "json"))
        md = render_report(store, run_id, "md")
        html = render_report(store, run_id, "html")
    finally:
        store.close()
    mini = {r["system"]: r for r in data["headline"]}["mini"]
    assert mini["accuracy"] == 1.0 and mini["answered"] == 6 and mini["errors"] == 2 and mini["n_items"] == 8
    failed = [it["candidates"]["mini"] for it in data["items"] if it["candidates"]["mini"]["status"] == "error"]
    assert len(failed) == 2 and all(f["scores"] == {} for f in failed)

    assert "on 6 of 8 items (2 errors)" in md
    assert "| mini | gpt-4o-mini | 1.000 |" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| exact_match | mini |"))
    assert row.startswith("| exact_match | mini | 6 | 2 | 1.000 |"), row

    class Tables(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tables: list[list[list[str]]] = []
            self.cell: list[str] | None = None

        def handle_starttag(self, tag, attrs) -> None:
            if tag == "table":
                self.tables.append([])
            elif tag == "tr":
                self.tables[-1].append([])
            elif tag in ("td", "th"):
                self.cell = []

        def handle_endtag(self, tag) -> None:
            if tag in ("td", "th") and self.cell is not None:
                self.tables[-1][-1].append("".join(self.cell))
                self.cell = None

        def handle_data(self, data) -> None:
            if self.cell is not None:
                self.cell.append(data)

    p = Tables()
    p.feed(html)
    headline = p.tables[0]
    head = headline[0]
    mini_row = dict(zip(head, next(r for r in headline if r[0] == "mini")))
    assert mini_row["task accuracy"] == "1.000" and mini_row["answered"] == "6" and mini_row["errors"] == "2"
    metrics = next(t for t in p.tables if t[0][:4] == ["metric", "system", "answered", "errors"])
    assert ["exact_match", "mini", "6", "2", "1.000"] == next(r for r in metrics if r[:2] == ["exact_match", "mini"])[:5]


def test_cli_text_and_json_count_errors_apart(half_failed) -> None:
    path, run_id = half_failed
    res = runner.invoke(app, ["--db", path, "eval", "run", "--resume", run_id])
    # The resume retries the 2 failed items (the fake is gone now: they fail to connect and stop it).
    assert res.exit_code != 0 and "cannot connect" in one_error_line(res)
    res = runner.invoke(app, ["--db", path, "eval", "show", run_id, "--text"])
    assert res.exit_code == 0, res.stderr
    assert "failed" in res.stdout and "cannot connect" in res.stdout
    assert "mini: 6 answered, 2 errors, 0 pending of 8" in res.stdout


def test_eval_api_counts_errors_per_candidate(half_failed) -> None:
    from fastapi import FastAPI

    from protege import apikit
    from protege.evals.api import router

    path, run_id = half_failed
    store = Store(path)
    application = FastAPI()
    apikit.install(application)
    application.include_router(router)
    application.state.protege_store = store
    try:
        with TestClient(application) as client:
            run = client.get(f"/protege/v1/evals/{run_id}").json()
            report = client.get(f"/protege/v1/evals/{run_id}/report", params={"format": "json"}).json()
    finally:
        store.close()
    assert run["candidate_counts"]["mini"] == {"answered": 6, "errored": 2, "pending": 0, "total": 8}
    assert {r["system"]: r for r in report["headline"]}["mini"]["errors"] == 2
    assert report["results"]["scores"]["exact_match"]["mini"]["n"] == 6


# ---------------------------------------------------------------------------------------------
# The same over the eval API


@pytest.fixture
def api(make_db):
    from fastapi import FastAPI

    from protege import apikit
    from protege.evals.api import router
    from protege.settings import load_settings

    path = make_db("api")
    store = Store(path)
    seed_completions(store)
    application = FastAPI()
    apikit.install(application)
    application.include_router(router)
    application.state.protege_store = store
    application.state.protege_settings = load_settings(db=path)
    with TestClient(application) as client:
        client.store = store  # type: ignore[attr-defined]
        client.path = path  # type: ignore[attr-defined]
        yield client
    store.close()


def _follow(client: TestClient, run_id: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run = client.get(f"/protege/v1/evals/{run_id}").json()
        if run["status"] in ("completed", "failed", "canceled"):
            return run
        time.sleep(0.05)
    raise AssertionError("run did not finish")


def test_api_run_against_unreachable_candidate_fails_with_the_reason(api: TestClient) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    r = api.post("/protege/v1/evals", json={"model": "gpt-4o", "metrics": ["exact_match"], "n_resamples": 50,
                                            "candidates": [{"name": "down", "model": "m", "base_url": url}]})
    assert r.status_code == 200, r.text
    run = _follow(api, r.json()["id"])
    assert run["status"] == "failed" and run["error"]["code"] == "candidate_unreachable"
    assert f"candidate down cannot connect to {url}" in run["error"]["message"]
    assert run["candidate_counts"]["down"]["answered"] == 0


def test_api_student_without_server_is_an_openai_style_400(api: TestClient) -> None:
    r = api.post("/protege/v1/evals", json={"model": "gpt-4o", "metrics": ["exact_match"],
                                            "candidates": [{"name": "s", "model": "protege/geo"}]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert "`protege serve`" in err["message"] and err["type"] == "invalid_request_error"


@pytest.mark.backends("duckdb")  # the server record (store/served.py) exists beside a DuckDB file only
def test_api_student_goes_to_the_server_of_this_store(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the record `protege serve` writes, a protege/ candidate is answered there (and a key
    named by api_key_env may go with it: it stays with this server)."""
    monkeypatch.setenv("EVAL_LOUD_KEY", "sk-test-not-a-real-key")
    fake = start_fake_openai(student_reply())
    served.write_record(api.path, fake.root_url)
    try:
        r = api.post("/protege/v1/evals", json={"model": "gpt-4o", "metrics": ["exact_match"], "n_resamples": 50,
                                                "candidates": [{"name": "s", "model": "protege/geo", "api_key_env": "EVAL_LOUD_KEY"}]})
        assert r.status_code == 200, r.text
        run = _follow(api, r.json()["id"])
    finally:
        served.remove_record(api.path)
        fake.stop()
    assert run["status"] == "completed", run
    assert len(fake.chat_requests) == 8 and {c["json"]["model"] for c in fake.chat_requests} == {"protege/geo"}
    assert {c["headers"]["authorization"] for c in fake.chat_requests} == {"Bearer sk-test-not-a-real-key"}


def test_cli_warns_of_failed_calls_and_fails_when_nothing_was_answered(dbfile: str) -> None:
    def reply(body: dict) -> str:
        if body["model"] == "picky" or "Peru" in body["messages"][-1]["content"]:
            raise FakeError(400, "Invalid 'messages': bad", param="messages")
        return student_reply(wrong=set())(body)

    fake = start_fake_openai(reply)
    try:
        res = cli(dbfile, "run", "-m", "gpt-4o", "--candidate", f"name=mini,model=m,base_url={fake.base_url}",
                  "--metric", "exact_match", "--resamples", "50")
        assert res.exit_code == 0, res.stderr
        assert "mini (m): exact_match 1.000 vs teacher 1.000" in res.stdout and "on 7 of 8 items (1 error)" in res.stdout
        (warning,) = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: ")]
        assert "candidate mini: 1 of 8 calls failed" in warning and "HTTP 400" in warning and "--resume evalrun_" in warning

        res = cli(dbfile, "run", "-m", "gpt-4o", "--candidate", f"name=picky,model=picky,base_url={fake.base_url}",
                  "--metric", "exact_match", "--resamples", "50", "--json")
        assert res.exit_code == 1  # no answer at all: no score for it, and the exit says so
        assert json.loads(res.stdout)["candidate_counts"]["picky"] == {"answered": 0, "errored": 8, "pending": 0, "total": 8}
        assert "candidate picky: 8 of 8 calls failed" in res.stderr
    finally:
        fake.stop()
