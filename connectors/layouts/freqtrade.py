"""freqtrade candle files (``user_data/data/<exchange>/``), so FreqAI users replay what they
have, recognised by the file name ``PAIR-TIMEFRAME[-CANDLETYPE].EXT``.

======================  =====================================================================
format                  content (freqtrade's data handlers)
======================  =====================================================================
``.feather``            columns date (UTC timestamp), open, high, low, close, volume
``.parquet``            the same columns
``.json``, ``.json.gz``  a list of ``[ms since 1970, open, high, low, close, volume]``
======================  =====================================================================

They read as the candles layout, ``date`` being the candle's open time. The pair is
freqtrade's file form (``BTC_USDT``, futures ``BTC_USDT_USDT`` for ``BTC/USDT:USDT``); the
symbol is ``QT_SYMBOL_PREFIX`` + base + quote (``BINANCE:BTCUSDT``; futures keep their
settlement currency: ``BINANCE:BTCUSDT:USDT``). The candle length is the timeframe's (months
have no fixed length and are refused). Candle types: spot (no suffix) and ``futures``; mark,
index, premium-index and funding-rate series are not traded prices and are refused.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.layouts.base import (
    Converted,
    DamagedFile,
    FileLayout,
    InputFileError,
    LayoutOptions,
    Reader,
    check_types,
    epoch_ms,
    fixed_symbol,
    internal_batch,
    interval_ms,
    number,
)
from schemas.ticks import TickOrigin

NAME = re.compile(
    r"^(?P<pair>[A-Za-z0-9_\-]+)-(?P<tf>\d+(?:Mo|mo|[smhdwM]))"
    r"(?:-(?P<type>[A-Za-z_]+))?$"
)
SUFFIXES = (".feather", ".parquet", ".json.gz", ".json")
COLUMNS = ("date", "open", "high", "low", "close", "volume")
CANDLE_TYPES = {None: "spot", "spot": "spot", "futures": "futures"}
PATTERN = "PAIR-TIMEFRAME[-futures]"


def stem_of(path: Path) -> str | None:
    """The file name without a freqtrade extension (None for other files)."""
    name = path.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def pair_symbol(pair: str, prefix: str) -> str:
    """``BTC_USDT`` -> ``<prefix>BTCUSDT``; ``BTC_USDT_USDT`` -> ``<prefix>BTCUSDT:USDT``."""
    parts = pair.split("_")
    if len(parts) < 2:
        return prefix + pair
    settle = "_".join(parts[2:])
    return prefix + parts[0] + parts[1] + (f":{settle}" if settle else "")


def _name(path: Path, options: LayoutOptions) -> tuple[str, int] | None:
    """(symbol, candle ms) of a file named like freqtrade candles, else None."""
    stem = stem_of(path)
    m = NAME.match(stem or "")
    if stem is None or m is None:
        return None
    kind = CANDLE_TYPES.get(m["type"])
    if kind is None:
        raise InputFileError(
            f"{path}: freqtrade candle type {m['type']!r} is not a traded "
            "price series; replay spot or futures candles"
        )
    candle_ms = interval_ms(m["tf"])
    if candle_ms is None:
        raise InputFileError(
            f"{path}: freqtrade timeframe {m['tf']} has no fixed length; replay candles of 1s..1w"
        )
    return pair_symbol(m["pair"], options.symbol_prefix), candle_ms


def detect_table(
    path: Path, schema: pa.Schema, read: Reader, options: LayoutOptions
) -> FileLayout | None:
    """A Feather or Parquet file named like freqtrade candles (None if not so named)."""
    named = _name(path, options)
    if named is None:
        return None
    symbol, candle_ms = named
    names = [n.lower() for n in schema.names]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise InputFileError(
            f"{path}: named like freqtrade candles ({PATTERN}) but has no "
            f"{', '.join(missing)} column; its columns: {','.join(schema.names)[:120]}; "
            f"expected {','.join(COLUMNS)}"
        )
    date = schema.field(names.index("date")).type
    if pa.types.is_timestamp(date) and date.tz is None:
        raise InputFileError(
            f"{path}: its date column has no time zone; event times must be "
            "UTC (freqtrade writes them so)"
        )
    if not (pa.types.is_timestamp(date) or pa.types.is_integer(date)):
        raise InputFileError(f"{path}: its date column is {date}; expected a UTC timestamp")
    check_types(path, schema, {c: names.index(c) for c in COLUMNS[1:]})
    return FileLayout(
        name="freqtrade candles",
        origin=TickOrigin.CANDLE,
        why=f"file name {path.name} (freqtrade {PATTERN}), columns {','.join(COLUMNS)}; "
        f"symbol {symbol} (QT_SYMBOL_PREFIX + pair)",
        read=read,
        convert=_table_converter(schema.names, symbol),
        symbols=frozenset({symbol}),
        candle_ms=candle_ms,
    )


def _table_converter(names: list[str], symbol: str):
    index = {n.lower(): i for i, n in enumerate(names)}

    def convert(batch: pa.RecordBatch) -> Converted:
        errors: dict[int, str] = {}
        cols = {c: batch.column(index[c]) for c in COLUMNS[1:]}
        cols["ts"] = epoch_ms(batch.column(index["date"]), "ms", "date", errors)
        cols["symbol"] = fixed_symbol(symbol, batch.num_rows)
        return Converted(internal_batch(TickOrigin.CANDLE, batch.num_rows, cols), errors)

    return convert


# ---------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------


def detect_json(path: Path, options: LayoutOptions) -> FileLayout | None:
    named = _name(path, options)
    if named is None:
        return None
    symbol, candle_ms = named
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            head = f.read(64).lstrip()
    except (OSError, EOFError, zlib.error) as exc:
        raise InputFileError(f"{path}: cannot be read ({exc})") from None
    if not head.startswith(b"["):
        raise InputFileError(
            f"{path}: named like freqtrade candles ({PATTERN}) but is not a "
            "JSON list; expected [[ms, open, high, low, close, volume], ...]"
        )
    return FileLayout(
        name="freqtrade candles",
        origin=TickOrigin.CANDLE,
        why=f"file name {path.name} (freqtrade {PATTERN}), a JSON list of [ms, open, high, "
        f"low, close, volume]; symbol {symbol} (QT_SYMBOL_PREFIX + pair)",
        read=json_batches,
        convert=_json_converter(symbol),
        symbols=frozenset({symbol}),
        candle_ms=candle_ms,
    )


def _json_text(path: Path) -> tuple[bytes, DamagedFile | None]:
    """The file's bytes (gunzipped); a damaged gzip stream gives what it held before."""
    data = path.read_bytes()
    if not path.name.lower().endswith(".gz"):
        return data, None
    d = zlib.decompressobj(31)
    try:
        out = d.decompress(data)
    except zlib.error as exc:
        return b"", DamagedFile("corrupt", f"zlib: {exc}")
    if not d.eof:
        return out, DamagedFile("truncated", "the gzip stream ends before its end")
    return out, None


