"""Where a ``protege/<name>`` candidate without a base URL is sent: the proxy serving this store.

Students are served by ``protege serve`` (``protege/<name>``, ``protege/<name>@vN``), and the only
server that knows the students of this store is the one holding its database file (a PostgreSQL
store has replicas and no such record: there the candidate needs its base_url). Without this, the
SDK would send the model name to its default (``OPENAI_BASE_URL`` or api.openai.com), which answers
404 for every item. The server records where it listens beside the database
(:mod:`protege.store.served`); the URL is looked up when the run executes, not stored with the run,
so a run resumed after the server moved to another port still finds it.
"""

from __future__ import annotations

import dataclasses
import os

from protege.store import without_password
from protege.store.served import server_url

from .generate import Candidate, CandidateError

STUDENT_PREFIX = "protege/"


def needs_server(candidate: Candidate) -> bool:
    """A student name with no endpoint of its own."""
    return candidate.model.startswith(STUDENT_PREFIX) and not candidate.base_url and not candidate.azure_endpoint


def resolve(candidate: Candidate, db: str | os.PathLike[str] | None) -> Candidate:
    """The candidate with ``base_url`` set to the serving proxy's ``/v1`` when :func:`needs_server`;
    :class:`CandidateError` (one line: what to do) when no server holds ``db``."""
    if not needs_server(candidate):
        return candidate
    if db is not None and "://" in os.fspath(db):
        # A database server has many writers and no record of who serves it (store/served.py).
        raise CandidateError(
            f"candidate {candidate.name}: {candidate.model} is a Protege student and {without_password(os.fspath(db))} "
            f"has no one server recorded to send it to; give the candidate the base_url of a `protege serve` "
            f"replica on this database (http://HOST:PORT/v1)"
        )
    url = server_url(db) if db is not None else None
    if url is None:
        raise CandidateError(
            f"candidate {candidate.name}: {candidate.model} is a Protege student and no `protege serve` is running on "
            f"{db}; start `protege serve` on this database, or give the candidate a base_url"
        )
    return dataclasses.replace(candidate, base_url=url.rstrip("/") + "/v1")


__all__ = ["STUDENT_PREFIX", "needs_server", "resolve"]
