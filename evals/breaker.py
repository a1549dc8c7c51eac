"""Stop an eval run early when a candidate cannot answer at all, instead of scoring 100 failures.

Without this, a candidate that is down costs every item its full retry back-off (about 15 s each)
and the run ends "completed" with every output an error. A :class:`CandidateBreaker` watches one
candidate's calls and trips (raises :class:`CandidateUnavailable`) when the failures say the
candidate, not the item, is the problem. The rule:

* a *candidate-level* failure is a connection failure (refused, DNS, reset: the SDK's
  ``APIConnectionError``, but not ``APITimeoutError``, since a slow model is still a model) or an
  HTTP 401, 403 or 404 (bad key, no access, no such model): the same for every item;
* before the candidate has answered anything in this execution, :attr:`fresh_attempts` (5)
  candidate-level failures in a row, counting every attempt (retries included), trip it: an
  unreachable candidate stops the run within a second or two, not minutes;
* once it has answered, a blip (a restart, a dropped connection) is retried as usual, and only
  :attr:`items_in_a_row` (5) items in a row whose last attempt was a candidate-level failure trip it.

Any HTTP answer that is not candidate-level (200, 400 for one item's messages, 429, 5xx) resets the
count. A tripped run is marked failed in the store with the reason and continues with ``--resume``
(or ``POST .../resume``) once the candidate is up: only the missing outputs are generated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CANDIDATE_LEVEL_STATUS = (401, 403, 404)


class CandidateUnavailable(RuntimeError):
    """A candidate that fails every call the same way; ``str()`` is the one line shown to the user."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def failure_kind(exc: BaseException) -> str | None:
    """``"connection"`` or ``"http"`` for a candidate-level failure, None for anything else."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return None
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    if isinstance(exc, openai.APIStatusError) and exc.status_code in CANDIDATE_LEVEL_STATUS:
        return "http"
    return None


def describe_failure(exc: BaseException) -> str:
    """The error kind in a few words: the innermost transport error for a connection failure
    (``ConnectError: All connection attempts failed``), the status and message for HTTP."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        return f"HTTP {exc.status_code} {body.get('code') or ''}: {body.get('message') or exc.message}".replace(" :", ":")
    inner: BaseException = exc
    while inner.__cause__ is not None and inner.__cause__ is not inner:
        inner = inner.__cause__
    text = " ".join(str(inner).split()) or str(exc)
    return f"{type(inner).__name__}: {text}"


@dataclass
class CandidateBreaker:
    """The failure count of one candidate in one execution of a run (see the module docstring)."""

    name: str
    url: str
    fresh_attempts: int = 5
    items_in_a_row: int = 5
    answered: bool = False
    _attempts: int = 0
    _items: int = 0
    _last: BaseException | None = field(default=None, repr=False)

    def ok(self) -> None:
        """An HTTP answer came (a success, or an error about this item only)."""
        self.answered = True
        self._attempts = self._items = 0

    def attempt_failed(self, exc: BaseException) -> None:
        """One attempt failed; trips before the first answer after ``fresh_attempts`` in a row."""
        if failure_kind(exc) is None:
            self.ok()  # the candidate answered, about this request
            return
        self._attempts += 1
        self._last = exc
        if not self.answered and self._attempts >= self.fresh_attempts:
            self._trip(f"{self._attempts} attempts in a row, none succeeded")

    def item_failed(self, exc: BaseException) -> None:
        """An item's last attempt failed; trips after ``items_in_a_row`` candidate-level ones."""
        if failure_kind(exc) is None:
            return
        self._items += 1
        self._last = exc
        if self._items >= self.items_in_a_row:
            self._trip(f"{self._items} items in a row")

    def _trip(self, how: str) -> None:
        exc = self._last
        assert exc is not None
        kind = failure_kind(exc)
        verb = "cannot connect to" if kind == "connection" else "is refused by"
        raise CandidateUnavailable(
            f"candidate {self.name} {verb} {self.url} ({describe_failure(exc).rstrip('.')}; {how})",
            "candidate_unreachable" if kind == "connection" else "candidate_refused",
        )


__all__ = ["CANDIDATE_LEVEL_STATUS", "CandidateBreaker", "CandidateUnavailable", "describe_failure", "failure_kind"]
