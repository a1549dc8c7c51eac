"""Store tables and queries for automatic distillation: policies, cycles, decisions, routes.

Every step of the loop is a row here *before* its side effect happens, so that a worker that is
killed resumes from the store alone (see ``distill/auto/worker.py``). Routes carry a version counter: the
proxy's in-memory route table reloads only when it changes, never per request.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Double
from sqlmodel import Field, SQLModel, select

from .completions import completion_filter
from .db import Store

log = logging.getLogger("protege.store.auto")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def dumps(obj: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def loads(text: str | None, default: Any = None) -> Any:
    if not text:
        return default
    return orjson.loads(text)


class AutoPolicy(SQLModel, table=True):
    __tablename__ = "auto_policies"

    id: str = Field(primary_key=True)
    name: str = Field(index=True)
    spec: str  # JSON of the validated policy (distill.auto.policies.Policy)
    enabled: bool = True
    created_at: int
    updated_at: int


class AutoCycle(SQLModel, table=True):
    """One distillation attempt of a policy: dataset -> fine-tune -> evaluation -> decision."""

    __tablename__ = "auto_cycles"

    id: str = Field(primary_key=True)
    policy_id: str = Field(index=True)
    # pending -> dataset_built -> launching -> training -> evaluating -> promoted|rejected|failed
    state: str
    created_at: float = Field(sa_type=Double)
    updated_at: float = Field(sa_type=Double)
    until_seq: int = 0  # traffic up to this capture seq is "seen" by this cycle
    dataset_id: str | None = None
    job_id: str | None = None
    student_model: str | None = None
    evaluation: str | None = None  # JSON
    decision_id: str | None = None
    error: str | None = None
    attempts: int = 0


class AutoDecision(SQLModel, table=True):
    __tablename__ = "auto_decisions"

    id: str = Field(primary_key=True)
    policy_id: str = Field(index=True)
    cycle_id: str | None = None
    route_id: str | None = None
    kind: str  # gate | advance | rollback | promote (manual) | manual_rollback
    outcome: str  # promote | reject | advance | rollback | hold
    reason: str = ""
    details: str = "{}"  # JSON: the numbers behind the decision
    created_at: float = Field(sa_type=Double)


class AutoRoute(SQLModel, table=True):
    __tablename__ = "auto_routes"

    id: str = Field(primary_key=True)
    policy_id: str = Field(index=True)
    cycle_id: str | None = None
    student_model: str
    match_model: str | None = None
    match_metadata: str = "{}"  # JSON
    stage: str  # shadow | canary | full
    percent: float = Field(default=0.0, sa_type=Double)
    compare_percent: float = Field(default=0.0, sa_type=Double)
    timeout: float = Field(default=10.0, sa_type=Double)
    active: bool = True
    stage_started_at: float = Field(default=0.0, sa_type=Double)
    stage_started_seq: int = 0
    created_at: float = Field(default=0.0, sa_type=Double)
    updated_at: float = Field(default=0.0, sa_type=Double)
    ended_at: float | None = Field(default=None, sa_type=Double)


TABLES = (AutoPolicy, AutoCycle, AutoDecision, AutoRoute)


# ---------------------------------------------------------------------------------------------
# Policies


def put_policy(store: Store, name: str, spec: dict[str, Any], enabled: bool = True) -> AutoPolicy:
    """Create or replace the policy called ``name`` (its id stays stable across updates)."""
    now = int(time.time())
    with store.session() as s:
        row = s.exec(select(AutoPolicy).where(AutoPolicy.name == name)).first()
        if row is None:
            row = AutoPolicy(id=new_id("policy"), name=name, spec=dumps(spec), enabled=enabled, created_at=now, updated_at=now)
        else:
            row.spec = dumps(spec)
            row.enabled = enabled
            row.updated_at = now
        s.add(row)
        s.commit()
        return row


def get_policy(store: Store, id_or_name: str) -> AutoPolicy | None:
    with store.session() as s:
        row = s.get(AutoPolicy, id_or_name)
        if row is None:
            row = s.exec(select(AutoPolicy).where(AutoPolicy.name == id_or_name)).first()
        return row


def list_policies(store: Store, enabled_only: bool = False) -> list[AutoPolicy]:
    with store.session() as s:
        q = select(AutoPolicy).order_by(AutoPolicy.created_at, AutoPolicy.id)
        if enabled_only:
            q = q.where(AutoPolicy.enabled == True)
        return list(s.exec(q).all())


def delete_policy(store: Store, policy_id: str) -> bool:
    """Delete a policy and deactivate its routes (its history of cycles and decisions stays)."""
    with store.session() as s:
        row = s.get(AutoPolicy, policy_id)
        if row is None:
            return False
        s.delete(row)
        s.commit()
    for route in active_routes(store, policy_id=policy_id):
        end_route(store, route.id)
    return True


# ---------------------------------------------------------------------------------------------
# Cycles


def create_cycle(store: Store, policy_id: str, until_seq: int) -> AutoCycle:
    now = time.time()
    row = AutoCycle(id=new_id("cycle"), policy_id=policy_id, state="pending", created_at=now, updated_at=now, until_seq=until_seq)
    with store.session() as s:
        s.add(row)
        s.commit()
    return row


def update_cycle(store: Store, cycle_id: str, **fields: Any) -> AutoCycle:
    with store.session() as s:
        row = s.get(AutoCycle, cycle_id)
        if row is None:
            raise KeyError(cycle_id)
        for key, value in fields.items():
            if key == "evaluation" and not isinstance(value, (str, type(None))):
                value = dumps(value)
            setattr(row, key, value)
        row.updated_at = time.time()
        s.add(row)
        s.commit()
        return row


def get_cycle(store: Store, cycle_id: str) -> AutoCycle | None:
    with store.session() as s:
        return s.get(AutoCycle, cycle_id)


OPEN_CYCLE_STATES = ("pending", "dataset_built", "launching", "training", "evaluating")


def open_cycle(store: Store, policy_id: str) -> AutoCycle | None:
    """The policy's unfinished cycle, if any (at most one runs at a time)."""
    with store.session() as s:
        q = (
            select(AutoCycle)
            .where(AutoCycle.policy_id == policy_id, AutoCycle.state.in_(OPEN_CYCLE_STATES))  # type: ignore[attr-defined]
            .order_by(AutoCycle.created_at.desc())  # type: ignore[attr-defined]
        )
        return s.exec(q).first()


