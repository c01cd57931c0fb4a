"""Any other CSV, Parquet or Feather file, through a column mapping (``QT_TICKS_COLUMNS``).

The mapping names, for the fields of ONE internal layout, the file column that holds each::

    QT_TICKS_COLUMNS=ts=open_time,open=o,high=h,low=l,close=c,volume=v,symbol=@BTCUSDT

The layout follows from the fields: any of open/high/low/close/volume makes candles
(``price`` may name the close), any of bid/ask/bid_size/ask_size quotes, otherwise trades.
Required: ``ts`` and the prices (trades: price; quotes: bid, ask; candles: open, high, low,
close), and a symbol: ``symbol=<column>`` (values as they are) or ``symbol=@NAME`` (every
row). Fields left out are empty (no size, unknown side). A CSV needs a header line (its
names are what the mapping names); every other column is read as text and kept in a dead
letter's raw input.

``ts``: ``QT_TICKS_TS_UNIT`` (s, ms, us, ns since 1970, or ``iso``); ``auto`` tells it from
the first values' magnitude and says so, or stops with an error naming the file when they do
not say (see :func:`connectors.layouts.base.guess_unit`). Arrow timestamp columns (Parquet,
Feather) carry their unit and must carry a time zone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from connectors.layouts.base import (
    Converted,
    FileLayout,
    InputFileError,
    LayoutOptions,
    LayoutSettingError,
    Reader,
    UnitUnknown,
    check_types,
    epoch_ms,
    fixed_symbol,
    guess_unit,
    internal_batch,
)
from schemas.ticks import LAYOUTS, TickOrigin

SETTING = "QT_TICKS_COLUMNS"
CANDLE_ONLY = {"open", "high", "low", "close", "volume"}
QUOTE_ONLY = {"bid", "ask", "bid_size", "ask_size"}
REQUIRED = {
    TickOrigin.TRADE: ("ts", "price"),
    TickOrigin.QUOTE: ("ts", "bid", "ask"),
    TickOrigin.CANDLE: ("ts", "open", "high", "low", "close"),
}
SNIFF_ROWS = 20


def _field_pairs(spec: str) -> dict[str, str]:
    """``field=column,...`` -> {field: column}, in order; a malformed or repeated field is
    a setting error."""
    pairs: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        field_name, eq, column = (x.strip() for x in part.partition("="))
        field_name = field_name.lower()
        if not eq or not field_name or not column:
            raise LayoutSettingError(
                f"{SETTING}: {part!r} is not field=column (e.g. "
                "ts=open_time,price=close,symbol=@BTCUSDT)"
            )
        if field_name in pairs:
            raise LayoutSettingError(f"{SETTING}: {field_name} is mapped twice")
        pairs[field_name] = column
    return pairs


def _layout_of(fields: set[str]) -> TickOrigin:
    """The layout the mapped fields make: candles or quotes by their own fields (never
    both), else trades."""
    if fields & CANDLE_ONLY and fields & QUOTE_ONLY:
        raise LayoutSettingError(
            f"{SETTING}: {', '.join(sorted(fields & CANDLE_ONLY))} (candles) and "
            f"{', '.join(sorted(fields & QUOTE_ONLY))} (quotes) cannot be mapped together;"
            " map the fields of one layout"
        )
    return (
        TickOrigin.CANDLE
        if fields & CANDLE_ONLY
        else TickOrigin.QUOTE
        if fields & QUOTE_ONLY
        else TickOrigin.TRADE
    )


@dataclass(frozen=True)
class ColumnMap:
    """A parsed ``QT_TICKS_COLUMNS``: the internal layout, field -> file column, and the
    fixed symbol (when ``symbol=@NAME``)."""

    origin: TickOrigin
    columns: dict[str, str]
    symbol: str | None

    @classmethod
    def parse(cls, spec: str) -> ColumnMap:
        pairs = _field_pairs(spec)
        origin = _layout_of(set(pairs))
        if origin is TickOrigin.CANDLE and "price" in pairs:
            if "close" in pairs:
                raise LayoutSettingError(f"{SETTING}: price and close both name the candle close")
            pairs["close"] = pairs.pop("price")
        allowed = LAYOUTS[origin]
        unknown = [f for f in pairs if f not in allowed]
        if unknown:
            raise LayoutSettingError(
                f"{SETTING}: {', '.join(unknown)} is not a field of the {origin.value}s layout"
                f" the other fields make; its fields: {', '.join(allowed)}"
            )
        missing = [f for f in (*REQUIRED[origin], "symbol") if f not in pairs]
        if missing:
            raise LayoutSettingError(
                f"{SETTING}: the {origin.value}s layout needs {', '.join(missing)} "
                "(symbol=<column>, or symbol=@NAME for one symbol)"
            )
        symbol = pairs["symbol"][1:].strip() if pairs["symbol"].startswith("@") else None
        if symbol == "":
            raise LayoutSettingError(f"{SETTING}: symbol=@ needs a name (symbol=@BTCUSDT)")
        if symbol is not None:
            del pairs["symbol"]
        return cls(origin, pairs, symbol)

    def describe(self) -> str:
        parts = [f"{f}={c}" for f, c in self.columns.items()]
        return ",".join(parts + ([f"symbol=@{self.symbol}"] if self.symbol else []))


def _check_columns(path: Path, cmap: ColumnMap, names: Sequence[str]) -> dict[str, int]:
    """field -> index of its column in ``names``; a column the file lacks is an error."""
    index: dict[str, int] = {}
    lowered = [n.lower() for n in names]
    for field_name, column in cmap.columns.items():
        if column in names:
            index[field_name] = list(names).index(column)
        elif column.lower() in lowered:
            index[field_name] = lowered.index(column.lower())
        else:
            raise InputFileError(
                f"{path}: {SETTING} maps {field_name} to column {column!r}, which the file "
                f"does not have; its columns: {','.join(names)[:160]}"
            )
    return index


def _unit(path: Path, options: LayoutOptions, column: str, samples: Sequence[object]) -> str:
    unit = options.ts_unit.strip().lower()
    if unit != "auto":
        return unit
    try:
        return guess_unit(samples) or "ms"
    except UnitUnknown as exc:
        raise InputFileError(
            f"{path}: cannot tell the unit of the ts column {column!r} from its first values: "
            f"{exc}; set QT_TICKS_TS_UNIT to s, ms, us, ns or iso"
        ) from None


def detect_csv(
    path: Path, header: Sequence[str], lines: Sequence[str], options: LayoutOptions
) -> FileLayout | None:
    """A CSV with a header, read through ``QT_TICKS_COLUMNS`` (None when it is not set)."""
    if not options.columns.strip():
        return None
    cmap = ColumnMap.parse(options.columns)
    names = tuple(h.strip() for h in header)
    index = _check_columns(path, cmap, names)
    at = index["ts"]
    samples = [
        row[at]
        for row in (ln.split(",") for ln in lines[1 : SNIFF_ROWS + 1])
        if len(row) == len(names)
    ]
    unit = _unit(path, options, names[at], samples)
    return _layout(path, cmap, names, index, unit, "header", read=None)


def detect_table(
    path: Path, schema: pa.Schema, read: Reader, options: LayoutOptions
) -> FileLayout | None:
    """A Parquet or Feather file read through ``QT_TICKS_COLUMNS`` (None when not set)."""
    if not options.columns.strip():
        return None
    cmap = ColumnMap.parse(options.columns)
    names = tuple(schema.names)
    index = _check_columns(path, cmap, names)
    check_types(path, schema, index)
    ts_type = schema.field(index["ts"]).type
    if pa.types.is_timestamp(ts_type):
        if ts_type.tz is None:
            raise InputFileError(
                f"{path}: the ts column {names[index['ts']]!r} is a timestamp "
                "without time zone; event times must be UTC: store it with "
                "tz=UTC"
            )
        unit = "timestamp"
    else:
        first = next(iter(read(path, SNIFF_ROWS)), None)
        samples = [] if first is None else first.column(index["ts"]).to_pylist()
        unit = _unit(path, options, names[index["ts"]], samples)
    return _layout(path, cmap, names, index, unit, "columns", read=read)


def _layout(
    path: Path,
    cmap: ColumnMap,
    names: tuple[str, ...],
    index: dict[str, int],
    unit: str,
    what: str,
    read: Reader | None,
) -> FileLayout:
    told = "QT_TICKS_TS_UNIT" if unit != "timestamp" else "the column type"
    why = (
        f"{SETTING}={cmap.describe()} over its {what} "
        f"({','.join(names)[:100]}); ts as {unit} ({told})"
    )
    symbols: frozenset[str] | None = None
    symbol_columns: tuple[str, ...] = ()
    if cmap.symbol is not None:
        symbols = frozenset({cmap.symbol})
    else:
        symbol_columns = (names[index["symbol"]],)

    def symbols_of(table: pa.Table) -> pa.Array:
        return table.column(0)

    return FileLayout(
        name=f"mapped {cmap.origin.value}s",
        origin=cmap.origin,
        why=why,
        columns=names if read is None else (),
        convert=_converter(cmap, names, index, unit),
        read=read,
        symbols=symbols,
        symbol_columns=symbol_columns,
        symbols_of=symbols_of,
    )


def _converter(cmap: ColumnMap, names: tuple[str, ...], index: dict[str, int], unit: str):
    ts_name = names[index["ts"]]

    def convert(batch: pa.RecordBatch) -> Converted:
        errors: dict[int, str] = {}
        cols = {f: batch.column(i) for f, i in index.items()}
        cols["ts"] = epoch_ms(cols["ts"], "ms" if unit == "timestamp" else unit, ts_name, errors)
        if cmap.symbol is not None:
            cols["symbol"] = fixed_symbol(cmap.symbol, batch.num_rows)
        return Converted(internal_batch(cmap.origin, batch.num_rows, cols), errors)

    return convert
