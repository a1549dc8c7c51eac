"""The embedded store: every part of Protege persists through here (DuckDB via SQLModel)."""

from .completions import (
    COLUMNS,
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
from .db import Store, StoreLockedError, open_store
from .migrations import SCHEMA_VERSION, SchemaTooNewError, migrate
from .writer import Capture, CaptureWriter, Spool
from .io import ImportResult, export_jsonl, export_parquet, import_jsonl
from .stats import completion_stats

__all__ = [
    "COLUMNS",
    "Capture",
    "CaptureWriter",
    "Completion",
    "Page",
    "SCHEMA_VERSION",
    "SchemaTooNewError",
    "Spool",
    "Store",
    "StoreLockedError",
    "delete_completion",
    "get_record",
    "get_stored",
    "input_messages",
    "insert_records",
    "iter_records",
    "list_stored",
    "migrate",
    "open_store",
    "record_from_completion",
    "update_metadata",
    "completion_filter",
    "count",
    "count_records",
    "select_records",
    "ImportResult",
    "export_jsonl",
    "export_parquet",
    "import_jsonl",
    "completion_stats",
]
