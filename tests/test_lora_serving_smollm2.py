"""The real SmolLM2-135M-Instruct (from its GGUF, dequantised once into the test cache) with a LoRA
adapter, served through the proxy and answered with the openai SDK, streamed and not."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from protege.settings import Settings
from protege.store import Store
from tests.fixtures.lora_students import dequantised_base, make_lora_student
from tests.fixtures.models import cache_dir
from tests.servers import AppServer


@pytest.fixture(scope="session")
def lora_serve_smollm2(smollm2_gguf) -> Path:
    """SmolLM2 dequantised from the GGUF once (kept in the test cache across runs)."""
    return dequantised_base(smollm2_gguf, cache_dir() / "smollm2-135m-instruct-dequantised")


# DuckDB only: training time, not the store, is this test's cost; the LoRA job's records, its student registry and serving run on PostgreSQL in test_lora_serving.py::test_a_student_in_a_postgresql_registry_answers_and_is_captured.
@pytest.mark.backends("duckdb")
def test_smollm2_student_through_the_proxy(tmp_path, lora_serve_smollm2):
    store = Store(str(tmp_path / "s.duckdb"), data_dir=tmp_path / "s-data")
    make_lora_student(store, lora_serve_smollm2, "smol", nudge=0.0, r=8)  # an adapter that leaves the base's answers
    srv = AppServer(Settings(db=store.path, data_dir=str(store.data_dir), upstream="http://127.0.0.1:9/v1", upstream_api_key="sk-x"), store=store)
    try:
        client = openai.OpenAI(base_url=srv.base_url, api_key="sk-client", max_retries=0)
        messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
        out = client.chat.completions.create(model="protege/smol", messages=messages, temperature=0, max_tokens=8)
        text = out.choices[0].message.content
        assert "Paris" in text and out.model == "protege/smol@v1" and out.usage.prompt_tokens > 20
        chunks = list(client.chat.completions.create(model="protege/smol", messages=messages, temperature=0, max_tokens=8, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
        assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed token by token
    finally:
        srv.stop()
