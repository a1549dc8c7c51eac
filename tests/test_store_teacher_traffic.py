"""One definition of teacher traffic, used by every caller that picks captures to learn from or
score against: evals, auto's trigger, datasets. Students (served through the proxy with
``served_by='student'``) and shadows (``source='shadow'``: second answers) are excluded; imported
completions are teacher traffic."""

from __future__ import annotations

from typing import Any

import pytest

from protege.store import Store, completion_filter, insert_records, record_from_completion
from protege.store import auto as store_auto
from protege.store import evals as store_evals
from protege.store.datasets import Selection, prepare_selection

REQ = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def capture(cid: str, *, source: str, served_by: str | None = None, metadata: dict[str, str] | None = None,
            paired_with: str | None = None) -> dict[str, Any]:
    response = {"id": cid, "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {cid}"}, "finish_reason": "stop"}]}
    return record_from_completion(response, REQ, metadata=metadata if metadata is not None else {"task": "t"},
                                  source=source, served_by=served_by, paired_with=paired_with)


@pytest.fixture
def store(store_db, tmp_path) -> Any:
    s = Store(store_db, data_dir=tmp_path / "data")
    insert_records(s, [
        capture("teacher", source="proxy", served_by="teacher"),
        capture("plain", source="proxy"),  # captured before routes existed: served_by NULL is the teacher
        capture("student", source="proxy", served_by="student"),  # a canary/full student answered the client
        capture("shadow-student", source="shadow", served_by="student", paired_with="teacher"),
        capture("shadow-teacher", source="shadow", served_by="teacher", paired_with="student"),
        capture("imported", source="import"),
        capture("other-task", source="proxy", metadata={"task": "other"}),
    ])
    yield s
    s.close()


TEACHER = {"teacher", "plain", "imported"}


def test_the_filter_flag(store: Store) -> None:
    where, params = completion_filter(metadata={"task": "t"}, stored_only=True, teacher_only=True, dialect=store.dialect)
    got = {r[0] for r in store.cursor().execute(f"SELECT c.id FROM completions c WHERE {where}", params).fetchall()}
    assert got == TEACHER


def test_evals_take_only_teacher_answers_as_references(store: Store) -> None:
    # before: every successful capture, so a student's or a shadow's answer became the "teacher" reference
    assert {r["id"] for r in store_evals.select_completions(store, model="gpt-4o", metadata={"task": "t"})} == TEACHER


def test_auto_counts_what_the_next_dataset_gains(store: Store) -> None:
    # before: source='proxy' only, so imports (which the dataset builder uses) were not counted
    assert store_auto.eligible_count(store, "gpt-4o", {"task": "t"}) == 3
    assert set(store_auto.eligible_ids(store, "gpt-4o", {"task": "t"})) == TEACHER
    _, counts = prepare_selection(store, Selection(models=["gpt-4o"], metadata={"task": "t"}))
    assert counts["selected"] == 3  # the same set, through the same definition


def test_served_counts_are_answers_clients_got(store: Store) -> None:
    assert store_auto.served_counts(store, "gpt-4o", {"task": "t"}) == {"teacher": 2, "student": 1}


def test_students_can_still_be_selected_on_purpose(store: Store) -> None:
    _, counts = prepare_selection(store, Selection(metadata={"task": "t"}, exclude_students=False))
    assert counts["selected"] == 6
