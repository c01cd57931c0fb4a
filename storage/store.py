"""The store: one ClickHouse client API, two deployments.

``QT_CLICKHOUSE_URL`` unset means embedded chDB under ``$QT_HOME/clickhouse`` (database
``qt``); an ``http(s)://user:pass@host:port/db`` URL means a ClickHouse server. Both go through
clickhouse-connect, and every statement comes from a ``.sql`` file under ``sql/`` with its
values bound as ``{name:Type}`` parameters, so the same SQL runs on both.

chDB allows one data path per process, so clients are shared per process (:func:`open_store`)
and reference-counted; the last :meth:`Store.close` releases the engine.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from settings import PROJECT_ROOT, Settings

SQL_DIR = PROJECT_ROOT / "sql"


def sql_text(name: str) -> str:
    """The text of ``sql/<name>.sql`` (``name`` may include a subfolder, e.g. ``analytics/x``)."""
    path = SQL_DIR / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"no SQL file {path.relative_to(PROJECT_ROOT)}")
    return path.read_text()


def ddl_files() -> list[Path]:
    return sorted((SQL_DIR / "ddl").glob("*.sql"))


class Store:
    """A connected, migrated store. Thread-safe: calls are serialised by a lock."""

    def __init__(self, client: Client, key: str, description: str) -> None:
        self.client = client
        self.key = key
        self.description = description
        self._lock = threading.RLock()
        self._refs = 1

    # --- writes ----------------------------------------------------------------------------
    def insert(self, table: str, columns: Sequence[str], data: Sequence[Any],
               column_oriented: bool = False) -> int:
        """Insert rows (or columns) into ``table``; returns the number of rows written."""
        if not data or (column_oriented and not data[0]):
            return 0
        with self._lock:
            self.client.insert(table, data, column_names=list(columns),
                               column_oriented=column_oriented)
        return len(data[0]) if column_oriented else len(data)

    def execute(self, name: str, **params: Any) -> None:
        """Run one statement from ``sql/<name>.sql``."""
        with self._lock:
            self.client.command(sql_text(name), parameters=params or None)

    # --- reads -------------------------------------------------------------------------------
    def query(self, name: str, **params: Any) -> list[dict[str, Any]]:
        """Run ``sql/<name>.sql`` with bound parameters; rows as dicts."""
        with self._lock:
            res = self.client.query(sql_text(name), parameters=params or None)
        cols = res.column_names
        return [dict(zip(cols, row, strict=True)) for row in res.result_rows]

    def query_df(self, name: str, **params: Any):  # -> pandas.DataFrame
        with self._lock:
            return self.client.query_df(sql_text(name), parameters=params or None)

    def scalar(self, name: str, **params: Any) -> Any:
        rows = self.query(name, **params)
        return next(iter(rows[0].values())) if rows else None

    # --- lifecycle -----------------------------------------------------------------------
    def migrate(self) -> None:
        """Apply every DDL file in order (each is idempotent: CREATE ... IF NOT EXISTS)."""
        with self._lock:
            for path in ddl_files():
                self.client.command(path.read_text())

    def truncate(self, tables: Iterable[str]) -> None:
        """Empty tables (tests and benchmarks that want a clean store)."""
        with self._lock:
            for table in tables:
                self.client.command(sql_text("admin/truncate_table"),
                                    parameters={"table": table})

    def close(self) -> None:
        with _OPEN_LOCK:
            self._refs -= 1
            if self._refs > 0:
                return
            _OPEN.pop(self.key, None)
            with self._lock:
                self.client.close()


_OPEN: dict[str, Store] = {}
_OPEN_LOCK = threading.Lock()


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
        store = Store(*_connect(settings, url))
        _OPEN[key] = store
    if migrate:
        store.migrate()
    return store


def _connect(settings: Settings, url: str) -> tuple[Client, str, str]:
    if url:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"QT_CLICKHOUSE_URL={url!r}: expected http(s)://user:pass@host:port/db")
        database = parsed.path.strip("/") or "default"
        client = clickhouse_connect.get_client(
            host=parsed.hostname, port=parsed.port or (8443 if parsed.scheme == "https" else 8123),
            username=parsed.username or "default", password=parsed.password or "",
            database=database, secure=parsed.scheme == "https", tz_mode="aware",
        )
        return client, url, f"ClickHouse server {parsed.hostname}:{parsed.port}/{database}"
    path = Path(settings.store_path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    client = clickhouse_connect.get_client(interface="chdb", path=str(path), tz_mode="aware")
    client.command(sql_text("admin/create_database"), parameters={"db": settings.database})
    client.database = settings.database
    return (client, f"chdb:{path}#{settings.database}",
            f"embedded chDB {path} (database {settings.database})")


def rows_to_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Transpose query rows (dicts) to columns."""
    if not rows:
        return {}
    return {k: [r[k] for r in rows] for k in rows[0]}
