"""ClickHouse as a Bytewax sink: batched, idempotent, at-least-once.

Items are ``(table, TableRows)``. Rows are buffered per table and inserted when a table's
buffer reaches ``batch_rows`` or its oldest row is ``flush_seconds`` old (checked on every
write and, for a quiet live flow whose writes stop, by a background thread), at every epoch
snapshot, and at close. Inserts run on the store's own thread while the worker goes on; a
snapshot (and close) waits until every insert queued before it is done, so nothing that a
recovery snapshot counts as done is still only in memory, and an insert error fails the flow.
Bytewax replays the last epoch after a crash, so the same rows may arrive twice: every
table is a ReplacingMergeTree on a deterministic key and is read with FINAL.

Two ways rows reach the store:

- a ClickHouse server (``QT_CLICKHOUSE_URL``): :class:`ClickHouseSink`, one partition per table,
  spread over every worker of every process (each inserts on its own connection);
- the embedded store: chDB allows one process per data path, so every row goes, by the flow's
  own exchange, to :class:`StoreOwner`, a stateful step on the decision engine's key. The same
  key lands on the same worker, so the rows are written by the process that runs the engine,
  which is the process that opens the store for the engine's registry records and CLM data; no
  other process of a cluster ever opens it.

How often: a table's rows are inserted at most ``QT_SINK_FLUSH_SECONDS`` after they arrive,
in a replay too. Each insert costs a fixed ~7 ms of chDB work besides its rows, but that work
runs on the store's thread beside the flow; held back for the end of a replay, it ran after
the flow instead (docs/capacity.md has the figures).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from schemas.tables import ROWS_WRITTEN, TableRows, merge_blocks
from settings import Settings
from storage.store import Store, open_store

log = logging.getLogger(__name__)
STORE_OWNER = threading.Event()  # set in the process whose StoreOwner writes the store


class _TableBuffer:
    def __init__(self) -> None:
        self.blocks: list[TableRows] = []
        self.rows = 0
        self.since = 0.0


_PARTITIONS: weakref.WeakSet[TableWriter] = weakref.WeakSet()
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
            _flusher = threading.Thread(target=_flush_due_forever, name="sink-flusher", daemon=True)
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

    def __init__(
        self,
        store: Store,
        batch_rows: int,
        flush_seconds: float,
        on_written: Callable[[str, int], None] | None = None,
    ) -> None:
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
        for block in merge_blocks(buf.blocks):
            self.pending.append((table, self.store.insert_block_async(block)))
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


class StoreOwner(StatefulBatchLogic[TableRows, dict[str, int], None]):
    """Writes every table block of the flow into the embedded store, from the one worker its
    key is routed to (the engine's: see the module docstring). The store opens at its first
    block, in that process only; each snapshot stores what came before it (at-least-once,
    like the sink), and the end of input closes it.

    Emits ``{ROWS_WRITTEN: rows}`` for each batch it takes, for the run's summary: counted in the
    epoch the rows arrive in, so a resume neither loses nor repeats them, and the summary,
    downstream of this step, ends after the store's last insert (its elapsed time and its
    rates include storing, as the user waits for it). Rows, not keys: a row that replaces
    an earlier one (a closed trade's, its open row) counts too."""

    def __init__(self, settings: Settings) -> None:
        self.writer = TableWriter(
            open_store(settings), settings.sink_batch_rows, settings.sink_flush_seconds
        )
        STORE_OWNER.set()
        log.info(
            "this process (pid %d) owns the embedded store %s",
            os.getpid(),
            self.writer.store.description,
        )

    def on_batch(self, values: list[TableRows]) -> tuple[list[dict[str, int]], bool]:
        self.writer.write_batch(values)
        rows = sum(len(block) for block in values)
        return ([{ROWS_WRITTEN: rows}] if rows else []), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[dict[str, int]], bool]:
        self.writer.close()
        return [], StatefulBatchLogic.DISCARD

    def snapshot(self) -> None:
        self.writer.flush()
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
            raise ValueError(
                f"ClickHouseSink: no partition for table {item_key!r}; known tables {self.tables}"
            ) from None

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> ClickHousePartition:
        return ClickHousePartition(
            open_store(self.settings),
            self.settings.sink_batch_rows,
            self.settings.sink_flush_seconds,
        )
