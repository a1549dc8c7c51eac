"""Feedback on captured completions: scores, labels, corrected answers, accept/reject.

Feedback points at a completion by the id the client saw, which names exactly one capture (Protege
mints it; store/ids.py), and records that capture's ``seq`` beside it. A completion may get several feedback
rows over time; where one value is needed (dataset filters, corrections) the latest non-null value
of each field wins, so a later correction overrides an earlier one without deleting history.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlmodel import Field, SQLModel

from .completions import completion_filter
from .db import Store
from .dialect import Dialect


class Feedback(SQLModel, table=True):
    __tablename__ = "feedback"

    id: str = Field(primary_key=True)
    completion_id: str = Field(index=True)
    completion_seq: int | None = None
    created_at: int
    score: float | None = None
    label: str | None = None
    correction: str | None = None
    comment: str | None = None
    accepted: bool | None = None
    source: str = "api"
    metadata_: str = Field(default="{}", sa_column_kwargs={"name": "metadata"})


def new_feedback_id() -> str:
    # Time-ordered (nanoseconds, then randomness): ids sort in creation order, so lists that break
    # ties on the same second by id stay chronological.
    return "fb_" + format(time.time_ns(), "016x") + secrets.token_hex(4)


def feedback_object(row: Feedback) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "feedback",
        "completion_id": row.completion_id,
        "created_at": row.created_at,
        "score": row.score,
        "label": row.label,
        "correction": row.correction,
        "comment": row.comment,
        "accepted": row.accepted,
        "source": row.source,
        "metadata": orjson.loads(row.metadata_ or "{}"),
    }


def completion_seq(store: Store, completion_id: str) -> int | None:
    """The one capture a completion id names (ids are unique since migration 5; should a duplicate
    slip in through an old spool file, the latest capture is the one the Stored API shows too)."""
    row = store.cursor().execute(
        "SELECT seq FROM completions WHERE id = ? ORDER BY seq DESC LIMIT 1", [completion_id]
    ).fetchone()
    return int(row[0]) if row else None


def add_feedback(
    store: Store,
    completion_id: str,
    *,
    score: float | None = None,
    label: str | None = None,
    correction: str | None = None,
    comment: str | None = None,
    accepted: bool | None = None,
    source: str = "api",
    metadata: dict[str, str] | None = None,
) -> dict[str, Any] | None:
    """Record feedback; ``None`` when no completion has that id (callers answer 404)."""
    seq = completion_seq(store, completion_id)
    if seq is None:
        return None
    row = Feedback(
        id=new_feedback_id(),
        completion_id=completion_id,
        completion_seq=seq,
        created_at=int(time.time()),
        score=None if score is None else float(score),
        label=label,
        correction=correction,
        comment=comment,
        accepted=accepted,
        source=source,
        metadata_=orjson.dumps(metadata or {}).decode(),
    )
    with store.session() as session:
        session.add(row)
        session.commit()
    return feedback_object(row)


def get_feedback(store: Store, feedback_id: str) -> dict[str, Any] | None:
    with store.session() as session:
        row = session.get(Feedback, feedback_id)
        return feedback_object(row) if row else None


@dataclass
class FeedbackPage:
    data: list[dict[str, Any]]
    has_more: bool


def list_feedback(
    store: Store,
    *,
    completion_id: str | None = None,
    label: str | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
    accepted: bool | None = None,
    has_correction: bool | None = None,
    after: str | None = None,
    limit: int = 20,
    order: str = "asc",
) -> FeedbackPage:
    """A page of feedback, oldest first by default (cursor: ``after`` a feedback id)."""
    where = ["TRUE"]
    params: list[Any] = []
    if completion_id is not None:
        where.append("completion_id = ?")
        params.append(completion_id)
    if label is not None:
        where.append("label = ?")
        params.append(label)
    if min_score is not None:
        where.append("score >= ?")
        params.append(float(min_score))
    if max_score is not None:
        where.append("score <= ?")
        params.append(float(max_score))
    if accepted is not None:
        where.append("accepted = ?")
        params.append(bool(accepted))
    if has_correction is not None:
        where.append("correction IS NOT NULL" if has_correction else "correction IS NULL")
    desc = order == "desc"
    cur = store.cursor()
    if after:
        pos = cur.execute("SELECT created_at, id FROM feedback WHERE id = ?", [after]).fetchone()
        if pos is not None:
            cmp = "<" if desc else ">"
            where.append(f"(created_at {cmp} ? OR (created_at = ? AND id {cmp} ?))")
            params += [pos[0], pos[0], pos[1]]
    direction = "DESC" if desc else "ASC"
    cols = "id, completion_id, completion_seq, created_at, score, label, correction, comment, accepted, source, metadata"
    rows = cur.execute(
        f"SELECT {cols} FROM feedback WHERE {' AND '.join(where)} ORDER BY created_at {direction}, id {direction} LIMIT ?",
        params + [int(limit) + 1],
    ).fetchall()
    data = []
    for r in rows[:limit]:
        fb = Feedback(
            id=r[0], completion_id=r[1], completion_seq=r[2], created_at=r[3], score=r[4], label=r[5],
            correction=r[6], comment=r[7], accepted=r[8], source=r[9], metadata_=r[10],
        )
        data.append(feedback_object(fb))
    return FeedbackPage(data, len(rows) > limit)


# Feedback applied: each capture's latest verdict per field (a later score does not erase an earlier
# correction), one row per completion id. The dataset builder and DPO pairs join this; evals take
# the same latest correction per item.
LATEST_FEEDBACK = """
    SELECT completion_id,
           arg_max(score, created_at) FILTER (WHERE score IS NOT NULL) AS score,
           arg_max(label, created_at) FILTER (WHERE label IS NOT NULL) AS label,
           arg_max(correction, created_at) FILTER (WHERE correction IS NOT NULL) AS correction,
           arg_max(accepted, created_at) FILTER (WHERE accepted IS NOT NULL) AS accepted
    FROM feedback GROUP BY completion_id
