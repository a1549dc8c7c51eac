"""Policies: TOML parsing, validation errors (one line, naming the field), durations, storage."""

from __future__ import annotations

import pytest
from protege.distill.auto.policies import (
    PolicyError,
    load_policies_file,
    parse_duration,
    parse_policies_toml,
    parse_policy,
)
from protege.store import Store
from protege.store import auto as store_auto

GOOD = """
[[policy]]
name = "intent"
match = { model = "gpt-4o-mini", metadata = { task = "intent" } }
trigger = { min_new_completions = 200, min_interval = "1h" }
dataset = { }

[policy.student]
backend = "local"

[policy.gate]
metrics = ["exact_match"]
tolerance = 0.05
min_items = 40

[policy.rollout]
stages = ["shadow", "canary", "full"]
canary_percent = 20
agreement_threshold = 0.85
min_compared = 30
student_timeout = "2s"

[[policy]]
name = "support-summaries"
match = { model = "gpt-4o" }
trigger = { every = "24h" }
student = { backend = "openai", base_model = "gpt-4.1-mini-2025-04-14", hyperparameters = { n_epochs = 3 } }
gate = { metrics = ["rougeL"], tolerance = 0.03 }
"""


def test_good_file_parses_with_defaults() -> None:
    a, b = parse_policies_toml(GOOD)
    assert a.name == "intent" and a.match.metadata == {"task": "intent"}
    assert a.trigger.min_new_completions == 200 and a.trigger.min_interval == 3600.0
    assert a.gate.tolerance == 0.05 and a.gate.min_items == 40 and a.gate.confidence == 0.95
    assert a.rollout.canary_percent == 20 and a.rollout.student_timeout == 2.0
    assert b.trigger.every == 86400.0 and b.trigger.min_new_completions is None
    assert b.student.backend == "openai" and b.student.hyperparameters == {"n_epochs": 3}
    assert b.rollout.stages == ["shadow", "canary", "full"]


@pytest.mark.parametrize(
    "change, expected",
    [
        (("tolerance = 0.05", "tolerance = 1.5"), "policy[0] (intent): gate.tolerance: Input should be less than or equal to 1"),
        (("tolerance = 0.05", "tolerence = 0.05"), "gate.tolerence: unknown field"),
        (('min_interval = "1h"', 'min_interval = "soon"'), "trigger.min_interval: not a duration: 'soon'"),
        (('backend = "local"', 'backend = "vertex"'), "student.backend: Input should be 'local', 'openai', 'azure', 'lora' or 'best'"),
        (('student = { backend = "openai", base_model = "gpt-4.1-mini-2025-04-14",', 'student = { backend = "openai",'), "needs base_model"),
        (('stages = ["shadow", "canary", "full"]', 'stages = ["full", "shadow"]'), "stages must be distinct and in the order"),
        (('canary_percent = 20', 'canary_percent = 0'), "rollout.canary_percent: Input should be greater than 0"),
        (('trigger = { every = "24h" }', 'trigger = { }'), "trigger needs min_new_completions and/or every"),
        (('match = { model = "gpt-4o" }', 'match = { }'), "match needs a model or at least one metadata pair"),
        (('name = "intent"', 'name = "in tent"'), "name may contain"),
        (('min_items = 40', 'min_items = 0'), "gate.min_items: Input should be greater than or equal to 1"),
    ],
)
def test_errors_are_one_line_and_name_the_field(change: tuple[str, str], expected: str) -> None:
    text = GOOD.replace(*change, 1)
    assert text != GOOD
    with pytest.raises(PolicyError) as info:
        parse_policies_toml(text)
    msg = str(info.value)
    assert expected in msg
    assert "\n" not in msg


def test_file_level_errors(tmp_path) -> None:
    with pytest.raises(PolicyError, match="invalid TOML"):
        parse_policies_toml("[[policy]\nname=1")
    with pytest.raises(PolicyError, match=r"no \[\[policy\]\] tables"):
        parse_policies_toml("")
    with pytest.raises(PolicyError, match="unknown top-level key 'policies'"):
        parse_policies_toml("[[policies]]\nname='x'")
    with pytest.raises(PolicyError, match="duplicate policy name 'intent'"):
        parse_policies_toml(GOOD.replace('name = "support-summaries"', 'name = "intent"'))
    with pytest.raises(PolicyError, match="cannot read"):
        load_policies_file(tmp_path / "missing.toml")
    with pytest.raises(PolicyError, match="must be a table/object"):
        parse_policy(["x"])


def test_durations() -> None:
    assert parse_duration(90) == 90.0
    assert parse_duration("90s") == 90.0
    assert parse_duration("15m") == 900.0
    assert parse_duration("24h") == 86400.0
    assert parse_duration("7d") == 604800.0
    assert parse_duration("1.5h") == 5400.0
    for bad in ("-1", "h", "1y", True, -3):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_policies_are_stored_by_name_with_stable_ids(make_db) -> None:
    from protege.distill.auto.policies import policy_object, save_policy, stored_policy

    store = Store(make_db("p"))
    a, _b = parse_policies_toml(GOOD)
    row1 = save_policy(store, a)
    assert row1.id.startswith("policy_")
    changed = a.model_copy(update={"enabled": False})
    row2 = save_policy(store, changed)
    assert row2.id == row1.id
    assert [r.name for r in store_auto.list_policies(store)] == ["intent"]
    assert store_auto.list_policies(store, enabled_only=True) == []
    assert stored_policy(store_auto.get_policy(store, "intent")).gate.tolerance == 0.05
    obj = policy_object(store_auto.get_policy(store, row1.id))
    assert obj["object"] == "protege.policy" and obj["gate"]["min_items"] == 40 and obj["enabled"] is False
    store.close()


def test_dataset_options_are_checked_against_the_builder() -> None:
    base = {"name": "p", "match": {"model": "m"}, "trigger": {"every": "1d"}}
    with pytest.raises(PolicyError, match=r"dataset.nope: unknown dataset option"):
        parse_policy({**base, "dataset": {"nope": 1}})
    with pytest.raises(PolicyError, match=r"dataset.validation_fraction: must be > 0"):
        parse_policy({**base, "dataset": {"validation_fraction": 0}})
    with pytest.raises(PolicyError, match=r"validation_fraction must be in \[0, 1\)"):
        parse_policy({**base, "dataset": {"validation_fraction": 1.5}})
    assert parse_policy({**base, "dataset": {"dedupe": False, "validation_fraction": 0.3}}).dataset["validation_fraction"] == 0.3