def list_cycles(store: Store, policy_id: str, limit: int = 20) -> list[AutoCycle]:
    with store.session() as s:
        q = select(AutoCycle).where(AutoCycle.policy_id == policy_id).order_by(AutoCycle.created_at.desc()).limit(limit)  # type: ignore[attr-defined]
        return list(s.exec(q).all())


def last_cycle(store: Store, policy_id: str) -> AutoCycle | None:
    cycles = list_cycles(store, policy_id, limit=1)
    return cycles[0] if cycles else None


# ---------------------------------------------------------------------------------------------
# Decisions


def record_decision(
    store: Store,
    policy_id: str,
    kind: str,
    outcome: str,
    reason: str = "",
    details: dict[str, Any] | None = None,
    cycle_id: str | None = None,
    route_id: str | None = None,
) -> AutoDecision:
    row = AutoDecision(
        id=new_id("decision"), policy_id=policy_id, cycle_id=cycle_id, route_id=route_id, kind=kind,
        outcome=outcome, reason=reason, details=dumps(details or {}), created_at=time.time(),
    )
    with store.session() as s:
        s.add(row)
        s.commit()
    return row


def list_decisions(store: Store, policy_id: str, limit: int = 100, after: str | None = None) -> tuple[list[AutoDecision], bool]:
    """Newest first; ``after`` is a decision id (cursor), as in OpenAI's list endpoints."""
    with store.session() as s:
        q = select(AutoDecision).where(AutoDecision.policy_id == policy_id)
        if after:
            cursor_row = s.get(AutoDecision, after)
            if cursor_row is not None:
                q = q.where(AutoDecision.created_at < cursor_row.created_at)
        q = q.order_by(AutoDecision.created_at.desc()).limit(limit + 1)  # type: ignore[attr-defined]
        rows = list(s.exec(q).all())
    return rows[:limit], len(rows) > limit


# ---------------------------------------------------------------------------------------------
# Routes (and the version counter the proxy's route table watches)

_local_versions: dict[int, int] = {}
_local_lock = threading.Lock()


_listeners: dict[int, list[weakref.WeakMethod]] = {}


