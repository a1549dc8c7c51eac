"""One settings object for every part of Protege.

Precedence, lowest first: defaults < ``protege.toml`` < ``PROTEGE_*`` environment variables < CLI
flags (passed to :func:`load_settings` as keyword arguments). Cloud credentials are read from their
usual variables (``OPENAI_API_KEY``, ``AZURE_OPENAI_API_KEY``, ``AZURE_OPENAI_ENDPOINT``) and are
never written anywhere by Protege.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CaptureMode = Literal["all", "store", "none"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROTEGE_", extra="ignore", populate_by_name=True)

    # Where the proxy listens. Loopback by default: exposing it is a deliberate choice.
    host: str = "127.0.0.1"
    port: int = 8000

    # The embedded store: a DuckDB file (or ":memory:"); artifacts live in data_dir beside it.
    db: str = "protege.duckdb"
    data_dir: str | None = None

    # Upstream ("teacher"): any OpenAI-compatible base URL, or Azure OpenAI by endpoint.
    upstream: str = "https://api.openai.com/v1"
    azure_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("PROTEGE_AZURE_ENDPOINT", "AZURE_OPENAI_ENDPOINT", "azure_endpoint")
    )
    azure_api_version: str = "2025-02-01-preview"
    azure_auth: Literal["key", "entra"] = "key"
    # The server's own upstream key, used when a client sends none (or sends a proxy key).
    upstream_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("PROTEGE_UPSTREAM_API_KEY", "OPENAI_API_KEY", "upstream_api_key"),
        exclude=True,
    )
    azure_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("PROTEGE_AZURE_API_KEY", "AZURE_OPENAI_API_KEY", "azure_api_key"),
        exclude=True,
    )
    upstream_timeout: float = 600.0
    connect_timeout: float = 10.0

    # What is captured: all traffic, only requests with store=true, or nothing.
    capture: CaptureMode = "all"
    # Some OpenAI-compatible servers reject `store`/`metadata`: strip them before forwarding.
    forward_store: bool = True
    max_body_bytes: int = 32 * 1024 * 1024

    # Access: when proxy_keys is set, clients must present one; stored completions need an admin key.
    proxy_keys: list[str] = Field(default_factory=list, exclude=True)
    admin_keys: list[str] = Field(default_factory=list, exclude=True)
    # With any key set, Protege's own API and the Stored API need an admin key (closed with proxy
    # keys only). `serve` refuses a non-loopback host with no keys at all unless this is true.
    allow_open: bool = False
    # Hosts (host or host:port) that eval runs started over HTTP may send a server credential to
    # (a candidate's api_key_env), besides the configured upstream / Azure endpoint.
    eval_allowed_hosts: list[str] = Field(default_factory=list)

    # Capture writer (store/writer.py). Captures wait in memory up to capture_memory_bytes (beyond
    # it they are dropped and counted); every flush_interval they are journaled to disk, so a
    # SIGKILL loses at most that window; on SIGTERM the database gets drain_timeout seconds, then
    # what is left stays in the journal for the next start.
    queue_size: int = 100_000  # most captures held in memory, beside the byte budget
    batch_size: int = 2_000
    flush_interval: float = 0.2  # longest a capture waits to be journaled (the SIGKILL window)
    capture_memory_bytes: int = 256 * 1024 * 1024
    drain_timeout: float = 5.0
    journal_fsync: bool = True  # fdatasync each journal write (survives power loss, not only SIGKILL)
    # Stored API / feedback reads of a completion not yet in the database wait this long for the writer.
    read_your_writes_timeout: float = 5.0

    # Fine-tune jobs: how often cloud jobs are polled.
    finetune_poll_interval: float = 1.0
    # LoRA jobs train in their own process with this many torch/OpenMP threads (default: all cores
    # but one, so a co-located proxy keeps serving).
    finetune_threads: int | None = None

    # Students answered by the proxy (protege/<name>): seconds before a request gets a timeout error.
    student_timeout: float = 60.0

    # Automatic distillation loop inside `protege serve`.
    policies_file: str | None = None
    run_worker: bool = False

    log_level: str = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = os.environ.get("PROTEGE_CONFIG", "protege.toml")
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_path))

    @property
    def data_path(self) -> Path:
        """Artifacts (datasets, reports, local students, spool) live beside the database file."""
        if self.data_dir:
            return Path(self.data_dir)
        if self.db == ":memory:" or self.db.startswith(":memory:") or "://" in self.db:
            return Path("protege-data")  # a database server (postgresql://): give each replica its own data_dir
        db = Path(self.db)
        return db.parent / f"{db.stem}-data"


def load_settings(**overrides: Any) -> Settings:
    """Build settings; CLI flags come in as ``overrides`` (``None`` means "not given")."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
