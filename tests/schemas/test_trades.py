"""The ``trades`` row: one definition (``TRADE_FIELDS``) that matches the table, and a round
trip through the real store that gives back the trade that was written."""

from __future__ import annotations

import math
from typing import Any

from schemas.tables import trade_rows
from schemas.trades import TRADE_COLUMNS, TRADE_FIELDS, TradeRecord, opened_from_row, trade_row
from tests.operators.test_trade_join import T0, pair


def test_the_row_definition_is_the_table(store: Any) -> None:
    described = [c["name"] for c in store.query("queries/table_columns", table="trades")]
    assert described == [*TRADE_COLUMNS, "written_at"]  # written_at: the store's own default
    assert len(set(TRADE_COLUMNS)) == len(TRADE_FIELDS)


def test_an_open_then_closed_trade_reads_back_as_written(store: Any) -> None:
    opened, closed = pair("T-ROUND-TRIP", T0)
    open_row = dict(zip(TRADE_COLUMNS, trade_row(TradeRecord(opened)), strict=True))
    assert (open_row["status"], open_row["version"], open_row["exit_ts"]) == ("open", 1, None)
    assert math.isnan(open_row["net_pnl"]) and open_row["fees"] == opened.entry_fee
    for record in (TradeRecord(opened), TradeRecord(opened, closed)):
        rows = trade_rows([record])
        store.insert_block(rows)
    (row,) = store.query("queries/trade_by_id", trade_id="T-ROUND-TRIP")  # FINAL: version 2
    assert (row["status"], row["version"]) == ("closed", 2)
    assert row["exit_ts"] == closed.exit_ts and row["exit_reason"] == closed.exit_reason.value
    assert row["net_pnl"] == closed.net_pnl and row["fees"] == closed.fees
    back = opened_from_row(row)
    # Float32 columns (window, RL state and action) come back rounded to float32
    assert repr(back.entry.features) == repr(opened.entry.features)
    assert (
        back.entry.votes == opened.entry.votes
        and back.entry.rl.policy_version == opened.entry.rl.policy_version
    )
    assert (back.trade_id, back.side, back.entry_ts, back.quantity) == (
        opened.trade_id,
        opened.side,
        opened.entry_ts,
        opened.quantity,
    )