def _bump(store: Store) -> None:
    store.cursor().execute("UPDATE auto_meta SET value = value + 1 WHERE key = 'routes_version'")
    with _local_lock:
        _local_versions[id(store)] = _local_versions.get(id(store), 0) + 1
        listeners = [m() for m in _listeners.get(id(store), ())]
    for listener in listeners:
        if listener is None:
            continue
        try:
            listener()
        except Exception:  # a listener's failure must not undo a committed change
            log.warning("a route-change listener failed", exc_info=True)


def on_routes_change(store: Store, method: Any) -> None:
    """Call the bound ``method()`` after each route change made through this Store object, in the
    thread that made it, once its commit is done. The proxy's route table reloads this way, so a
    change is served at once and the request path never queries (held weakly: a dropped table
    stops listening)."""
    with _local_lock:
        found = [m for m in _listeners.get(id(store), []) if m() is not None]
        found.append(weakref.WeakMethod(method))
        _listeners[id(store)] = found


def local_routes_version(store: Store) -> int:
    """Changes made through this process's Store object: a dict lookup, no query (hot path)."""
    return _local_versions.get(id(store), 0)


def routes_version(store: Store) -> int:
    """The stored counter (sees changes made by other processes too)."""
    row = store.cursor().execute("SELECT value FROM auto_meta WHERE key = 'routes_version'").fetchone()
    return int(row[0]) if row else 0


def create_route(
    store: Store,
    policy_id: str,
    student_model: str,
    stage: str,
    *,
    match_model: str | None,
    match_metadata: dict[str, str],
    percent: float,
    compare_percent: float = 0.0,
    timeout: float = 10.0,
    cycle_id: str | None = None,
    start_seq: int = 0,
) -> AutoRoute:
    """A new active route for the policy; any earlier active route of the policy ends."""
    now = time.time()
    row = AutoRoute(
        id=new_id("route"), policy_id=policy_id, cycle_id=cycle_id, student_model=student_model,
        match_model=match_model, match_metadata=dumps(match_metadata or {}), stage=stage, percent=percent,
        compare_percent=compare_percent, timeout=timeout, active=True, stage_started_at=now,
        stage_started_seq=start_seq, created_at=now, updated_at=now,
    )
    with store.session() as s:
        for old in s.exec(select(AutoRoute).where(AutoRoute.policy_id == policy_id, AutoRoute.active == True)).all():
            old.active = False
            old.ended_at = now
            old.updated_at = now
            s.add(old)
        s.add(row)
        s.commit()
    _bump(store)
    return row


def _change_route(store: Store, route_id: str, now: float, **changes: Any) -> AutoRoute | None:
    """Set ``changes`` on one route (``updated_at`` to ``now``) and move the change counter the
    proxy's route table watches; None (and nothing changed) when there is no such route."""
    with store.session() as s:
        row = s.get(AutoRoute, route_id)
        if row is None:
            return None
        for name, value in changes.items():
            setattr(row, name, value)
        row.updated_at = now
        s.add(row)
        s.commit()
    _bump(store)
    return row


def set_route_stage(
    store: Store, route_id: str, stage: str, percent: float, start_seq: int, compare_percent: float | None = None
) -> AutoRoute:
    now = time.time()
    extra = {"compare_percent": compare_percent} if compare_percent is not None else {}
    row = _change_route(
        store, route_id, now, stage=stage, percent=percent, **extra, stage_started_at=now, stage_started_seq=start_seq
    )
    if row is None:
        raise KeyError(route_id)
    return row


def end_route(store: Store, route_id: str) -> AutoRoute | None:
    now = time.time()
    return _change_route(store, route_id, now, active=False, ended_at=now)


def get_route(store: Store, route_id: str) -> AutoRoute | None:
    with store.session() as s:
        return s.get(AutoRoute, route_id)


def active_routes(store: Store, policy_id: str | None = None) -> list[AutoRoute]:
    with store.session() as s:
        q = select(AutoRoute).where(AutoRoute.active == True)
        if policy_id is not None:
            q = q.where(AutoRoute.policy_id == policy_id)
        return list(s.exec(q.order_by(AutoRoute.created_at)).all())


def list_routes(store: Store, policy_id: str | None = None, include_ended: bool = True, limit: int = 100) -> list[AutoRoute]:
    with store.session() as s:
        q = select(AutoRoute)
        if policy_id is not None:
            q = q.where(AutoRoute.policy_id == policy_id)
        if not include_ended:
            q = q.where(AutoRoute.active == True)
        return list(s.exec(q.order_by(AutoRoute.created_at.desc()).limit(limit)).all())  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# One worker per policy: a lock held for the life of a cycle