def _candles(text: bytes) -> tuple[list, DamagedFile | None]:
    """The list's entries; a list that breaks off gives the entries before the damage."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        pass
    else:
        if not isinstance(data, list):
            return [], DamagedFile("corrupt", "not a JSON list")
        return data, None
    return _salvage(text.decode("utf-8", errors="replace"))


def _skip_space(s: str, i: int) -> int:
    """The index of the first non-whitespace character of ``s`` at or after ``i``."""
    while i < len(s) and s[i] in " \t\r\n":
        i += 1
    return i


def _salvage(s: str) -> tuple[list, DamagedFile | None]:
    """A damaged JSON list read entry by entry: the entries before the damage, and what
    the damage is."""
    decoder = json.JSONDecoder()
    items: list = []
    i = len(s) - len(s.lstrip())
    if s[i : i + 1] != "[":
        return [], DamagedFile("corrupt", "not a JSON list")
    i += 1
    while True:
        i = _skip_space(s, i)
        if s[i : i + 1] == "]":
            return items, DamagedFile("corrupt", "unexpected data after the list")
        try:
            item, i = decoder.raw_decode(s, i)
        except json.JSONDecodeError as exc:
            what = "truncated" if exc.pos >= len(s.rstrip()) else "corrupt"
            return items, DamagedFile(what, f"json: {exc.msg}")
        items.append(item)
        i = _skip_space(s, i)
        if s[i : i + 1] == ",":
            i += 1
        elif i >= len(s):
            return items, DamagedFile("truncated", "json: the list ends before its ']'")
        elif s[i] != "]":
            return items, DamagedFile("corrupt", f"json: unexpected {s[i]!r}")


def _matrix(items: list) -> tuple[np.ndarray, np.ndarray]:
    """Entries -> (n x 6 floats, malformed-entry mask); NaN for a null value."""
    try:
        m = np.array(items, dtype=np.float64)
        if m.ndim == 2 and m.shape[1] == len(COLUMNS):
            return m, np.zeros(len(items), dtype=bool)
    except (ValueError, TypeError):
        pass
    m = np.full((len(items), len(COLUMNS)), np.nan)
    bad = np.zeros(len(items), dtype=bool)
    for i, row in enumerate(items):
        values = (
            [None if x is None else number(x) for x in row]
            if isinstance(row, list) and len(row) == len(COLUMNS)
            else None
        )
        if values is None or any(
            v is None and x is not None for v, x in zip(values, row, strict=True)
        ):
            bad[i] = True
            continue
        m[i] = [np.nan if v is None else v for v in values]
    return m, bad


def json_batches(path: Path, rows: int) -> Iterator[pa.RecordBatch]:
    """A freqtrade JSON file as batches of date (ms), open..volume (floats, null for a null
    value), and for a malformed entry its JSON text in ``_raw``; damage ends the batches with
    :class:`DamagedFile`."""
    text, damage = _json_text(path)
    items, broken = _candles(text) if text or damage is None else ([], None)
    damage = damage or broken
    for start in range(0, len(items), rows):
        chunk = items[start : start + rows]
        m, bad = _matrix(chunk)
        cols = [pa.array(m[:, k], mask=bad | np.isnan(m[:, k])) for k in range(len(COLUMNS))]
        raw = pa.array(
            [json.dumps(chunk[i])[:1000] if bad[i] else None for i in range(len(chunk))],
            type=pa.string(),
        )
        yield pa.RecordBatch.from_arrays([*cols, raw], names=[*COLUMNS, "_raw"])
    if damage is not None:
        raise damage


def _json_converter(symbol: str):
    def convert(batch: pa.RecordBatch) -> Converted:
        n = batch.num_rows
        errors: dict[int, str] = {}
        malformed = batch.column("_raw").is_valid().to_numpy(zero_copy_only=False)
        for i in np.flatnonzero(malformed):
            errors[int(i)] = f"not a row of the freqtrade candles layout ({len(COLUMNS)} numbers)"
        cols = {c: batch.column(c) for c in COLUMNS[1:]}
        cols["ts"] = epoch_ms(batch.column("date"), "ms", "date", errors)  # (floats here)
        cols["symbol"] = fixed_symbol(symbol, n)
        values = batch.select(list(COLUMNS))
        raw = values
        if malformed.any():
            joined = pc.binary_join_element_wise(
                *[pc.fill_null(c.cast(pa.string()), "") for c in values.columns], ","
            )
            raw = pa.RecordBatch.from_arrays(
                [pc.coalesce(batch.column("_raw"), joined)], names=["raw"]
            )
        return Converted(internal_batch(TickOrigin.CANDLE, n, cols), errors, raw)

    return convert
