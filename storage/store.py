"""The store: one ClickHouse client API, two deployments.

``QT_CLICKHOUSE_URL`` unset means embedded chDB under ``$QT_HOME/clickhouse`` (database
``qt``); an ``http(s)://user:pass@host:port/db`` URL means a ClickHouse server. Both go through
clickhouse-connect, and every statement comes from a ``.sql`` file under ``sql/`` with its
values bound as ``{name:Type}`` parameters, so the same SQL runs on both.

chDB allows one data path per process, so clients are shared per process (:func:`open_store`)
and reference-counted; the last :meth:`Store.close` releases the engine.

Before chDB is started on a path, :func:`check_embedded_store` makes sure ``QT_HOME`` is
writable and that no other process holds the store (chDB locks ``<path>/status``; a second
process would fail deep inside the engine): either problem is a :class:`StoreUnavailable`
that says what to do. Server URLs are shown with their password redacted
(:func:`errors.redact`), in descriptions and in errors.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from errors import UserError, redact
from schemas.tables import TableRows
from settings import PROJECT_ROOT, Settings

SQL_DIR = PROJECT_ROOT / "sql"


class StoreUnavailable(UserError, RuntimeError):
    """The store cannot be opened for a reason the user can fix (the message says which)."""


def sql_text(name: str) -> str:
    """The text of ``sql/<name>.sql`` (``name`` may include a subfolder, e.g. ``analytics/x``)."""
    path = SQL_DIR / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"no SQL file {path.relative_to(PROJECT_ROOT)}")
    return path.read_text()


def ddl_files() -> list[Path]:
    return sorted((SQL_DIR / "ddl").glob("*.sql"))


class Store:
    """A connected, migrated store.

    Every call to the client runs on one dedicated thread of the store: chDB keeps Python
    thread state across its calls, and using one connection from several Bytewax worker
    threads crashed the process (SIGSEGV in chDB's GIL re-acquire, seen with ``-w 2``).
    Callers block until their call is done, except :meth:`insert_async`, which lets a sink keep
    processing while rows are written (it waits on the futures before a snapshot).
    """

    def __init__(self, connect: Callable[[], tuple[Client, str, str]]) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qt-store")
        self._client, self.key, self.description = self._thread.submit(connect).result()
        self._refs = 1

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._thread.submit(fn, *args, **kwargs).result()

    # --- writes ----------------------------------------------------------------------------
    def insert_async(
        self, table: str, columns: Sequence[str], data: Sequence[Any], column_oriented: bool = False
    ) -> Future[int]:
        """Queue an insert on the store's thread; the future gives the row count."""
        n = len(data[0]) if column_oriented and data else len(data)
        return self._write(
            n,
            lambda: self._client.insert(
                table, data, column_names=list(columns), column_oriented=column_oriented
            ),
        )

    def _write(self, n: int, write: Callable[[], Any]) -> Future[int]:
        """Run ``write`` on the store's thread unless there are no rows; the future gives
        ``n``."""

        def run() -> int:
            if n:
                write()
            return n

        return self._thread.submit(run)

    def insert(
        self, table: str, columns: Sequence[str], data: Sequence[Any], column_oriented: bool = False
    ) -> int:
        """Insert rows (or columns) into ``table``; returns the number of rows written."""
        return self.insert_async(table, columns, data, column_oriented).result()

    def insert_block_async(self, block: TableRows) -> Future[int]:
        """Queue the insert of a table block in whatever form it holds (rows, columns, or
        events encoded here as an Arrow table, which ClickHouse reads as ``FORMAT Arrow``)."""
        if block.encode is None:
            return self.insert_async(block.table, block.columns, block.data, block.column_oriented)
        return self._write(
            len(block), lambda: self._client.insert_arrow(block.table, block.to_arrow())
        )

    def insert_block(self, block: TableRows) -> int:
        """:meth:`insert_block_async`, waiting; returns the number of rows written."""
        return self.insert_block_async(block).result()

    # --- reads -------------------------------------------------------------------------------
    def query(self, name: str, **params: Any) -> list[dict[str, Any]]:
        """Run ``sql/<name>.sql`` with bound parameters; rows as dicts."""
        res = self._call(self._client.query, sql_text(name), parameters=params or None)
        cols = res.column_names
        return [dict(zip(cols, row, strict=True)) for row in res.result_rows]

    # --- lifecycle -----------------------------------------------------------------------
    def migrate(self) -> None:
        """Apply every DDL file in order (each is idempotent: CREATE ... IF NOT EXISTS)."""
        for path in ddl_files():
            self._call(self._client.command, path.read_text())

    def close(self) -> None:
        with _OPEN_LOCK:
            self._refs -= 1
            if self._refs > 0:
                return
            _OPEN.pop(self.key, None)
        try:
            self._call(self._client.close)
        except RuntimeError:  # at interpreter exit the executor already refuses work
            self._client.close()
        self._thread.shutdown(wait=True)


_OPEN: dict[str, Store] = {}
_OPEN_LOCK = threading.Lock()


class DeferredStore(Store):
    """The store of ``settings``, opened at its first use, not when the flow is built.

    In a cluster every process builds the whole flow, but only the process that runs the
    decision engine (and the rows' writer, on the engine's key) may open the embedded store:
    chDB allows one process per data path. The engine's registry records and CLM data go
    through this, so the store opens where they are used, and nowhere else.
    """

    def __init__(self, settings: Settings) -> None:  # (no connection yet: see _get)
        self._settings = settings
        self._store: Store | None = None
        self._lock = threading.Lock()
        atexit.register(self.close)  # a flow has no end hook: closed when the process ends

    def _get(self) -> Store:
        with self._lock:
            if self._store is None:
                self._store = open_store(self._settings)
            return self._store

    @property
    def opened(self) -> bool:
        return self._store is not None

    @property
    def key(self) -> str:  # type: ignore[override]
        return self._get().key

    @property
    def description(self) -> str:  # type: ignore[override]
        return self._get().description

    def insert_async(
        self, table: str, columns: Sequence[str], data: Sequence[Any], column_oriented: bool = False
    ) -> Future[int]:
        return self._get().insert_async(table, columns, data, column_oriented)

    def insert(
        self, table: str, columns: Sequence[str], data: Sequence[Any], column_oriented: bool = False
    ) -> int:
        return self._get().insert(table, columns, data, column_oriented)

    def insert_block_async(self, block: TableRows) -> Future[int]:
        return self._get().insert_block_async(block)

    def query(self, name: str, **params: Any) -> list[dict[str, Any]]:
        return self._get().query(name, **params)

    def migrate(self) -> None:
        self._get().migrate()

    def close(self) -> None:
        """Release the store if it was opened (a process that never used it has nothing)."""
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()


def open_store(settings: Settings, migrate: bool = True) -> Store:
    """Open (or share) the store that ``settings`` name. Close it when done."""
    url = settings.clickhouse_url.strip()
    path = Path(settings.store_path).resolve()
    key = url or f"chdb:{path}#{settings.database}"
    with _OPEN_LOCK:
        store = _OPEN.get(key)
        if store is not None:
            store._refs += 1
            return store
        others = {k[5:].rsplit("#", 1)[0] for k in _OPEN if k.startswith("chdb:")}
        if not url and others - {str(path)}:
            raise RuntimeError(
                f"this process already has the embedded store {others.pop()} open; chDB allows "
                f"one data path per process, so {path} cannot be opened too"
            )
        if not url and str(path) not in others:  # (this process's own lock is no conflict)
            _check_embedded(settings, path)
        store = Store(lambda: _connect(settings, url))
        _OPEN[key] = store
    if migrate:
        store.migrate()
    return store


def _home_problem(settings: Settings, path: Path, exc: OSError) -> StoreUnavailable:
    why = exc.strerror or str(exc)
    return StoreUnavailable(
        f"QT_HOME={settings.home}: the embedded store {path} cannot be written ({why}); set "
        "QT_HOME to a writable directory (or QT_CLICKHOUSE_URL to a ClickHouse server)"
    )


def _cause(exc: BaseException) -> str:
    """A driver error in a few words: the OS error if there is one, else its first line."""
    text = redact(str(exc))
    m = re.search(r"\[Errno -?\d+\] [^\"')(]+", text)
    return (m[0] if m else text.splitlines()[0] if text else type(exc).__name__)[:200].strip()


def _lock_holder(status: Path) -> str:
    """``pid N, started T`` from chDB's status file, when it says so."""
    try:
        fields = dict(
            line.split(": ", 1) for line in status.read_text().splitlines() if ": " in line
        )
    except OSError:
        return ""
    held = ", ".join(
        f"{k} {fields[v]}" for k, v in (("pid", "PID"), ("started", "Started at")) if v in fields
    )
    return f" ({held})" if held else ""


def check_embedded_store(settings: Settings) -> None:
    """Raise :class:`StoreUnavailable` unless the embedded store under ``QT_HOME`` can be
    opened by this process: its directory writable, and no other process holding its lock.

    Call it before starting chDB (and before anything else writes under ``QT_HOME``): chDB
    reports both problems only as a failure deep in its engine, after printing to stderr.
    A store this process has open already passes.
    """
    path = Path(settings.store_path).resolve()
    with _OPEN_LOCK:
        if any(k.startswith(f"chdb:{path}#") for k in _OPEN):
            return
        _check_embedded(settings, path)


def _check_embedded(settings: Settings, path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise _home_problem(settings, path, exc) from None
    status = path / "status"
    try:
        fd = os.open(status, os.O_RDWR)
    except FileNotFoundError:
        return  # no engine has it open (chDB removes the file on a clean close)
    except OSError as exc:
        raise _home_problem(settings, path, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # chDB holds this lock while open
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise StoreUnavailable(
            f"QT_HOME={settings.home}: the embedded store {path} is in use by another "
            f"process{_lock_holder(status)}; chDB allows one process per store: wait for that "
            "run to end (or stop it), or give this run its own QT_HOME"
        ) from None
    finally:
        os.close(fd)  # closing releases the probe's lock


def _connect(settings: Settings, url: str) -> tuple[Client, str, str]:
    if url:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https"):
            raise StoreUnavailable(
                f"QT_CLICKHOUSE_URL={redact(url)!r}: expected http(s)://user:pass@host:port/db"
            )
        database = parsed.path.strip("/") or "default"
        where = f"ClickHouse server {parsed.hostname}:{parsed.port}/{database}"
        driver_log = logging.getLogger("clickhouse_connect")
        level = driver_log.level
        driver_log.setLevel(logging.CRITICAL)  # it logs the failure too: the error says it
        try:
            client = clickhouse_connect.get_client(
                host=parsed.hostname,
                port=parsed.port or (8443 if parsed.scheme == "https" else 8123),
                username=parsed.username or "default",
                password=parsed.password or "",
                database=database,
                secure=parsed.scheme == "https",
                tz_mode="aware",
            )
        except Exception as exc:  # unreachable, refused, bad credentials, no such database
            raise StoreUnavailable(
                f"QT_CLICKHOUSE_URL={redact(url)}: cannot connect to the {where} "
                f"({_cause(exc)}); check the URL, the credentials and that the server is "
                "running"
            ) from None
        finally:
            driver_log.setLevel(level)
        return client, url, where
    path = Path(settings.store_path).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _home_problem(settings, path, exc) from None
    client = clickhouse_connect.get_client(interface="chdb", path=str(path), tz_mode="aware")
    client.command(sql_text("admin/create_database"), parameters={"db": settings.database})
    client.database = settings.database
    return (
        client,
        f"chdb:{path}#{settings.database}",
        f"embedded chDB {path} (database {settings.database})",
    )
