"""The store: every part of Protege persists through here (DuckDB, or PostgreSQL, via SQLModel).

This module is the store's whole public surface. Other packages import the names below from
``protege.store``, or one of the table modules listed after them as a namespace
(``from protege.store import auto as store_auto``); nothing else (tests/test_store_public.py
checks it).

Opening and schema
    :class:`Store` / :func:`open_store` (a DuckDB file: one writer process per file,
    :class:`StoreLockedError` when another holds it; or ``postgresql://...``: several processes on
    one database, see store/db.py), :func:`migrate`, :data:`SCHEMA_VERSION`,
    :class:`SchemaTooNewError` (the file is newer than this release). Migrations are literal SQL,
    with PostgreSQL variants beside them (``store/migrations.py``). :func:`copy_store` /
    :class:`CopyResult` copy a whole store to another (DuckDB into PostgreSQL and back);
    :func:`without_password` is a database URL as it may be shown or logged.

Captured completions (``completions``)
    :data:`COLUMNS` (the record shape), :data:`META_PAIRS` (the DuckDB SQL deriving
    ``meta_pairs``, for bulk loaders), :class:`Completion`, :func:`record_from_completion`,
    :func:`insert_records`, the Stored Completions API's queries (:func:`list_stored`,
    :func:`get_stored`, :func:`update_metadata`, :func:`delete_completion`,
    :func:`input_messages`, :class:`Page`), and records for the CLI and exports
    (:func:`get_record`, :func:`iter_records`, :func:`select_records`, :func:`count`,
    :func:`count_records`). :func:`new_completion_id` mints the id a client sees.

Which completions
    :func:`completion_filter` is the one query layer: a WHERE fragment with bound parameters and
    named flags (``stored_only``, ``teacher_only``, ``live_only``, ``first_answers_only``, model(s),
    metadata pairs, time window, ``after_seq``). :data:`TEACHER_TRAFFIC` is the one definition of
    the captures a student may learn from or be judged against (no shadow, not served by a student).
    Feedback applied: ``feedback.LATEST_FEEDBACK``, each capture's latest verdict per field.

Capture, import, export, statistics
    :class:`CaptureWriter`, :class:`Capture`, :class:`Spool` (the proxy's off-loop writer;
    :class:`JournalInUseError` when another writer holds its journal directory);
    :func:`import_jsonl` / :class:`ImportResult`, :func:`export_jsonl`, :func:`export_parquet`;
    :func:`completion_stats`.

Typing a record: :func:`record_problems` / :func:`value_problem` say why a value does not fit its
    column (the writer stores such an answer alone, as ``invalid_response``).

Modules imported as namespaces
    Tables: ``auto`` (policies, cycles, decisions, routes, traffic counts), ``datasets`` (dataset
    versions, :class:`~protege.store.datasets.Selection`), ``evals`` (eval runs, items, outputs,
    scores), ``feedback`` (feedback on captures), ``jobs`` (fine-tune jobs and students).
    Shapes and reads: ``messages`` (the one answer-text helper and label rule for captured
    records), ``traffic`` (the console's read-only traffic queries), ``openai_import`` (pulling
    Stored Completions from OpenAI into the store), ``served`` (the record a running server leaves
    beside its database, so the CLI and eval runs find it).
"""

from . import auto, datasets, evals, feedback, jobs, messages, openai_import, served, traffic
from .completions import (
    COLUMNS,
    META_PAIRS,
    TEACHER_TRAFFIC,
    Completion,
    Page,
    delete_completion,
    get_record,
    get_stored,
    input_messages,
    insert_records,
    iter_records,
    list_stored,
    record_from_completion,
    update_metadata,
)
from .completions import completion_filter, count, count_records, select_records
from .copy import CopyResult, copy_store
from .pg import without_password
from .db import Store, StoreLockedError, open_store
from .ids import new_completion_id
from .migrations import SCHEMA_VERSION, SchemaTooNewError, migrate
from .records import record_problems, value_problem
from .writer import Capture, CaptureWriter, JournalInUseError, Spool
from .io import ImportResult, export_jsonl, export_parquet, import_jsonl
from .stats import completion_stats

# The modules a caller may import as namespaces (see the docstring).
TABLE_MODULES = ("auto", "datasets", "evals", "feedback", "jobs", "messages", "openai_import", "served", "traffic")

__all__ = [
    "COLUMNS",
    "META_PAIRS",
    "Capture",
    "CaptureWriter",
    "Completion",
    "CopyResult",
    "JournalInUseError",
    "Page",
    "SCHEMA_VERSION",
    "SchemaTooNewError",
    "Spool",
    "Store",
    "StoreLockedError",
    "TABLE_MODULES",
    "TEACHER_TRAFFIC",
    "auto",
    "datasets",
    "delete_completion",
    "evals",
    "feedback",
    "get_record",
    "get_stored",
    "input_messages",
    "insert_records",
    "iter_records",
    "jobs",
    "list_stored",
    "migrate",
    "new_completion_id",
    "open_store",
    "record_from_completion",
    "update_metadata",
    "completion_filter",
    "copy_store",
    "without_password",
    "count",
    "count_records",
    "select_records",
    "ImportResult",
    "export_jsonl",
    "export_parquet",
    "import_jsonl",
    "completion_stats",
    "messages",
    "openai_import",
    "record_problems",
    "traffic",
    "value_problem",
]
