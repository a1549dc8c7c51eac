"""Pairwise LLM-as-judge with position-bias cancellation, over any OpenAI-compatible model.

Judges prefer whichever answer they see first (or second) surprisingly often, so every pair is
asked twice: candidate as A then candidate as B. Only a preference that survives the swap counts;
an inconsistent pair is a tie. Identical outputs are ties without a call (no judge can prefer one
copy of a string over the other, and calls cost money).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

from protege.evals.metrics.base import Metric, check_pairs

DEFAULT_SYSTEM_PROMPT = (
    "You are an impartial judge. Compare two responses to the same user request and decide which one "
    "is better: more correct, more helpful, and closer to what the user asked for. Ignore length and "
    "style unless they matter to the request, and ignore the order in which the responses are shown. "
    "Reply with exactly one token: A if Response A is better, B if Response B is better, or TIE."
)

USER_TEMPLATE = (
    "[User request]\n{input}\n\n[Response A]\n{a}\n\n[Response B]\n{b}\n\n"
    "Which response is better? Answer A, B or TIE."
)

_VERDICT = re.compile(r"^\W*(A|B|TIE)\b", re.IGNORECASE)


def parse_verdict(text: str | None) -> str | None:
    """'A', 'B', 'TIE' or None (unparseable -> treated as no preference)."""
    m = _VERDICT.match(text or "")
    return m.group(1).upper() if m else None


@dataclass
class JudgeItem:
    outcome: str  # "win" | "tie" | "loss", from the candidate's point of view
    candidate_first: str | None = None  # raw verdict with the candidate shown as A
    candidate_second: str | None = None  # raw verdict with the candidate shown as B
    calls: int = 0


@dataclass
class JudgeResult:
    n: int
    wins: int
    ties: int
    losses: int
    win_rate: float  # (wins + ties / 2) / n: 0.5 means "as good as the baseline"
    calls: int
    signature: str
    outcomes: list[str] = field(default_factory=list)
    items: list[JudgeItem] = field(default_factory=list)


OUTCOME_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


@dataclass(eq=False)
class PairwiseJudge:
    """``compare(inputs, candidates, baselines)``: does the candidate (student) beat the baseline (teacher)?

    ``client``: an ``AsyncOpenAI``-like client to use (and leave open); by default one is made per
    comparison from ``base_url`` and ``api_key`` (never logged, shown nor part of the signature)."""

    model: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    client: Any = field(default=None, repr=False)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    temperature: float = 0.0
    max_tokens: int = 5
    concurrency: int = 8
    timeout: float = 60.0
    max_retries: int = 2

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("the judge needs a model name")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")

    def _make_client(self) -> Any:
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout,
                           max_retries=self.max_retries)

    async def _ask(self, client: Any, sem: asyncio.Semaphore, prompt: str, a: str, b: str) -> str | None:
        async with sem:
            resp = await client.chat.completions.create(
                model=self.model, temperature=self.temperature, max_tokens=self.max_tokens,
                messages=[{"role": "system", "content": self.system_prompt},
                          {"role": "user", "content": USER_TEMPLATE.format(input=prompt, a=a, b=b)}])
        return parse_verdict(resp.choices[0].message.content if resp.choices else None)

    async def _judge_one(self, client: Any, sem: asyncio.Semaphore, prompt: str, cand: str, base: str) -> JudgeItem:
        if cand == base:
            return JudgeItem("tie")
        first, second = await asyncio.gather(self._ask(client, sem, prompt, cand, base),
                                             self._ask(client, sem, prompt, base, cand))
        if first == "A" and second == "B":
            outcome = "win"
        elif first == "B" and second == "A":
            outcome = "loss"
        else:
            outcome = "tie"
        return JudgeItem(outcome, first, second, calls=2)

    async def acompare(self, inputs: Sequence[str] | None, candidates: Sequence[str],
                       baselines: Sequence[str]) -> JudgeResult:
        check_pairs(candidates, baselines)
        if inputs is None:
            inputs = [""] * len(candidates)
        if len(inputs) != len(candidates):
            raise ValueError(f"got {len(inputs)} inputs for {len(candidates)} outputs")
        client = self.client or self._make_client()
        sem = asyncio.Semaphore(self.concurrency)
        try:
            items = list(await asyncio.gather(*(self._judge_one(client, sem, i, c, b)
                                                for i, c, b in zip(inputs, candidates, baselines))))
        finally:
            if self.client is None:
                await client.close()
        outcomes = [it.outcome for it in items]
        n = len(items)
        wins, ties, losses = outcomes.count("win"), outcomes.count("tie"), outcomes.count("loss")
        return JudgeResult(n=n, wins=wins, ties=ties, losses=losses,
                           win_rate=(wins + ties / 2) / n if n else 0.0, calls=sum(it.calls for it in items),
                           signature=self.signature(), outcomes=outcomes, items=items)

    def compare(self, inputs: Sequence[str] | None, candidates: Sequence[str], baselines: Sequence[str]) -> JudgeResult:
        """Blocking wrapper (scripts, the CLI, ``score_pairs``). Called from inside a running event loop
        it runs on a private loop in a helper thread instead of failing with asyncio's RuntimeError."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.acompare(inputs, candidates, baselines))
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self.acompare(inputs, candidates, baselines)).result()

    def signature(self) -> str:
        digest = hashlib.sha256((self.system_prompt + "\x00" + USER_TEMPLATE).encode()).hexdigest()[:12]
        return (f"judge|model:{self.model}|orders:both|ties:inconsistent|temp:{self.temperature:g}|"
                f"prompt:sha256:{digest}")


class JudgeMetric(Metric):
    """Win (1), tie (0.5) or loss (0) of the output (hyp) against the baseline (ref) per item; mean = win rate."""

    name = "judge"
    kind = "mean"
    scale = "continuous"

    def __init__(self, judge: PairwiseJudge | None = None, **judge_options: Any) -> None:
        self.judge = judge or PairwiseJudge(**judge_options)
        self.last_result: JudgeResult | None = None

    def item_scores(self, hyps: Sequence[str], refs: Sequence[str], inputs: Sequence[str] | None = None) -> list[float]:
        self.last_result = self.judge.compare(inputs, hyps, refs)
        return [OUTCOME_SCORE[o] for o in self.last_result.outcomes]

    def signature(self) -> str:
        return self.judge.signature()


METRICS = {"judge": JudgeMetric}
