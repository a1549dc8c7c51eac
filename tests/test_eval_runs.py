"""Eval runs over stored completions against candidates served by a real HTTP server (the fake
OpenAI upstream), through the official openai SDK: generation, retries, resume, storage."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from protege.evals.generate import Candidate, CandidateError, apply_system_prompt
from protege.evals.runs import RunSpec, RunSpecError, create_run, execute_run, items_from_jsonl
from protege.store import Store
from protege.store import evals as db
from tests.fakes.openai_upstream import FakeError, start_fake_openai
from tests.fixtures.evals import FAST, WatchedStore, seed_completions, seeded_store_file, student_reply

@pytest.fixture
def store(store_db, tmp_path: Path) -> Store:
    s = Store(store_db, data_dir=tmp_path / "p-data")
    yield s
    s.close()


def spec_for(base_url: str, **kw) -> RunSpec:
    data = {
        "candidates": [
            {"name": "mini", "model": "gpt-4o-mini", "base_url": base_url, "api_key_env": "EVAL_TEST_KEY"},
            {"name": "pruned", "model": "ft:gpt-4o-mini-2024-07-18:acme::x1", "base_url": base_url,
             "api_key_env": "EVAL_TEST_KEY", "system_prompt": "drop"},
        ],
        "metrics": ["exact_match", "chrf"], "model": "gpt-4o", "metadata": {"task": "geo"}, "n_resamples": 200,
        "concurrency": 4,
    }
    data.update(kw)
    return RunSpec.from_dict(data)


def run_against(store: Store, reply) -> tuple[dict, dict, object]:
    """(the run, the run once executed, the stopped fake) of :func:`spec_for`'s run against a fake
    OpenAI server answering with ``reply``."""
    fake = start_fake_openai(reply)
    try:
        run = create_run(store, spec_for(fake.base_url))
        return run, asyncio.run(execute_run(store, run["id"], policy=FAST)), fake
    finally:
        fake.stop()


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVAL_TEST_KEY", "sk-test-not-a-real-key")


def test_run_over_stored_completions_two_candidates(store: Store) -> None:
    seed_completions(store)
    seed_completions(store, 2, model="gpt-4o", tag="other")  # filtered out by metadata
    fake = start_fake_openai(student_reply())
    try:
        run = create_run(store, spec_for(fake.base_url))
        assert run["id"].startswith("evalrun_") and run["status"] == "queued" and run["n_items"] == 8
        assert isinstance(run["created_at"], int)
        done = asyncio.run(execute_run(store, run["id"], policy=FAST))
    finally:
        fake.stop()
    assert done["status"] == "completed"
    assert done["result_counts"] == {"total": 16, "completed": 16, "errored": 0, "pending": 0}
    chats = fake.chat_requests
    assert len(chats) == 16
    # The key came from the named env var; the run never stores it.
    assert all(r["headers"]["authorization"] == "Bearer sk-test-not-a-real-key" for r in chats)
    assert b"sk-test" not in orjson.dumps(db.get_run(store, run["id"]))
    by_model = {m: [r["json"] for r in chats if r["json"]["model"] == m] for m in ("gpt-4o-mini", "ft:gpt-4o-mini-2024-07-18:acme::x1")}
    assert all(b["messages"][0]["role"] == "system" and b["temperature"] == 0 for b in by_model["gpt-4o-mini"])
    assert all(all(m["role"] != "system" for m in b["messages"]) for b in by_model["ft:gpt-4o-mini-2024-07-18:acme::x1"])

    outputs = db.list_outputs(store, run["id"])
    assert len(outputs) == 16 and all(o["latency_ms"] > 0 and o["prompt_tokens"] > 0 for o in outputs)
    results = db.get_run(store, run["id"])["results"]
    assert results["systems"] == ["teacher", "mini", "pruned"]
    em = results["scores"]["exact_match"]
    assert em["teacher"]["score"] == 1.0 and em["mini"]["score"] == pytest.approx(7 / 8)
    assert em["mini"]["ci_low"] <= 7 / 8 <= em["mini"]["ci_high"]
    assert results["paired"]["exact_match"]["mini"]["diff"] == pytest.approx(-1 / 8)
    assert [d["idx"] for d in results["divergent"]["mini"]] == [7]
    assert len(db.list_scores(store, run["id"])) == 8 * 3 * 2
    # Teacher usage and latency come from the captured completions.
    items = db.list_items(store, run["id"])
    assert items[0]["teacher_prompt_tokens"] == 120 and items[0]["teacher_latency_ms"] == 400.0
    assert items[0]["reference_kind"] == "teacher" and items[0]["teacher_model"] == "gpt-4o-2024-08-06"


def test_selection_by_time_and_limit(store: Store) -> None:
    seed_completions(store)
    got = db.select_completions(store, model="gpt-4o", since=1_700_000_002, until=1_700_000_006, limit=3)
    assert [r["id"] for r in got] == ["chatcmpl-2", "chatcmpl-3", "chatcmpl-4"]
    assert db.select_completions(store, model="gpt-4o", metadata={"task": "x' OR 1=1 --"}) == []
    with pytest.raises(RunSpecError, match="no items matched"):
        create_run(store, spec_for("http://127.0.0.1:9/v1", model="claude"))


def test_retries_429_and_500_then_succeeds(store: Store) -> None:
    seed_completions(store, 3)
    attempts: dict[str, int] = {}
    inner = student_reply()

    def flaky(body: dict) -> str:
        key = body["model"] + body["messages"][-1]["content"]
        attempts[key] = attempts.get(key, 0) + 1
        if attempts[key] == 1:
            raise FakeError(429, "Rate limit reached for requests", type="requests", code="rate_limit_exceeded")
        if attempts[key] == 2:
            raise FakeError(500, "The server had an error while processing your request.", type="server_error")
        return inner(body)

    run, done, fake = run_against(store, flaky)
    assert done["status"] == "completed" and done["result_counts"]["errored"] == 0
    assert len(fake.chat_requests) == 3 * 2 * 3  # the SDK's own retries are off: we see every attempt
    assert {o["attempts"] for o in db.list_outputs(store, run["id"])} == {3}


def test_client_errors_are_not_retried_and_are_recorded(store: Store) -> None:
    seed_completions(store, 2)

    def reject(body: dict) -> str:
        raise FakeError(400, "Invalid 'messages': bad", param="messages")

    run, done, fake = run_against(store, reject)
    assert len(fake.chat_requests) == 4
    assert done["status"] == "completed" and done["result_counts"]["errored"] == 4
    out = db.list_outputs(store, run["id"])[0]
    assert out["status"] == "error" and "HTTP 400" in out["error"] and "Invalid 'messages'" in out["error"]
    assert db.get_run(store, run["id"])["results"]["errors"] == {"mini": 2, "pruned": 2}


def test_cancelled_run_resumes_without_redoing_finished_items(store: Store) -> None:
    seed_completions(store)
    fake = start_fake_openai(student_reply(), delay=0.05)
    try:
        run = create_run(store, spec_for(fake.base_url, concurrency=2))

        async def interrupt_after(n: int) -> None:
            task = asyncio.ensure_future(execute_run(store, run["id"], policy=FAST))
            while db.progress(store, run["id"])["completed"] < n:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(interrupt_after(5))
        state = db.get_run(store, run["id"])
        assert state["status"] == "canceled" and state["error"]["code"] == "interrupted"
        saved = db.progress(store, run["id"])["completed"]
        assert 5 <= saved < 16
        before = len(fake.chat_requests)
        done = asyncio.run(execute_run(store, run["id"], policy=FAST))
    finally:
        fake.stop()
    assert done["status"] == "completed" and done["result_counts"]["completed"] == 16
    assert len(fake.chat_requests) - before == 16 - saved


def test_sigkilled_cli_run_resumes(store_db: str) -> None:
    """A real crash: the CLI process is SIGKILLed mid-run; the rerun generates only what is missing."""
    dbfile = seeded_store_file(store_db)
    fake = start_fake_openai(student_reply(), delay=0.15)
    try:
        cand = f"name=mini,model=gpt-4o-mini,base_url={fake.base_url},api_key_env=EVAL_TEST_KEY"
        env = {**os.environ, "EVAL_TEST_KEY": "sk-test-not-a-real-key"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "protege", "--db", str(dbfile), "eval", "run", "--model", "gpt-4o", "--candidate", cand,
             "--metric", "exact_match", "--concurrency", "1", "--resamples", "100", "--json"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while len(fake.chat_requests) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        sent = len(fake.chat_requests)
        assert 4 <= sent < 8
        s = Store(str(dbfile))
        try:
            (run,), _ = db.list_runs(s)
            saved = db.progress(s, run["id"])["completed"]
            # Lost at most: the request in flight and the output whose commit was under way.
            assert sent - 2 <= saved <= sent
            done = asyncio.run(execute_run(s, run["id"], policy=FAST))
            assert done["status"] == "completed" and done["result_counts"]["completed"] == 8
            assert len(fake.chat_requests) - sent == 8 - saved
        finally:
            s.close()
    finally:
        fake.stop()


def test_jsonl_items_with_gold_references(tmp_path: Path, store: Store) -> None:
    lines = [
        {"messages": [{"role": "user", "content": "Capital of France?"}], "reference": "Paris", "metadata": {"k": "1"}},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Capital of Japan?"},
                      {"role": "assistant", "content": "Kyoto"}], "reference": "Tokyo"},
        {"messages": [{"role": "user", "content": "Capital of Italy?"}, {"role": "assistant", "content": "Rome"}]},
        {"id": "chatcmpl-z", "object": "chat.completion", "model": "gpt-4o", "messages": [{"role": "user", "content": "Capital of Peru?"}],
         "choices": [{"message": {"role": "assistant", "content": "Lima"}}], "usage": {"prompt_tokens": 5, "completion_tokens": 1}},
    ]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(orjson.dumps(x).decode() for x in lines) + "\n\n")
    items, digest = items_from_jsonl(path)
    assert [(i["reference"], i["reference_kind"], i["teacher_output"]) for i in items] == [
        ("Paris", "gold", None), ("Tokyo", "gold", "Kyoto"), ("Rome", "teacher", "Rome"), ("Lima", "teacher", "Lima")]
    assert len(digest) == 64 and items[3]["teacher_prompt_tokens"] == 5
    fake = start_fake_openai(student_reply())
    try:
        spec = RunSpec.from_dict({"candidates": [{"name": "s", "model": "m", "base_url": fake.base_url}],
                                  "metrics": ["exact_match"], "items_file": str(path), "n_resamples": 100})
        run = create_run(store, spec)
        done = asyncio.run(execute_run(store, run["id"], policy=FAST))
    finally:
        fake.stop()
    res = db.get_run(store, done["id"])["results"]
    # Not every item has a teacher answer, so the teacher is not scored; the student is exact on all 4.
    assert res["systems"] == ["s"] and res["scores"]["exact_match"]["s"]["score"] == 1.0
    assert res["reference_kinds"] == {"gold": 2, "teacher": 2}
    assert fake.chat_requests[0]["headers"]["authorization"] == "Bearer unused"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n')
    with pytest.raises(RunSpecError, match="bad.jsonl:1"):
        items_from_jsonl(bad)
    bad.write_text("{nope\n")
    with pytest.raises(RunSpecError, match="not valid JSON"):
        items_from_jsonl(bad)


def test_gold_from_feedback_correction(store: Store) -> None:
    seed_completions(store, 2)
    from protege.store import feedback

    feedback.add_feedback(store, "chatcmpl-1", correction="Tokyo (Edo)")
    items = db.select_completions(store, model="gpt-4o")
    assert [i["correction"] for i in items] == [None, "Tokyo (Edo)"]
    from protege.evals.runs import items_from_completions

    got = items_from_completions(items, "auto")
    assert [(i["reference"], i["reference_kind"]) for i in got] == [("Paris", "teacher"), ("Tokyo (Edo)", "gold")]
    assert [i["reference"] for i in items_from_completions(items, "teacher")] == ["Paris", "Tokyo"]


def test_spec_and_candidate_validation(monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
    with pytest.raises(CandidateError, match="api_key_env"):
        Candidate.from_dict({"model": "m", "api_key": "sk-x"})
    with pytest.raises(CandidateError, match="key=value"):
        Candidate.parse("model")
    c = Candidate.parse("name=a,model=m,base_url=http://127.0.0.1:1/v1,params.temperature=0.5,system_prompt=Be brief.")
    assert c.params == {"temperature": 0.5} and c.system_prompt == "Be brief."
    with pytest.raises(RunSpecError, match="unknown metric"):
        RunSpec.from_dict({"candidates": [{"model": "m"}], "metrics": ["nope"]})
    with pytest.raises(RunSpecError, match="unique"):
        RunSpec.from_dict({"candidates": [{"model": "m"}, {"model": "m"}]})
    for bad, msg in (({"seed": "x"}, "seed must be an integer"), ({"n_resamples": 0}, "n_resamples must be"),
                     ({"metadata": {"k": 1}}, "metadata must be"), ({"reference": "oracle"}, "reference must be one of"),
                     ({"items": "x"}, "items must be a list"), ({"since": "2024"}, "since must be Unix seconds")):
        with pytest.raises(RunSpecError, match=msg):
            RunSpec.from_dict({"candidates": [{"model": "m"}], **bad})
    with pytest.raises(RunSpecError, match="at least one candidate"):
        RunSpec.from_dict({"candidates": []})
    msgs = [{"role": "system", "content": "long"}, {"role": "user", "content": "q"}]
    assert apply_system_prompt(msgs, None) == msgs
    assert apply_system_prompt(msgs, "drop") == [{"role": "user", "content": "q"}]
    assert apply_system_prompt(msgs, "short")[0] == {"role": "system", "content": "short"}
    # A key variable that is not set fails the run with a clear message, before any request.
    seed_completions(store, 1)
    run = create_run(store, spec_for("http://127.0.0.1:9/v1"))
    monkeypatch.delenv("EVAL_TEST_KEY")
    with pytest.raises(RunSpecError, match="EVAL_TEST_KEY is not set"):
        create_run(store, spec_for("http://127.0.0.1:9/v1"))
    with pytest.raises(RunSpecError, match="EVAL_TEST_KEY is not set"):
        asyncio.run(execute_run(store, run["id"]))
    assert db.get_run(store, run["id"])["status"] == "failed"


def test_ctrl_c_cancels_cleanly_and_says_how_to_resume(store_db: str) -> None:
    dbfile = seeded_store_file(store_db)
    fake = start_fake_openai(student_reply(), delay=0.15)
    try:
        cand = f"name=mini,model=gpt-4o-mini,base_url={fake.base_url}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "protege", "--db", str(dbfile), "eval", "run", "--model", "gpt-4o", "--candidate", cand,
             "--metric", "exact_match", "--concurrency", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # Ctrl-C as a terminal sends it: a test run started in the background (`pytest &` in a
            # script) inherits SIGINT ignored, and so would the CLI, which then rightly ignores it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 60
        while len(fake.chat_requests) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 130
        assert err.strip().splitlines()[-1].startswith("error: interrupted; continue with: protege eval run --resume evalrun_")
        assert "generating" in err  # the progress bar goes to stderr
        s = Store(str(dbfile))
        try:
            (run,), _ = db.list_runs(s)
            assert run["status"] == "canceled"
            assert db.progress(s, run["id"])["completed"] >= 2
        finally:
            s.close()
    finally:
        fake.stop()


def test_azure_candidate_uses_deployment_path_and_api_key_header(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    seed_completions(store, 2)
    monkeypatch.setenv("AZ_TEST_KEY", "az-test-key")
    fake = start_fake_openai(student_reply())
    try:
        spec = RunSpec.from_dict({"candidates": [{"name": "az", "model": "mini-deploy", "azure_endpoint": fake.root_url,
                                                  "api_version": "2024-10-21", "api_key_env": "AZ_TEST_KEY"}],
                                  "model": "gpt-4o", "metrics": ["exact_match"], "n_resamples": 50})
        run = create_run(store, spec)
        done = asyncio.run(execute_run(store, run["id"], policy=FAST))
    finally:
        fake.stop()
    assert done["result_counts"]["completed"] == 2
    req = fake.chat_requests[0]
    assert req["path"] == "/openai/deployments/mini-deploy/chat/completions" and req["query"]["api-version"] == "2024-10-21"
    assert req["headers"]["api-key"] == "az-test-key"


def test_execute_run_calls_the_store_off_the_event_loop(store_db: str) -> None:
    """execute_run shares its loop with the HTTP API and the proxy under `protege serve`: every store
    call it makes (reading the run, marking it running, saving outputs, scoring, the final object,
    and the failure path) runs in a worker thread."""
    store = WatchedStore(store_db)
    fake = start_fake_openai(student_reply())
    try:
        seed_completions(store)
        run = create_run(store, spec_for(fake.base_url))
        done = asyncio.run(execute_run(store, run["id"], policy=FAST))
        assert done["status"] == "completed"
        bad = create_run(store, spec_for(fake.base_url))
        store.cursor().execute("UPDATE eval_runs SET spec = '{\"candidates\": [{\"name\": \"x\"}]}' WHERE id = ?",
                               [bad["id"]])
        with pytest.raises(RunSpecError):
            asyncio.run(execute_run(store, bad["id"], policy=FAST))
        assert db.get_run(store, bad["id"])["status"] == "failed"
    finally:
        fake.stop()
        store.close()
    assert store.on_loop == []
