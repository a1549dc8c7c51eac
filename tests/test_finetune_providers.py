"""What Azure fine-tunes (one table, checked before any upload) and OpenAI's closing of new jobs,
through the real ``openai`` SDK against the local fake fine-tuning server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from protege.distill.finetune.backends import FineTuneError, JobSpec
from protege.distill.finetune.openai_backend import (
    AZURE_FINE_TUNING,
    OPENAI_CLOSED_HINT,
    OpenAIBackend,
    azure_model,
    check_azure_model,
    make_azure_client,
    make_openai_client,
)
from tests.fakes.openai_finetune import OPENAI_CLOSED_MESSAGE, FakeFineTuneServer


def rows(n: int = 12, dpo: bool = False) -> list[dict]:
    if dpo:
        return [{"input": {"messages": [{"role": "user", "content": f"q{i}"}]},
                 "preferred_output": [{"role": "assistant", "content": "short"}],
                 "non_preferred_output": [{"role": "assistant", "content": "long and rambling"}]} for i in range(n)]
    return [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(n)]


def jsonl(path: Path, items: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in items) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def fake():
    with FakeFineTuneServer(step_seconds=0.02) as server:
        yield server


def azure(fake: FakeFineTuneServer, **kw) -> OpenAIBackend:
    client = make_azure_client(azure_endpoint=fake.azure_endpoint, api_key="az-key", api_version="2025-02-01-preview")
    return OpenAIBackend(client, name="azure", poll_interval=0.01, **kw)


def uploads(fake: FakeFineTuneServer, since: int) -> list[dict]:
    return [r for r in fake.requests[since:] if r["method"] == "POST" and r["path"].endswith("/files")]


def test_the_table_is_azures_list() -> None:
    table = {r.name: r.methods for r in AZURE_FINE_TUNING}
    assert table["gpt-4o-mini"] == ("supervised",)
    for name in ("gpt-4o", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano"):
        assert table[name] == ("supervised", "dpo")
    for name in ("Ministral-3B", "Qwen-32B", "Llama-3.3-70B-Instruct", "gpt-oss-20b"):
        assert table[name] == ("supervised",) and azure_model(name).global_only
    # Azure spells models undated, dated, or as a fine-tune of one (continual fine-tuning)
    assert azure_model("gpt-4o-mini-2024-07-18").name == "gpt-4o-mini"
    assert azure_model("gpt-4o-2024-08-06").name == "gpt-4o"
    assert azure_model("gpt-4.1-mini-2025-04-14.ft-0123abcd").name == "gpt-4.1-mini"
    assert azure_model("Ministral-3B-2411").name == "Ministral-3B"
    assert azure_model("ft:gpt-4.1-2025-04-14:org:suffix:abc123").name == "gpt-4.1"
    assert azure_model("gpt-35-turbo-0125") is None and azure_model("gpt-4o-mini-tts") is None


@pytest.mark.parametrize(
    ("model", "method", "code", "words"),
    [
        ("gpt-4o-mini-2024-07-18", "dpo", "unsupported_method", "fine-tunes gpt-4o-mini with SFT only, not DPO"),
        ("gpt-oss-20b", "dpo", "unsupported_method", "gpt-oss-20b with SFT only"),
        ("o4-mini", "supervised", "unsupported_method", "reinforcement fine-tuning, which Protege does not launch"),
        ("gpt-35-turbo-0125", "supervised", "unsupported_model", "does not fine-tune 'gpt-35-turbo-0125'"),
    ],
)
def test_unsupported_pairs_fail_before_any_upload(fake, tmp_path, model, method, code, words) -> None:
    train = jsonl(tmp_path / "t.jsonl", rows(dpo=method == "dpo"))
    before = len(fake.requests)
    with pytest.raises(FineTuneError) as exc:
        azure(fake).start(JobSpec(model=model, training_file=train, method=method))
    assert exc.value.code == code and exc.value.status == 400 and words in exc.value.message
    assert fake.requests[before:] == []  # nothing uploaded, nothing asked
    if code == "unsupported_model":
        assert "gpt-4.1-nano (2025-04-14): SFT, DPO" in exc.value.message  # the message lists what Azure takes


def test_check_is_pure_and_matches_backend() -> None:
    assert check_azure_model("gpt-4.1", "dpo").name == "gpt-4.1"
    with pytest.raises(FineTuneError):
        check_azure_model("gpt-4.1", "reinforcement")


def wait(backend: OpenAIBackend, job_id: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = backend.status(job_id).status
        if st in ("succeeded", "failed", "cancelled"):
            return st
        time.sleep(0.02)
    return st


def test_supported_pairs_run_and_open_models_use_global_training(fake, tmp_path) -> None:
    dpo = azure(fake).start(JobSpec(model="gpt-4.1-mini-2025-04-14", training_file=jsonl(tmp_path / "d.jsonl", rows(dpo=True)), method="dpo"))
    body = [r for r in fake.requests if r["path"] == "/openai/fine_tuning/jobs" and r["method"] == "POST"][-1]["json"]
    assert body["method"]["type"] == "dpo" and "trainingType" not in body
    assert wait(azure(fake), dpo.provider_job_id) == "succeeded"
    azure(fake).start(JobSpec(model="Qwen-32B", training_file=jsonl(tmp_path / "q.jsonl", rows())))
    body = [r for r in fake.requests if r["path"] == "/openai/fine_tuning/jobs" and r["method"] == "POST"][-1]["json"]
    assert body["model"] == "Qwen-32B" and body["trainingType"] == "GlobalStandard"
    azure(fake, training_type="Developer").start(JobSpec(model="gpt-4.1-nano", training_file=jsonl(tmp_path / "n.jsonl", rows())))
    body = [r for r in fake.requests if r["path"] == "/openai/fine_tuning/jobs" and r["method"] == "POST"][-1]["json"]
    assert body["trainingType"] == "Developer"


def test_fake_azure_refuses_unsupported_base_models_like_azure(fake, tmp_path) -> None:
    """Without Protege's check (a plain OpenAI-style backend on Azure paths) Azure's own refusal arrives."""
    client = make_azure_client(azure_endpoint=fake.azure_endpoint, api_key="az-key", api_version="2025-02-01-preview")
    with pytest.raises(FineTuneError) as exc:
        OpenAIBackend(client, name="azure-unchecked", poll_interval=0.01).start(
            JobSpec(model="gpt-35-turbo-0125", training_file=jsonl(tmp_path / "t.jsonl", rows())))
    assert exc.value.status == 400 and "does not support fine-tuning" in exc.value.message


def test_openai_refusal_reaches_the_user_verbatim_with_the_way_out(tmp_path) -> None:
    with FakeFineTuneServer(step_seconds=0.02, new_jobs_closed=True) as closed:
        backend = OpenAIBackend(make_openai_client(api_key="sk-test", base_url=closed.base_url), poll_interval=0.01)
        with pytest.raises(FineTuneError) as exc:
            backend.start(JobSpec(model="gpt-4.1-mini-2025-04-14", training_file=jsonl(tmp_path / "t.jsonl", rows())))
    first, second = exc.value.message.split("\n")
    assert first == OPENAI_CLOSED_MESSAGE  # OpenAI's words, unchanged
    assert second == OPENAI_CLOSED_HINT
    assert "2027-01-06" in second and "--backend lora" in second and "azure" in second.lower()
    assert exc.value.status == 403 and exc.value.code == "fine_tuning_unavailable"


def test_openai_refusal_through_the_cli(tmp_path, make_db, monkeypatch) -> None:
    """The CLI prints the refusal and the hint on stderr and exits non-zero."""
    from typer.testing import CliRunner

    from protege.cli import app

    with FakeFineTuneServer(step_seconds=0.02, new_jobs_closed=True) as closed:
        monkeypatch.setenv("PROTEGE_UPSTREAM", closed.base_url)
        monkeypatch.setenv("PROTEGE_UPSTREAM_API_KEY", "sk-test")
        monkeypatch.setenv("PROTEGE_FINETUNE_POLL_INTERVAL", "0.01")
        train = jsonl(tmp_path / "t.jsonl", rows())
        result = CliRunner().invoke(app, ["--db", make_db("p"), "finetune", "start", "--backend", "openai",
                                          "--model", "gpt-4.1-mini", "--training-file", train])
    assert result.exit_code != 0
    err = result.stderr if hasattr(result, "stderr") else result.output
    assert OPENAI_CLOSED_MESSAGE in err and "--backend lora" in err


def test_readme_lists_the_azure_table() -> None:
    """The docs say which Azure models take which methods, from the same table the backend checks."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    names = {"supervised": "SFT", "dpo": "DPO"}
    for row in AZURE_FINE_TUNING:
        version = f" ({row.version})" if row.version else ""
        line = next((ln for ln in readme.splitlines() if ln.startswith(f"| `{row.name}`{version} |")
                     or (ln.startswith("| `") and f"`{row.name}`" in ln.split("|")[1])), None)
        assert line is not None, row.name
        if "reinforcement" not in row.methods:
            assert f"| {', '.join(names[m] for m in row.methods)} |" in line, line
            assert ("global training only" in line) is row.global_only
    assert "2027-01-06" in readme and "--backend lora" in readme and "--from-openai" in readme
