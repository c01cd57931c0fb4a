"""The ClickHouse sink's buffering: size and age triggers, a quiet flow, flush, errors."""

from __future__ import annotations

import time
from typing import Any

import pytest

from connectors.clickhouse import TableWriter
from schemas.dead_letters import DeadLetters, RejectedAt
from schemas.tables import dead_letter_rows

T0 = 1_399_334_400_000


def block(n: int, start: int = 0) -> Any:
    dead = DeadLetters()
    for i in range(start, start + n):
        dead.add("test.csv", i, T0 + i, "EURUSD", RejectedAt.VALIDATE, "crossed quote", f"row {i}")
    return dead_letter_rows(dead)


def stored(store: Any) -> int:
    return store.query("queries/table_counts")[0]["dead_letters"]


def test_rows_wait_until_the_batch_is_full(store: Any) -> None:
    writer = TableWriter(store, batch_rows=10, flush_seconds=3600)
    writer.write_batch([block(6)])
    time.sleep(0.6)
    assert stored(store) == 0  # neither full nor old
    writer.write_batch([block(6, 6)])
    writer.flush()
    assert stored(store) == 12 and writer.written == {"dead_letters": 12}


def test_a_quiet_flow_still_stores_its_last_rows(store: Any) -> None:
    writer = TableWriter(store, batch_rows=1_000, flush_seconds=0.2)
    writer.write_batch([block(3)])  # then no write ever comes (tail mode, a quiet market)
    deadline = time.monotonic() + 5
    while stored(store) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stored(store) == 3


def test_a_replayed_block_is_stored_once(store: Any) -> None:
    writer = TableWriter(store, batch_rows=1, flush_seconds=3600)
    writer.write_batch([block(5)])
    writer.write_batch([block(5)])  # at-least-once after a resume: the same ids again
    writer.flush()
    assert stored(store) == 5


def test_an_insert_error_fails_the_next_write(store: Any) -> None:
    writer = TableWriter(store, batch_rows=1, flush_seconds=3600)
    bad = block(1)
    bad.columns = ("no_such_column", *bad.columns[1:])
    writer.write_batch([bad])
    with pytest.raises(Exception, match="no_such_column"):
        writer.flush()


# --- where and how often rows are written ---------------------------------------------------
def test_every_block_is_written_by_the_engine_keys_owner(settings: Any, store: Any) -> None:
    """The embedded store's writer is a stateful step on the engine's key: blocks from any
    worker reach it, in order, and each snapshot stores what came before it."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    from connectors.clickhouse import STORE_OWNER
    from dataflows import graphs
    from schemas.tables import DEAD_LETTERS

    flow = Dataflow("owner")
    blocks = op.input("in", flow, TestingSource([block(3), block(4, 3), block(2, 7)], 1))
    counts: list[dict[str, int]] = []
    (written,) = graphs.store("clickhouse", [blocks], settings, [DEAD_LETTERS])
    op.output("counts", written, TestingSink(counts))
    run_main(flow)
    assert stored(store) == 9 and STORE_OWNER.is_set()
    # the summary's counter: every row, once, and only for blocks with rows
    assert sum(c["rows.written"] for c in counts) == 9
    assert all(c["rows.written"] for c in counts)


def test_a_server_sink_gives_the_summary_no_counts(settings: Any) -> None:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource

    from dataflows import graphs
    from schemas.tables import DEAD_LETTERS

    flow = Dataflow("server")
    blocks = op.input("in", flow, TestingSource([block(1)]))
    server = settings.replace(clickhouse_url="http://127.0.0.1:1")
    assert graphs.store("clickhouse", [blocks], server, [DEAD_LETTERS]) == []


def test_a_block_of_a_table_the_flow_does_not_write_is_refused(settings: Any) -> None:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource, run_main

    from dataflows import graphs

    flow = Dataflow("unknown_table")
    graphs.store(
        "clickhouse", [op.input("in", flow, TestingSource([block(1)]))], settings, ["bars"]
    )
    with pytest.raises(Exception) as raised:
        run_main(flow)
    causes: list[BaseException] = []
    e: BaseException | None = raised.value
    while e is not None:
        causes.append(e)
        e = e.__cause__
    assert any("no table 'dead_letters'" in str(c) for c in causes), causes
