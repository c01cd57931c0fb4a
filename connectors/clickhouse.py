"""ClickHouse as a Bytewax sink: batched, idempotent, at-least-once.

Items are ``(table, TableRows)``. Rows are buffered per table and inserted when a table's
buffer reaches ``batch_rows`` or its oldest row is ``flush_seconds`` old (checked on every
write and, for a quiet live flow whose writes stop, by a background thread), at every epoch
snapshot, and at close. Inserts run on the store's own thread while the worker goes on; a
snapshot (and close) waits until every insert queued before it is done, so nothing that a
recovery snapshot counts as done is still only in memory, and an insert error fails the flow.
Bytewax replays the last epoch after a crash, so the same rows may arrive twice: every
table is a ReplacingMergeTree on a deterministic key and is read with FINAL.

One partition per table spreads the tables over the workers; in embedded mode all partitions
share the process's one chDB client.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from schemas.tables import TableRows
from settings import Settings
from storage.store import Store, open_store


class _TableBuffer:
    def __init__(self) -> None:
        self.blocks: list[TableRows] = []
        self.rows = 0
        self.since = 0.0


_PARTITIONS: weakref.WeakSet[ClickHousePartition] = weakref.WeakSet()
_PARTITIONS_LOCK = threading.Lock()


_FLUSHER_PERIOD_S = 0.25
_flusher: threading.Thread | None = None


def _flush_due_forever() -> None:
    """Queue the inserts of buffers past their ``flush_seconds`` while no write comes (tail
    mode: the last rows before a quiet spell must not wait for the next tick)."""
    while True:
        time.sleep(_FLUSHER_PERIOD_S)
        with _PARTITIONS_LOCK:
            partitions = list(_PARTITIONS)
        for partition in partitions:
            partition.flush_due()


def _start_flusher() -> None:
    global _flusher
    with _PARTITIONS_LOCK:
        if _flusher is None:
            _flusher = threading.Thread(target=_flush_due_forever, name="sink-flusher",
                                        daemon=True)
            _flusher.start()


def flush_all() -> None:
    """Store every row this process's sinks hold (a reader that needs the newest rows, like a
    CLM cycle reading its training data in a fast replay, calls this first)."""
    with _PARTITIONS_LOCK:
        partitions = list(_PARTITIONS)
    for partition in partitions:
        partition.flush()


class TableWriter:
    """Buffered, asynchronous inserts of table blocks (the sink's partitions, and the CLM's
    feature archive, which must know when its rows are stored)."""

    def __init__(self, store: Store, batch_rows: int, flush_seconds: float,
                 on_written: Callable[[str, int], None] | None = None) -> None:
        self._lock = threading.RLock()
        with _PARTITIONS_LOCK:
            _PARTITIONS.add(self)
        self.store = store
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.buffers: dict[str, _TableBuffer] = {}
        self.on_written = on_written
        self.written: dict[str, int] = {}
        self.pending: list[tuple[str, Future[int]]] = []
        _start_flusher()

    def write_batch(self, items: list[TableRows]) -> None:
        with self._lock:
            self._write(items)

    def _write(self, items: list[TableRows]) -> None:
        self._reap(wait=False)
        now = time.monotonic()
        for block in items:
            if not len(block):
                continue
            buf = self.buffers.setdefault(block.table, _TableBuffer())
            if not buf.blocks:
                buf.since = now
            buf.blocks.append(block)
            buf.rows += len(block)
        self._flush_due(now)

    def _flush_due(self, now: float) -> None:
        for table, buf in self.buffers.items():
            if buf.rows >= self.batch_rows or (buf.rows and now - buf.since >= self.flush_seconds):
                self._flush(table, buf)

    def flush_due(self) -> None:
        """Queue the inserts of the buffers that are full or old enough (without waiting)."""
        with self._lock:
            self._flush_due(time.monotonic())

    def _flush(self, table: str, buf: _TableBuffer) -> None:
        groups: dict[tuple[tuple[str, ...], bool], list[TableRows]] = {}
        for block in buf.blocks:
            groups.setdefault((block.columns, block.column_oriented), []).append(block)
        for (columns, col_oriented), blocks in groups.items():
            if col_oriented:
                data = [[v for b in blocks for v in b.data[i]] for i in range(len(columns))]
            else:
                data = [row for b in blocks for row in b.data]
            self.pending.append(
                (table, self.store.insert_async(table, columns, data, col_oriented)))
        buf.blocks, buf.rows = [], 0

    def _reap(self, wait: bool) -> None:
        """Collect finished inserts (all of them when ``wait``); re-raise an insert's error."""
        still = []
        for table, fut in self.pending:
            if not wait and not fut.done():
                still.append((table, fut))
                continue
            n = fut.result()
            self.written[table] = self.written.get(table, 0) + n
            if self.on_written is not None:
                self.on_written(table, n)
        self.pending = still

    def flush(self) -> None:
        """Insert everything buffered and wait until it is stored."""
        with self._lock:
            for table, buf in self.buffers.items():
                if buf.rows:
                    self._flush(table, buf)
            self._reap(wait=True)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with _PARTITIONS_LOCK:
                _PARTITIONS.discard(self)
            self.store.close()


class ClickHousePartition(TableWriter, StatefulSinkPartition[TableRows, None]):
    """One sink partition: a :class:`TableWriter` that stores everything at each snapshot."""

    def snapshot(self) -> None:
        self.flush()  # at-least-once: everything before this epoch's snapshot is stored
        return None


class ClickHouseSink(FixedPartitionedSink[TableRows, None]):
    """Sink of ``(table, TableRows)`` items; one partition per table."""

    def __init__(self, settings: Settings, tables: Sequence[str]) -> None:
        self.settings = settings
        self.tables = list(tables)

    def list_parts(self) -> list[str]:
        return self.tables

    def part_fn(self, item_key: str) -> int:
        try:
            return self.tables.index(item_key)
        except ValueError:
            raise ValueError(f"ClickHouseSink: no partition for table {item_key!r}; "
                             f"known tables {self.tables}") from None

    def build_part(self, step_id: str, for_part: str,
                   resume_state: None) -> ClickHousePartition:
        return ClickHousePartition(open_store(self.settings), self.settings.sink_batch_rows,
                                   self.settings.sink_flush_seconds)