"""


def latest_feedback(dialect: Dialect) -> str:
    """:data:`LATEST_FEEDBACK` in the store's dialect (PostgreSQL has no ``arg_max``)."""
    if dialect.name == "duckdb":
        return LATEST_FEEDBACK
    cols = ", ".join(
        f"{dialect.arg_max(col, 'created_at', f'{col} IS NOT NULL')} AS {col}" for col in ("score", "label", "correction", "accepted")
    )
    return f"SELECT completion_id, {cols} FROM feedback GROUP BY completion_id"


def preference_rows(store: Store, model: list[str] | None = None, metadata: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Completions with a correction or an accept/reject verdict: the raw material of DPO pairs."""
    # Any capture with a verdict (a rejected student answer is a fair "rejected" side), so no
    # teacher-only flag here.
    where, params = completion_filter(models=model, metadata=metadata, stored_only=True, dialect=store.dialect)
    sql = f"""
        WITH fb AS ({latest_feedback(store.dialect)})
        SELECT c.id, c.seq, c.request, c.response, c.metadata, fb.correction, fb.accepted, fb.score
        FROM completions c JOIN fb ON fb.completion_id = c.id
        WHERE {where}
          AND (fb.correction IS NOT NULL OR fb.accepted IS NOT NULL)
          AND c.seq = (SELECT max(seq) FROM completions c2 WHERE c2.id = c.id)
        ORDER BY c.seq
    """
    cols = ["id", "seq", "request", "response", "metadata", "correction", "accepted", "score"]
    return [dict(zip(cols, r)) for r in store.cursor().execute(sql, params).fetchall()]


__all__ = [
    "LATEST_FEEDBACK",
    "latest_feedback",
    "Feedback",
    "FeedbackPage",
    "add_feedback",
    "get_feedback",
    "list_feedback",
    "preference_rows",
]
