"""Pairwise judge against a real local OpenAI-shaped server, through the real openai SDK."""

from __future__ import annotations

import openai
import pytest

from protege.evals.metrics.judge import PairwiseJudge, parse_verdict
from protege.evals.metrics import get_metric
from tests.fakes.openai_upstream import FakeError, start_fake_openai


def _responses(user_content: str) -> tuple[str, str]:
    a = user_content.split("[Response A]\n", 1)[1].split("\n\n[Response B]", 1)[0]
    b = user_content.split("[Response B]\n", 1)[1].split("\n\nWhich response", 1)[0]
    return a, b


def _user(body: dict) -> str:
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


@pytest.fixture
def fake():
    servers = []

    def start(reply):
        s = start_fake_openai(reply=reply)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def test_both_orders_are_asked_and_consistent_preference_wins(fake) -> None:
    def prefer_good(body: dict) -> str:  # an unbiased judge: picks whichever response contains "good"
        a, b = _responses(_user(body))
        return "A" if "good" in a else "B" if "good" in b else "TIE"

    server = fake(prefer_good)
    judge = PairwiseJudge(model="judge-1", base_url=server.base_url, api_key="test-key")
    res = judge.compare(["q1", "q2", "q3"], ["good answer", "bad answer", "same"], ["bad answer", "good answer", "same"])
    assert res.outcomes == ["win", "loss", "tie"]
    assert (res.wins, res.ties, res.losses) == (1, 1, 1)
    assert res.win_rate == pytest.approx(0.5)
    chats = server.chat_requests
    assert len(chats) == 4 and res.calls == 4  # identical outputs ("same") cost no call
    shown = sorted(_responses(_user(c["json"])) for c in chats)
    assert shown == sorted([("good answer", "bad answer"), ("bad answer", "good answer")] * 2)
    assert all(c["json"]["model"] == "judge-1" and c["json"]["temperature"] == 0 for c in chats)
    assert all("q" in _user(c["json"]) for c in chats)
    assert res.items[0].candidate_first == "A" and res.items[0].candidate_second == "B"


def test_position_bias_cancels_to_ties(fake) -> None:
    server = fake(lambda body: "A")  # always prefers whatever is shown first
    judge = PairwiseJudge(model="judge-1", base_url=server.base_url, api_key="test-key", concurrency=2)
    res = judge.compare(None, ["x1", "x2", "x3"], ["y1", "y2", "y3"])
    assert res.outcomes == ["tie"] * 3 and res.win_rate == 0.5
    assert len(server.chat_requests) == 6


def test_identical_outputs_make_no_call_and_unparseable_verdicts_are_ties(fake) -> None:
    server = fake(lambda body: "I cannot decide, both are fine")
    judge = PairwiseJudge(model="judge-1", base_url=server.base_url, api_key="test-key")
    res = judge.compare(["q"], ["same text"], ["same text"])
    assert res.outcomes == ["tie"] and res.calls == 0 and server.chat_requests == []
    res = judge.compare(["q"], ["one"], ["two"])
    assert res.outcomes == ["tie"] and res.items[0].candidate_first is None


def test_judge_metric_scores_and_signature(fake) -> None:
    server = fake(lambda body: "B" if "student" in _responses(_user(body))[1] else "A")
    m = get_metric("judge", model="judge-1", base_url=server.base_url, api_key="test-key")
    assert m.item_scores(["student says", "same"], ["teacher says", "same"]) == [1.0, 0.5]
    sig = m.signature()
    assert "model:judge-1" in sig and "orders:both" in sig and "test-key" not in sig


def test_blocking_compare_works_inside_a_running_event_loop(fake) -> None:
    import asyncio

    server = fake(lambda body: "A" if "good" in _responses(_user(body))[0] else "B")
    judge = PairwiseJudge(model="judge-1", base_url=server.base_url, api_key="test-key")

    async def inside_loop() -> list[str]:
        return judge.compare(None, ["good"], ["meh"]).outcomes  # e.g. score_pairs called from async code

    assert asyncio.run(inside_loop()) == ["win"]


def test_judge_errors_surface(fake) -> None:
    def no_such_model(body: dict) -> str:
        raise FakeError(404, f"The model `{body['model']}` does not exist", code="model_not_found", param="model")

    server = fake(no_such_model)
    judge = PairwiseJudge(model="judge-missing", base_url=server.base_url, api_key="test-key", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="judge-missing"):
        judge.compare(["q"], ["a"], ["b"])
    with pytest.raises(ValueError, match="3 inputs for 1 outputs"):
        judge.compare(["q", "r", "s"], ["a"], ["b"])


def test_parse_verdict() -> None:
    assert parse_verdict("A") == "A" and parse_verdict(" b.") == "B" and parse_verdict("Tie") == "TIE"
    assert parse_verdict("Answer: A") is None and parse_verdict(None) is None and parse_verdict("Bob") is None
