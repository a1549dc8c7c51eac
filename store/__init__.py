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
from .db import Store, StoreLockedError, open_store
from .migrations import SCHEMA_VERSION, migrate
from .writer import Capture, CaptureWriter, Spool

__all__ = [
    "COLUMNS",
    "Capture",
    "CaptureWriter",
    "Completion",
    "Page",
    "SCHEMA_VERSION",
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
]