def _lock_key(policy_id: str) -> int:
    """A signed 64-bit advisory-lock key for a policy (PostgreSQL's bigint form)."""
    digest = hashlib.blake2b(f"protege-policy:{policy_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


LOCK_APPLICATION_NAME = "protege-policy-locks"  # how the locks' connection shows in pg_stat_activity


class PolicyLocks:
    """Which policies' cycles this worker may run: on PostgreSQL, ``pg_try_advisory_lock`` per policy,
    all over ONE connection of this worker's (advisory locks belong to a session, and a session may
    hold many), so a worker costs the database one connection for its locks whatever the number of
    policies, held or locked out (a connection per policy per pass exhausted ``max_connections``
    with many policies and several workers). A lock stays while its cycle is open, across passes, so
    at most one worker of all the processes on the database advances a policy. The locks live with
    that connection: a worker that is killed (SIGKILL, a crash) drops them all, PostgreSQL releases
    them as the session ends, and the next worker that asks takes the policies over and resumes
    their cycles from the store. A connection that died under a live worker (a server restart) is
    noticed at the next :meth:`acquire` of a policy it held, and taken again if still free.

    On DuckDB one process writes the file anyway, so every lock is always granted (today's
    behaviour). ``keep_open=False`` closes the connection whenever it holds nothing."""

    def __init__(self, store: Store, *, keep_open: bool = True) -> None:
        self._url = store.path if store.dialect.name == "postgresql" else None
        self._pg = getattr(store, "_pg", None)  # the store's connections: the locks' one closes with them
        self._keep_open = keep_open
        self._conn: Any = None
        self._held: set[str] = set()
        self._mutex = threading.Lock()  # the worker's thread, and stop() from another after it

    @property
    def shared(self) -> bool:
        """Whether other processes may write this store (PostgreSQL): only then does a lock lock."""
        return self._url is not None

    @property
    def holding(self) -> frozenset[str]:
        """The policies whose locks this worker holds (none on DuckDB: nothing to let go)."""
        return frozenset(self._held)

    def held(self, policy_id: str) -> bool:
        return self._url is None or policy_id in self._held

    def acquire(self, policy_id: str) -> bool:
        """Take (or confirm, with one round trip) the policy's lock; False while another worker holds it."""
        if self._url is None:
            return True
        with self._mutex:
            if policy_id in self._held:
                try:
                    self._conn.execute("SELECT 1")
                    return True
                except Exception:  # the connection died (a server restart): every lock went with it
                    log.warning("lost the locks of policies %s with their connection; taking them again as asked",
                                ", ".join(sorted(self._held)))
                    self._drop()
            fresh = self._conn is None
            try:
                got = self._try(policy_id)
            except Exception:
                if fresh:
                    self._close_if_idle()
                    raise
                self._drop()  # an idle connection the server closed: one more try on a new one
                try:
                    got = self._try(policy_id)
                except BaseException:
                    self._close_if_idle()
                    raise
            if got:
                self._held.add(policy_id)
            else:
                self._close_if_idle()
            return got

    def release(self, policy_id: str) -> None:
        with self._mutex:
            if policy_id not in self._held:
                return
            self._held.discard(policy_id)
            try:
                self._conn.execute("SELECT pg_advisory_unlock(%s)", [_lock_key(policy_id)])
            except Exception:  # the session is gone, and the lock with it
                self._drop()
            self._close_if_idle()

    def release_all(self) -> None:
        """Let every policy go (closing the session releases each of its locks) and close the connection."""
        with self._mutex:
            self._drop()

    def _try(self, policy_id: str) -> bool:
        if self._conn is None:
            self._conn = self._pg.dedicated(application_name=LOCK_APPLICATION_NAME)
        return bool(self._conn.execute("SELECT pg_try_advisory_lock(%s)", [_lock_key(policy_id)]).fetchone()[0])

    def _close_if_idle(self) -> None:
        if not self._keep_open and not self._held:
            self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


class PolicyLock:
    """One policy's lock on a connection of its own (:class:`PolicyLocks` holding one policy, its
    connection closed while it holds nothing); a worker uses :class:`PolicyLocks`, one connection
    for all its policies."""

    def __init__(self, store: Store, policy_id: str) -> None:
        self.policy_id = policy_id
        self._locks = PolicyLocks(store, keep_open=False)

    @property
    def shared(self) -> bool:
        return self._locks.shared

    @property
    def held(self) -> bool:
        return self._locks.held(self.policy_id)

    def acquire(self) -> bool:
        return self._locks.acquire(self.policy_id)

    def release(self) -> None:
        self._locks.release(self.policy_id)


# ---------------------------------------------------------------------------------------------
# Traffic queries (read the completions table with bound parameters)


def _traffic_filter(store: Store, alias: str, model: str | None, metadata: dict[str, str] | None, **flags: Any) -> tuple[str, list[Any]]:
    """The policy's match (model, metadata pairs) through the store's one completion filter."""
    return completion_filter(model=model, metadata=metadata, alias=alias, dialect=store.dialect, **flags)


def eligible_count(store: Store, model: str | None, metadata: dict[str, str] | None, after_seq: int = 0) -> int:
    """Teacher traffic matching the policy captured after ``after_seq``: what a new cycle's dataset
    gains (a student's answers, canary/full or shadow, must never train a student)."""
    where, params = _traffic_filter(store, "c", model, metadata, stored_only=True, teacher_only=True, after_seq=after_seq)
    sql = f"SELECT count(*) FROM completions c WHERE {where}"
    return int(store.cursor().execute(sql, params).fetchone()[0])


def eligible_ids(store: Store, model: str | None, metadata: dict[str, str] | None, after_seq: int = 0) -> list[str]:
    where, params = _traffic_filter(store, "c", model, metadata, stored_only=True, teacher_only=True, after_seq=after_seq)
    sql = f"SELECT c.id FROM completions c WHERE {where} ORDER BY c.seq"
    return [r[0] for r in store.cursor().execute(sql, params).fetchall()]


def max_seq(store: Store) -> int:
    return int(store.cursor().execute("SELECT coalesce(max(seq), 0) FROM completions").fetchone()[0])


def paired_answers(
    store: Store, model: str | None, metadata: dict[str, str] | None, after_seq: int = 0, limit: int = 100_000
) -> list[tuple[str, str, str | None, str | None]]:
    """(primary response JSON, paired response JSON, primary served_by, paired served_by) for each
    second answer (shadow student, or teacher sampled behind a student) to traffic matching the route."""
    where, params = _traffic_filter(store, "p", model, metadata, stored_only=True, first_answers_only=True)
    sql = (
        "SELECT p.response, s.response, p.served_by, s.served_by FROM completions s "
        "JOIN completions p ON p.id = s.paired_with "
        "WHERE s.paired_with IS NOT NULL AND s.outcome = 'ok' "
        f"AND s.response IS NOT NULL AND s.seq > ? AND {where} ORDER BY s.seq DESC LIMIT ?"
    )
    return [tuple(r) for r in store.cursor().execute(sql, [after_seq] + params + [limit]).fetchall()]  # type: ignore[misc]


def served_counts(store: Store, model: str | None, metadata: dict[str, str] | None, after_seq: int = 0) -> dict[str, int]:
    """How many matching requests each side answered since ``after_seq`` (for status)."""
    where, params = _traffic_filter(store, "c", model, metadata, live_only=True, after_seq=after_seq)
    sql = f"SELECT coalesce(c.served_by, 'teacher'), count(*) FROM completions c WHERE {where} GROUP BY 1"
    return {r[0]: int(r[1]) for r in store.cursor().execute(sql, params).fetchall()}


def as_dict(row: SQLModel) -> dict[str, Any]:
    out = row.model_dump()
    for key in ("spec", "evaluation", "details", "match_metadata"):
        if key in out and isinstance(out[key], str):
            out[key] = loads(out[key], {})
    return out


__all__: Sequence[str] = [
    "OPEN_CYCLE_STATES",
    "AutoCycle",
    "AutoDecision",
    "AutoPolicy",
    "PolicyLock",
    "PolicyLocks",
    "AutoRoute",
    "active_routes",
    "as_dict",
    "create_cycle",
    "create_route",
    "delete_policy",
    "eligible_count",
    "eligible_ids",
    "end_route",
    "get_cycle",
    "get_policy",
    "get_route",
    "last_cycle",
    "list_cycles",
    "list_decisions",
    "list_policies",
    "list_routes",
    "local_routes_version",
    "on_routes_change",
    "max_seq",
    "new_id",
    "open_cycle",
    "paired_answers",
    "put_policy",
    "record_decision",
    "routes_version",
    "served_counts",
    "set_route_stage",
    "update_cycle",
]
