"""Building datasets from captured completions in a real store, on each backend."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest
from protege.distill import (
    DatasetError,
    DatasetOptions,
    build_dataset,
    get_dataset,
    list_datasets,
    validate_jsonl,
)
from protege.distill.datasets.builder import dataset_completion_ids
from protege.store import Store, insert_records
from protege.store.feedback import add_feedback

from tests.fixtures.records import SYSTEM, make_record

def read_jsonl(path) -> list[dict]:
    return [orjson.loads(line) for line in Path(path).read_bytes().splitlines()]


def all_examples(dv) -> list[dict]:
    out = read_jsonl(dv.train_path)
    if dv.validation_path:
        out += read_jsonl(dv.validation_path)
    return out


@pytest.fixture
def store(store_db, tmp_path):
    s = Store(store_db, data_dir=tmp_path / "p-data")
    yield s
    s.close()


def test_filters_each_step_is_counted(store):
    recs = [make_record(i, answer=["billing", "technical"][i % 2]) for i in range(30)]
    recs += [make_record(100, finish_reason="length", answer="truncated ans")]
    recs += [make_record(101, refusal="I can't help with that.", answer=None)]
    recs += [make_record(102, answer="I'm sorry, but I can't help with that request.")]
    recs += [make_record(103, outcome="upstream_error")]
    recs += [make_record(104, model="gpt-4o-mini")]
    recs += [make_record(105, user="Ticket 0: my invoice number 0 looks wrong", answer="billing")]  # duplicate of #0
    insert_records(store, recs)
    dv = build_dataset(store, DatasetOptions(name="support", models=["gpt-4o"], validation_fraction=0.2, seed=3))
    c = dv.counts
    assert c["selected"] == 35  # gpt-4o-mini excluded
    assert c["status_ok"] == 34
    assert c["finish_reason"] == 33
    assert c["no_refusal"] == 31
    assert c["exact_dedupe"] == 30
    assert c["final"] == 30 and c["train"] + c["validation"] == 30
    assert c["validation"] == 6
    ids = set(dataset_completion_ids(store, dv.id))
    assert ids == {f"chatcmpl-{i}" for i in range(30)}
    for ex in all_examples(dv):
        assert ex["messages"][-1]["role"] == "assistant"
        assert set(ex["messages"][-1]) == {"role", "content"}  # refusal/annotations stripped
        assert "sorry" not in ex["messages"][-1]["content"]


def test_refusal_phrases_are_configurable(store):
    recs = [make_record(i) for i in range(12)] + [make_record(50, answer="Nope, not doing that.")]
    insert_records(store, recs)
    default = build_dataset(store, DatasetOptions(name="a"))
    assert default.counts["no_refusal"] == 13
    custom = build_dataset(store, DatasetOptions(name="a", refusal_phrases=["nope, not doing"]))
    assert custom.counts["no_refusal"] == 12
    assert custom.version == 2


def test_refusal_phrases_match_literally(store):
    # Wildcards of LIKE (% _ \) and of regexes (. * ( ) |) in a phrase are its own characters.
    recs = [make_record(i) for i in range(10)]
    recs += [make_record(50, answer="Sorry: 50% off_limits (a.b) \\ here"), make_record(51, answer="Sorry: 50 is offXlimits")]
    recs += [make_record(52, answer="Sorry: (aXb) \\ there"), make_record(53, answer="Sorry: a|b or c*")]
    insert_records(store, recs)
    dv = build_dataset(store, DatasetOptions(name="a", refusal_phrases=["50% off_limits", "(a.b) \\", "A|B OR C*"]))
    assert dv.counts["finish_reason"] - dv.counts["no_refusal"] == 2  # #50 and #53; #51 and #52 would match as patterns
    assert "chatcmpl-51" in dataset_completion_ids(store, dv.id) and "chatcmpl-52" in dataset_completion_ids(store, dv.id)


def test_metadata_time_and_score_filters(store):
    recs = [make_record(i, metadata={"app": "a" if i < 20 else "b"}, created=1_700_000_000 + i * 100) for i in range(30)]
    insert_records(store, recs)
    for i in range(0, 20, 2):
        add_feedback(store, f"chatcmpl-{i}", score=0.9)
    add_feedback(store, "chatcmpl-1", score=0.1)
    dv = build_dataset(store, DatasetOptions(name="m", metadata={"app": "a"}, validation_fraction=0))
    assert dv.counts["selected"] == 20
    dv = build_dataset(store, DatasetOptions(name="m", since=1_700_000_000 + 500, until=1_700_000_000 + 1500, validation_fraction=0))
    assert set(dataset_completion_ids(store, dv.id)) == {f"chatcmpl-{i}" for i in range(5, 15)}
    dv = build_dataset(store, DatasetOptions(name="m", min_score=0.5, validation_fraction=0))
    assert set(dataset_completion_ids(store, dv.id)) == {f"chatcmpl-{i}" for i in range(0, 20, 2)}


def test_correction_replaces_answer_and_rejected_is_dropped(store):
    recs = [make_record(i) for i in range(12)]
    recs.append(make_record(20, finish_reason="length", answer="billi"))
    insert_records(store, recs)
    add_feedback(store, "chatcmpl-3", correction="technical")
    add_feedback(store, "chatcmpl-20", correction="billing (corrected)")  # a truncated answer, fixed
    add_feedback(store, "chatcmpl-5", accepted=False)
    dv = build_dataset(store, DatasetOptions(name="c", validation_fraction=0))
    examples = {e["messages"][1]["content"]: e for e in all_examples(dv)}
    assert examples["Ticket 3: my invoice number 3 looks wrong"]["messages"][-1]["content"] == "technical"
    assert examples["Ticket 20: my invoice number 20 looks wrong"]["messages"][-1]["content"] == "billing (corrected)"
    assert "Ticket 5: my invoice number 5 looks wrong" not in examples
    assert dv.counts["final"] == 12


def test_pii_scrubbed_everywhere_including_tool_arguments(store):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
    calls = [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": orjson.dumps({"email": "jane@example.com", "n": 3, "card": "4111 1111 1111 1111"}).decode()}}]
    recs = [make_record(i, user=f"I am jane{i}@example.com, card 4111-1111-1111-1111, ip 10.0.0.{i}") for i in range(11)]
    recs.append(make_record(11, answer=None, tool_calls=calls, tools=tools, finish_reason="tool_calls"))
    insert_records(store, recs)
    dv = build_dataset(store, DatasetOptions(name="pii", validation_fraction=0))
    text = Path(dv.train_path).read_text()
    assert "example.com" not in text and "4111" not in text and "10.0.0." not in text
    assert "[EMAIL]" in text and "[CARD]" in text and "[IP_ADDRESS]" in text
    tool_ex = [e for e in read_jsonl(dv.train_path) if "tool_calls" in e["messages"][-1]][0]
    args = orjson.loads(tool_ex["messages"][-1]["tool_calls"][0]["function"]["arguments"])
    assert args == {"email": "[EMAIL]", "n": 3, "card": "[CARD]"}
    assert tool_ex["tools"] == tools
    assert dv.stats["scrub"]["examples_changed"] == 12
    assert validate_jsonl(dv.train_path).ok


def test_prune_shared_system_prompt_is_recorded(store):
    recs = [make_record(i) for i in range(9)] + [make_record(9, system="Other prompt"), make_record(10, system=None), make_record(11)]
    insert_records(store, recs)
    dv = build_dataset(store, DatasetOptions(name="p", prune_system_prompt=True, prune_min_share=0.8, validation_fraction=0))
    assert dv.system_prompt == SYSTEM
    assert dv.system_prompt_sha256 == hashlib.sha256(SYSTEM.encode()).hexdigest()
    ex = read_jsonl(dv.train_path)
    assert sum(1 for e in ex if e["messages"][0].get("content") == SYSTEM) == 0
    assert sum(1 for e in ex if e["messages"][0].get("content") == "Other prompt") == 1
    again = get_dataset(store, dv.id)
    assert again.system_prompt == SYSTEM
    # Below the share nothing is pruned.
    dv2 = build_dataset(store, DatasetOptions(name="p", prune_system_prompt=True, prune_min_share=0.95, validation_fraction=0))
    assert dv2.system_prompt is None


def test_near_duplicates_opt_in(store):
    base = "Hello, my printer model X200 stops printing after two pages and shows a blinking orange light, what should I do"
    recs = [make_record(i, user=f"{base} {'please' if i % 2 else 'thanks'}" if i < 6 else f"Question {i} about something entirely different number {i * 7}", answer="reset it") for i in range(16)]
    insert_records(store, recs)
    exact = build_dataset(store, DatasetOptions(name="n", validation_fraction=0))
    assert exact.counts["final"] == 12  # two distinct texts among the first six
    near = build_dataset(store, DatasetOptions(name="n", near_dedupe=True, near_threshold=0.8, validation_fraction=0))
    assert near.counts["near_dedupe"] == 11
    assert near.counts["final"] == 11


def test_version_record_files_hashes_and_card(store, tmp_path):
    recs = [make_record(i, answer=["billing", "technical"][i % 2], metadata={"session": f"s{i // 3}"}) for i in range(40)]
    insert_records(store, recs)
    for i in range(40):
        add_feedback(store, f"chatcmpl-{i}", label=["billing", "technical"][i % 2])
    dv = build_dataset(store, DatasetOptions(name="card", stratify=True, validation_fraction=0.25, seed=1))
    assert dv.id.startswith("ds_") and dv.version == 1
    assert Path(dv.train_path).parent == store.data_dir / "datasets" / dv.id
    for name in ("train", "validation", "card"):
        f = dv.files[name]
        assert hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest() == f["sha256"]
    assert dv.stats["labels"] == {"billing": [15, 5], "technical": [15, 5]}
    card = Path(dv.card_path).read_text()
    assert "# Dataset card v1" in card
    assert "| Exact duplicates removed | 40 |" in card
    assert "| billing | 15 | 5 |" in card
    assert "## Tokens" in card and "| train | 30 | 960 |" in card  # 32 exact tokens per example
    assert "epochs: 3" in card
    assert '"stratify": true' in card
    tr = dv.stats["training"]
    assert tr["training_tokens"] == 960 * 3 and tr["estimated_cost_usd"] == round(960 * 3 / 1e6 * 3.0, 4)
    listed, _ = list_datasets(store)
    assert [d.id for d in listed] == [dv.id]
    assert len(dataset_completion_ids(store, dv.id, "validation")) == 10


def test_tokens_estimated_only_without_usage(store):
    insert_records(store, [make_record(i, usage=(i % 2 == 0)) for i in range(12)])
    dv = build_dataset(store, DatasetOptions(name="t", validation_fraction=0))
    t = dv.stats["tokens"]["train"]
    assert t["exact"] == 6 and t["estimated"] == 6


def test_empty_selection_is_a_clear_error(store):
    insert_records(store, [make_record(i) for i in range(3)])
    with pytest.raises(DatasetError, match="no completions match"):
        build_dataset(store, DatasetOptions(name="x", models=["nope"]))
    assert list((store.data_dir / "datasets").iterdir()) == []  # nothing half-written is left
    assert list_datasets(store)[0] == []
    with pytest.raises(DatasetError, match="validation_fraction"):
        build_dataset(store, DatasetOptions(name="x", validation_fraction=1.5))
    with pytest.raises(DatasetError, match="unknown dataset option"):
        DatasetOptions.from_dict({"name": "x", "bogus": 1})
    with pytest.raises(DatasetError, match="'models'"):
        DatasetOptions.from_dict({"name": "x", "models": "gpt-4o"})


def test_too_few_examples_is_flagged(store):
    insert_records(store, [make_record(i) for i in range(5)])
    dv = build_dataset(store, DatasetOptions(name="few", validation_fraction=0))
    assert dv.stats["valid"] is False
    assert dv.stats["validation"]["train"]["error_counts"] == {"too_few_examples": 1}


def test_dpo_from_corrections_and_accept_reject(store):
    recs = [make_record(i, answer=f"answer {i}") for i in range(14)]
    # Same input twice: one accepted, one rejected answer.
    recs.append(make_record(50, user="Same question", answer="good answer"))
    recs.append(make_record(51, user="Same question", answer="bad answer"))
    insert_records(store, recs)
    for i in range(12):
        add_feedback(store, f"chatcmpl-{i}", correction=f"better answer {i} from jane@example.com")
    add_feedback(store, "chatcmpl-50", accepted=True)
    add_feedback(store, "chatcmpl-51", accepted=False)
    dv = build_dataset(store, DatasetOptions(name="prefs", kind="dpo", validation_fraction=0))
    assert dv.kind == "dpo" and dv.counts["pairs"] == 13
    lines = read_jsonl(dv.train_path)
    assert all(set(p) == {"input", "preferred_output", "non_preferred_output"} for p in lines)
    by_bad = {p["non_preferred_output"][0]["content"]: p for p in lines}
    assert by_bad["answer 3"]["preferred_output"] == [{"role": "assistant", "content": "better answer 3 from [EMAIL]"}]
    assert by_bad["bad answer"]["preferred_output"][0]["content"] == "good answer"
    assert by_bad["bad answer"]["input"]["messages"][-1] == {"role": "user", "content": "Same question"}
    assert validate_jsonl(dv.train_path).ok
    assert {"chatcmpl-50", "chatcmpl-51"} <= set(dataset_completion_ids(store, dv.id))


def test_dpo_without_feedback_is_an_error(store):
    insert_records(store, [make_record(i) for i in range(3)])
    with pytest.raises(DatasetError, match="no preference pairs"):
        build_dataset(store, DatasetOptions(name="d", kind="dpo"))


def test_worker_processes_give_identical_output(store):
    recs = [make_record(i, user=f"Ticket {i}: call me on 555-123-{1000 + i} please", answer=["a", "b"][i % 3 == 0]) for i in range(60)]
    insert_records(store, recs)
    opts = DatasetOptions(name="w", validation_fraction=0.2, seed=5)
    inline = build_dataset(store, opts, workers=0)
    pooled = build_dataset(store, opts, workers=2)
    for name in ("train", "validation"):
        assert inline.files[name]["sha256"] == pooled.files[name]["sha256"]
    assert inline.counts == pooled.counts and inline.stats["scrub"] == pooled.stats["scrub"]
    assert "[PHONE]" in Path(pooled.train_path).read_text()


def test_invalid_examples_are_dropped_and_counted(store):
    recs = [make_record(i) for i in range(12)]
    recs.append(make_record(40, user=""))  # empty user content -> missing_content
    recs.append(make_record(41, answer=None))  # no content, no tool calls -> message_missing_key
    insert_records(store, recs)
    dv = build_dataset(store, DatasetOptions(name="inv", validation_fraction=0.1, seed=2))
    assert dv.stats["invalid_dropped"] == {"missing_content": 1, "message_missing_key": 1}
    assert dv.counts["exact_dedupe"] == 14 and dv.counts["valid"] == 12 and dv.counts["final"] == 12
    assert dv.counts["train"] + dv.counts["validation"] == 12
    assert validate_jsonl(dv.train_path).ok
    assert "`message_missing_key` 1, `missing_content` 1" in Path(dv.card_path).read_text()


def test_pruned_token_counts_stay_sane_when_upstream_counts_fewer_tokens(store):
    # An upstream whose usage counts fewer tokens than our ~4-characters estimate of the pruned
    # prompt must not drive the per-example count to nothing.
    long_prompt = "Classify the ticket into one of our categories and answer with the category only. " * 8
    recs = [make_record(i, system=long_prompt) for i in range(12)]  # usage says 30 prompt tokens
    insert_records(store, recs)
    dv = build_dataset(store, DatasetOptions(name="t", prune_system_prompt=True, validation_fraction=0))
    assert dv.system_prompt == long_prompt
    train = dv.stats["tokens"]["train"]
    assert train["min"] >= 5  # the user message and the answer are still there
    assert train["estimated"] == 12


def test_odd_shaped_responses_are_dropped_not_fatal(store):
    """The selection reads the answer out of each stored response: one with no choices, an empty
    list, a message that is not an object or choices that are not a list builds (the rest of the
    rows make the dataset), and is counted, on both backends."""
    recs = [make_record(i, answer=["billing", "technical"][i % 2]) for i in range(12)]
    odd = [{"id": "x"}, {"choices": []}, {"choices": [{"index": 0, "message": "billing"}]},
           {"choices": {"0": {"message": {"role": "assistant", "content": "billing"}}}}]
    for k, response in enumerate(odd):
        rec = make_record(50 + k, user=f"odd {k}")
        rec["response"] = orjson.dumps(response).decode()
        recs.append(rec)
    insert_records(store, recs)
    dv = build_dataset(store, DatasetOptions(name="odd", validation_fraction=0.1, seed=2))
    assert dv.counts["final"] == 12
    assert dv.stats["invalid_dropped"] == {"missing_choices": 4}
