"""End to end: traffic sent with the openai SDK through the real proxy becomes a dataset."""

from __future__ import annotations

import orjson

from protege.settings import load_settings
from tests.fixtures.http import Served, call


def test_traffic_through_the_proxy_becomes_a_dataset(store_db, fake_openai):
    from openai import OpenAI

    from protege.app import build_app

    settings = load_settings(db=store_db, upstream=fake_openai.base_url)
    app, store, writer = build_app(settings)
    served = Served(app, fast=False)
    try:
        root = served.url
        client = OpenAI(base_url=root + "/v1", api_key="sk-test-not-a-real-key", max_retries=0)
        ids = []
        system = "You are a long-winded teacher prompt that the student will not need."
        for i in range(14):
            # The fake echoes the last user message; one request repeats (a duplicate).
            user = f"Ticket {i % 13}: please mail the invoice to person{i % 13}@example.com"
            resp = client.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                store=True,
                metadata={"app": "support", "session": f"s{i // 4}"},
            )
            ids.append(resp.id)
        assert writer.flush(10)

        status, fb = call("POST", f"{root}/protege/v1/completions/{ids[1]}/feedback", {"score": 1, "correction": "Invoice sent."})
        assert status == 200 and fb["id"].startswith("fb_")
        status, err = call("POST", f"{root}/protege/v1/completions/chatcmpl-unknown/feedback", {"score": 1})
        assert status == 404 and err["error"]["code"] == "not_found"

        status, dv = call("POST", f"{root}/protege/v1/datasets", {
            "name": "e2e", "metadata": {"app": "support"}, "prune_system_prompt": True,
            "group_by": "session", "validation_fraction": 0.25, "seed": 1,
        })
        assert status == 200, dv
        assert dv["counts"]["selected"] == 14 and dv["counts"]["exact_dedupe"] == 13
        assert dv["system_prompt"] == system
        lines = [orjson.loads(x) for x in open(dv["files"]["train"]["path"], "rb")]
        lines += [orjson.loads(x) for x in open(dv["files"]["validation"]["path"], "rb")]
        assert len(lines) == 13
        text = orjson.dumps(lines).decode()
        assert "example.com" not in text and "[EMAIL]" in text and system not in text
        assert {"role": "assistant", "content": "Invoice sent."} in [e["messages"][-1] for e in lines]
        assert all(e["messages"][0]["role"] == "user" for e in lines)
        # Exact token counts from the captured usage, except the corrected/pruned ones.
        assert dv["stats"]["tokens"]["train"]["total"] > 0
    finally:
        served.stop(20)
