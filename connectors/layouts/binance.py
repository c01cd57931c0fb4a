"""Binance public data (https://data.binance.vision), recognised by the file name.

=====================================  ==========  ===========================================
file name (``.csv``, or ``.zip``       internal    columns (binance/binance-public-data
holding that ``.csv``)                 layout      README and the files' own headers)
=====================================  ==========  ===========================================
``SYMBOL-INTERVAL-YYYY-MM[-DD]``       candles     open_time, open, high, low, close, volume,
(klines, e.g. ``BTCUSDT-1m-...``)                  close_time, quote_volume, count,
                                                   taker_buy_volume, taker_buy_quote_volume,
                                                   ignore
``SYMBOL-trades-YYYY-MM[-DD]``         trades      id, price, qty, quote_qty, time,
                                                   is_buyer_maker[, is_best_match]
``SYMBOL-aggTrades-YYYY-MM[-DD]``      trades      agg_trade_id, price, quantity,
                                                   first_trade_id, last_trade_id,
                                                   transact_time, is_buyer_maker[,
                                                   is_best_match]
``SYMBOL-bookTicker-YYYY-MM[-DD]``     quotes      update_id, best_bid_price, best_bid_qty,
                                                   best_ask_price, best_ask_qty,
                                                   transaction_time, event_time
=====================================  ==========  ===========================================

The optional last columns are spot's (futures files lack ``is_best_match``; COIN-M trades
call ``quote_qty`` ``base_qty``, which is not read). Older files have no header line, newer
ones do: a first line whose first field is not a number is a header, and its names must be
Binance's where a column is read. Times are milliseconds, except spot data from 2025-01-01
on, which is in microseconds: the unit is told per file from the magnitude of its first
times. The symbol is ``QT_SYMBOL_PREFIX`` + the file name's (``BINANCE:BTCUSDT``); a
kline's length is the file name's interval (``1mo`` has no fixed length and is refused). The
aggressor of a trade comes from ``is_buyer_maker``: a buyer that was the maker means the
taker sold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from connectors.layouts.base import (
    Converted,
    FileLayout,
    InputFileError,
    LayoutOptions,
    UnitUnknown,
    epoch_ms,
    fixed_symbol,
    guess_unit,
    internal_batch,
    interval_ms,
    maker_side,
)
from schemas.ticks import TickOrigin

NAME = re.compile(
    r"^(?P<symbol>[A-Za-z0-9_]+)-(?P<kind>trades|aggTrades|bookTicker|"
    r"\d+(?:s|m|h|d|w|mo))-(?P<date>\d{4}-\d{2}(?:-\d{2})?)$"
)
SNIFF_ROWS = 20  # first data rows whose times decide the unit


@dataclass(frozen=True)
class Kind:
    """One kind of Binance file: its columns (by field count), where its time is, and which
    column fills each internal field."""

    title: str
    origin: TickOrigin
    variants: dict[int, tuple[str, ...]]
    time: str
    fields: dict[str, str]
    maker: str | None = None  # the is_buyer_maker column (trades)


KLINES = Kind(
    "klines",
    TickOrigin.CANDLE,
    {
        12: (
            "open_time",
            "open",
            "high",
            "low",
            "close",
            "volume",
            "close_time",
            "quote_volume",
            "count",
            "taker_buy_volume",
            "taker_buy_quote_volume",
            "ignore",
        )
    },
    "open_time",
    {"open": "open", "high": "high", "low": "low", "close": "close", "volume": "volume"},
)
_TRADES = ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker")
TRADES = Kind(
    "trades",
    TickOrigin.TRADE,
    {7: (*_TRADES, "is_best_match"), 6: _TRADES},
    "time",
    {"price": "price", "size": "qty"},
    maker="is_buyer_maker",
)
_AGG = (
    "agg_trade_id",
    "price",
    "quantity",
    "first_trade_id",
    "last_trade_id",
    "transact_time",
    "is_buyer_maker",
)
AGG_TRADES = Kind(
    "aggTrades",
    TickOrigin.TRADE,
    {8: (*_AGG, "is_best_match"), 7: _AGG},
    "transact_time",
    {"price": "price", "size": "quantity"},
    maker="is_buyer_maker",
)
BOOK_TICKER = Kind(
    "bookTicker",
    TickOrigin.QUOTE,
    {
        7: (
            "update_id",
            "best_bid_price",
            "best_bid_qty",
            "best_ask_price",
            "best_ask_qty",
            "transaction_time",
            "event_time",
        )
    },
    "transaction_time",
    {
        "bid": "best_bid_price",
        "bid_size": "best_bid_qty",
        "ask": "best_ask_price",
        "ask_size": "best_ask_qty",
    },
)
KINDS = {k.title: k for k in (TRADES, AGG_TRADES, BOOK_TICKER)}


def _is_int(text: str) -> bool:
    return text.strip().lstrip("-").isdigit()


def detect(path: Path, stem: str, lines: list[str], options: LayoutOptions) -> FileLayout | None:
    """The layout of a file named like Binance public data (None if it is not); a file so
    named whose content does not fit is an :class:`InputFileError`."""
    m = NAME.match(stem)
    if m is None:
        return None
    kind = KINDS.get(m["kind"], KLINES)
    candle_ms = None
    if kind is KLINES:
        candle_ms = interval_ms(m["kind"])
        if candle_ms is None:
            raise InputFileError(
                f"{path}: Binance klines of interval {m['kind']} have no fixed "
                "length; replay klines of 1s..1w"
            )
    pattern = f"SYMBOL-{'INTERVAL' if kind is KLINES else kind.title}-DATE"
    fields = [f.strip() for f in lines[0].split(",")]
    columns = kind.variants.get(len(fields))
    expected = " or ".join(",".join(c) for c in kind.variants.values())
    if columns is None:
        raise InputFileError(
            f"{path}: named like Binance {kind.title} ({pattern}) but its first line has "
            f"{len(fields)} fields; expected {expected}"
        )
    header = not _is_int(fields[0])
    used = [kind.time, *kind.fields.values(), *([kind.maker] if kind.maker else [])]
    if header:
        names = [f.lower() for f in fields]
        wrong = [c for c in used if names[columns.index(c)] != c]
        if wrong:
            raise InputFileError(
                f"{path}: named like Binance {kind.title} ({pattern}) but its header "
                f"{lines[0][:120]!r} has no {', '.join(wrong)} where Binance's has; expected "
                f"{expected}"
            )
    at = columns.index(kind.time)
    samples = [
        ln.split(",")[at]
        for ln in lines[1 if header else 0 :][:SNIFF_ROWS]
        if ln.count(",") == len(columns) - 1
    ]
    try:
        unit = guess_unit(samples, ("ms", "us"), iso=False) or "ms"
    except UnitUnknown as exc:
        raise InputFileError(
            f"{path}: Binance {kind.title}: cannot tell the unit of "
            f"{kind.time}: {exc}; expected milliseconds or microseconds since "
            "1970"
        ) from None
    symbol = options.symbol_prefix + m["symbol"]
    why = (
        f"file name {stem} (data.binance.vision {kind.title}: {pattern}), "
        f"{len(columns)} fields, {'a header' if header else 'no header'}, {kind.time} in "
        f"{'µs' if unit == 'us' else 'ms'}; symbol {symbol} (QT_SYMBOL_PREFIX + file name)"
    )
    return FileLayout(
        name=f"Binance {kind.title}",
        origin=kind.origin,
        why=why,
        columns=columns,
        header=header,
        convert=_converter(kind, unit, symbol),
        symbols=frozenset({symbol}),
        candle_ms=candle_ms,
    )


def _converter(kind: Kind, unit: str, symbol: str):
    def convert(batch: pa.RecordBatch) -> Converted:
        errors: dict[int, str] = {}
        n = batch.num_rows
        cols = {
            "ts": epoch_ms(batch.column(kind.time), unit, kind.time, errors),
            "symbol": fixed_symbol(symbol, n),
        }
        cols.update({f: batch.column(c) for f, c in kind.fields.items()})
        if kind.maker:
            cols["side"] = maker_side(batch.column(kind.maker), kind.maker, errors)
        return Converted(internal_batch(kind.origin, n, cols), errors)

    return convert
