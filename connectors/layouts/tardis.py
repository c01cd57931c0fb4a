"""Tardis.dev downloadable CSV files (https://docs.tardis.dev/downloadable-csv-files),
recognised by their header.

======  ==========  ============================================================================
type    internal    header
======  ==========  ============================================================================
trades  trades      exchange,symbol,timestamp,local_timestamp,id,side,price,amount
quotes  quotes      exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,
                    bid_amount (``book_ticker`` files have the same header and read alike)
======  ==========  ============================================================================

Times are microseconds since 1970 (UTC); the event time is ``timestamp`` (the exchange's,
or the arrival time when the exchange gives none, as Tardis documents). ``side`` is the
aggressor, ``buy``/``sell``/``unknown``. The symbol is ``EXCHANGE:SYMBOL`` with the exchange
id upper-cased like the project's venues (``binance,BTCUSDT`` -> ``BINANCE:BTCUSDT``,
``binance-futures`` -> ``BINANCE-FUTURES:BTCUSDT``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from connectors.layouts.base import Converted, FileLayout, epoch_ms, internal_batch
from schemas.ticks import TickOrigin

TRADES: tuple[str, ...] = (
    "exchange",
    "symbol",
    "timestamp",
    "local_timestamp",
    "id",
    "side",
    "price",
    "amount",
)
QUOTES: tuple[str, ...] = (
    "exchange",
    "symbol",
    "timestamp",
    "local_timestamp",
    "ask_amount",
    "ask_price",
    "bid_price",
    "bid_amount",
)
FIELDS = {
    TickOrigin.TRADE: {"price": "price", "size": "amount"},
    TickOrigin.QUOTE: {
        "bid": "bid_price",
        "ask": "ask_price",
        "bid_size": "bid_amount",
        "ask_size": "ask_amount",
    },
}


def symbols_of(table: pa.Table | pa.RecordBatch) -> pa.Array:
    """``EXCHANGE:SYMBOL`` (null when either is missing: a decode dead letter)."""
    exchange = pc.utf8_upper(pc.utf8_trim_whitespace(table.column("exchange")))
    return pc.binary_join_element_wise(
        exchange, pc.utf8_trim_whitespace(table.column("symbol")), ":"
    )


def detect(path: Path, header: Sequence[str]) -> FileLayout | None:
    names = tuple(h.strip().lower() for h in header)
    origin = {TRADES: TickOrigin.TRADE, QUOTES: TickOrigin.QUOTE}.get(names)
    if origin is None:
        return None
    title = "trades" if origin is TickOrigin.TRADE else "quotes"
    return FileLayout(
        name=f"Tardis.dev {title}",
        origin=origin,
        why=f"header {','.join(names)} (Tardis.dev {title} CSV; timestamp in µs; symbol "
        "EXCHANGE:SYMBOL)",
        columns=names,
        convert=_converter(origin),
        symbol_columns=("exchange", "symbol"),
        symbols_of=symbols_of,
    )


def _converter(origin: TickOrigin):
    def convert(batch: pa.RecordBatch) -> Converted:
        errors: dict[int, str] = {}
        cols = {
            "ts": epoch_ms(batch.column("timestamp"), "us", "timestamp", errors),
            "symbol": symbols_of(batch),
        }
        cols.update({f: batch.column(c) for f, c in FIELDS[origin].items()})
        if origin is TickOrigin.TRADE:
            side = batch.column("side")
            unknown = pc.equal(pc.utf8_lower(pc.utf8_trim_whitespace(side)), "unknown")
            cols["side"] = pc.if_else(unknown, pa.scalar(None, pa.string()), side)
        return Converted(internal_batch(origin, batch.num_rows, cols), errors)

    return convert
