"""Arrow table blocks: each schema is its table's DDL, and every field survives the store."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime

import pytest

from schemas import codec
from schemas.bars import Bar
from schemas.features import FeatureVector
from schemas.signals import Action, Consensus, Signal, Vote
from schemas.tables import (
    BAR_ARROW,
    BARS,
    FEATURE_ARROW,
    FEATURES,
    SIGNAL_ARROW,
    SIGNALS,
    bar_rows,
    merge_blocks,
    signal_rows,
)

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
T1 = datetime(2024, 3, 1, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("table", "schema", "event"),
    [
        (BARS, BAR_ARROW, Bar),
        (FEATURES, FEATURE_ARROW, FeatureVector),
        (SIGNALS, SIGNAL_ARROW, None),
    ],
)
def test_each_arrow_schema_is_its_tables_columns(store, table, schema, event) -> None:
    described = [c["name"] for c in store.query("queries/table_columns", table=table)]
    assert [c for c in described if c != "written_at"] == schema.names
    if event is not None:  # the event's fields, in order, are the columns
        assert list(codec.row_columns(event)) == schema.names


def _bar(symbol: str, quotes: int) -> Bar:
    spread = math.nan if not quotes else 1.5
    return Bar(
        symbol, 60, T0, T1, 1.0, 2.0, 0.5, 1.5, 3.0, 7, 1.2, 1.0, 2.0, quotes, spread, spread
    )


def test_bars_come_back_as_written(store) -> None:
    bars = [_bar("A:B", 0), _bar("C:D", 4)]
    (block,) = merge_blocks([bar_rows(bars[:1]), bar_rows(bars[1:])])
    assert store.insert_block(block) == 2
    back = [
        codec.from_row(Bar, r)
        for sym in ("A:B", "C:D")
        for r in store.query("queries/bars_for_symbol", symbol=sym, seconds=60)
    ]
    assert [codec.to_row(b) for b in back][1] == codec.to_row(bars[1])
    assert math.isnan(back[0].spread_mean) and back[0].quote_count == 0


def test_signals_come_back_with_their_votes(store) -> None:
    votes = (
        Vote("xgboost", "v0003", Action.BUY, 0.61),
        Vote("nhits", "v0001", Action.HOLD, 0.0, failed=True),
    )
    signal = Signal(
        "A:B",
        T1,
        T0,
        Action.BUY,
        0.61,
        Consensus.SPLIT,
        1.2,
        0.0,
        0.004,
        False,
        True,
        "fs",
        votes,
        (1.2, 0.9),
    )
    # beside it, a warm-up signal without votes and one with a third (shadow-free) vote: each
    # row's arrays are its own (the block stores them as flat values with offsets)
    bare = dataclasses.replace(signal, symbol="A:C", votes=(), weights=())
    three = dataclasses.replace(
        signal,
        symbol="A:D",
        votes=(*votes, Vote("patchtst", "v0002", Action.SELL, 0.75)),
        weights=(1.2, 0.9, 1.0),
    )
    store.insert_block(signal_rows([signal, bare, three]))
    rows = {r["symbol"]: r for r in store.query("queries/signal_votes")}
    row = rows["A:B"]
    assert row["action"] == "BUY" and row["consensus"] == "split"
    assert row["models"] == ["xgboost", "nhits"] and row["versions"] == ["v0003", "v0001"]
    assert row["actions"] == ["BUY", "HOLD"] and row["failed"] == [False, True]
    assert row["confidences"] == [0.61, 0.0] and row["ts"] == T1
    assert rows["A:C"]["models"] == [] and rows["A:C"]["confidences"] == []
    assert rows["A:D"]["models"] == ["xgboost", "nhits", "patchtst"]
    assert rows["A:D"]["actions"] == ["BUY", "HOLD", "SELL"]
