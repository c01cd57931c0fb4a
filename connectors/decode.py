"""Decoding input rows into :class:`~schemas.ticks.TickRows`: Arrow string columns (CSV and
Parquet files, :mod:`connectors.replay`) and JSON messages (Kafka, :mod:`connectors.kafka`).

A value that does not parse is not dropped: its row gets a decode error (the reason a
dead letter will carry) and keeps its raw text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import codec
from schemas.ticks import (
    MS_MAX,
    MS_MIN,
    NAN,
    ORIGIN_CODE,
    SIDE_CODE,
    SIZE_MAX,
    TS_MISSING,
    Tick,
    TickOrigin,
    TickRows,
)
from schemas.timeutil import to_ms


def _overflow(text: str) -> bool:
    """Whether ``text``, which parsed to an infinity, is a finite-looking number (``1e309``)
    rather than an infinity literal (``inf``, ``-Infinity``)."""
    return "inf" not in text.lower()


def _record_missing(col: pa.Array, name: str, errors: dict[int, str]) -> None:
    """Record ``missing <name>`` for each null cell of a required column."""
    for missing in np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False)).tolist():
        errors.setdefault(missing, f"missing {name}")


def _floats_by_value(col: pa.Array, name: str, errors: dict[int, str]) -> np.ndarray:
    """Fallback when Arrow cannot cast the whole column: parse cell by cell, so each bad
    cell gets its own reason instead of failing the batch."""
    values = col.to_pylist()
    arr = np.full(len(values), NAN)
    for i, v in enumerate(values):
        if v is None:
            continue
        try:
            arr[i] = float(v)
        except ValueError:
            errors.setdefault(i, f"unparseable {name}: {v[:40]!r}")
            continue
        if math.isinf(arr[i]) and _overflow(v):
            errors.setdefault(i, f"numeric overflow in {name}: {v.strip()[:40]!r}")
    return arr


def _record_overflow(col: pa.Array, arr: np.ndarray, name: str, errors: dict[int, str]) -> None:
    """Tell ``1e309`` (overflow, an error) from an ``inf`` literal (a value) among the
    infinities of ``arr``; only the (rare) infinite cells' texts are looked at."""
    inf = np.flatnonzero(np.isinf(arr))
    if len(inf):
        texts = col.take(pa.array(inf)).to_pylist()
        for i, v in zip(inf.tolist(), texts, strict=True):
            if v is not None and _overflow(v):
                errors.setdefault(i, f"numeric overflow in {name}: {v.strip()[:40]!r}")


def _floats(col: pa.Array, name: str, errors: dict[int, str], required: bool) -> np.ndarray:
    """Column -> float64 with NaN for empty; unparseable (or missing required) cells are
    recorded in ``errors``, and so is a number too large for a float (``1e309``: "numeric
    overflow"; an ``inf`` literal stays a value, for validation to call non-finite)."""
    if required and col.null_count:
        _record_missing(col, name, errors)
    if pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
        return pc.fill_null(col.cast(pa.float64()), NAN).to_numpy(zero_copy_only=False)
    try:
        out = pc.cast(col, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _floats_by_value(col, name, errors)
    arr = pc.fill_null(out, NAN).to_numpy(zero_copy_only=False)
    _record_overflow(col, arr, name, errors)
    return arr


def _epoch_ms(col: pa.Array, errors: dict[int, str]) -> np.ndarray:
    """Integer epoch milliseconds; values no datetime can hold are recorded and blanked."""
    out = pc.fill_null(col.cast(pa.int64()), TS_MISSING).to_numpy(zero_copy_only=False)
    far = np.flatnonzero((out != TS_MISSING) & ((out < MS_MIN) | (out > MS_MAX)))
    for i in far.tolist():
        errors.setdefault(i, f"ts out of range (cannot be represented): {int(out[i])} ms")
    if len(far):
        out = out.copy()
        out[far] = TS_MISSING
    return out


def _arrow_ts_ms(col: pa.Array) -> np.ndarray:
    """Arrow timestamps -> epoch ms; a naive column is refused (event times must be UTC)."""
    if col.type.tz is None:
        raise ValueError("timestamp column has no time zone; event times must be UTC")
    ms = pc.cast(col, pa.timestamp("ms", tz="UTC"), safe=False).cast(pa.int64())
    return pc.fill_null(ms, TS_MISSING).to_numpy(zero_copy_only=False)


def _iso_ms_by_value(col: pa.Array, errors: dict[int, str]) -> np.ndarray:
    """Fallback when Arrow cannot cast the whole column: parse cell by cell, so each bad
    cell gets its own reason instead of failing the batch."""
    out = np.full(len(col), TS_MISSING, dtype=np.int64)
    for i, v in enumerate(col.to_pylist()):
        if v is None:
            continue
        try:
            dt = datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
        except ValueError:
            errors.setdefault(i, f"unparseable ts: {v[:40]!r}")
            continue
        if dt.tzinfo is None:
            errors.setdefault(i, f"ts without UTC offset: {v[:40]!r}")
            continue
        try:
            out[i] = to_ms(dt)
        except OverflowError:
            errors.setdefault(i, f"ts out of range (cannot be represented): {v[:40]!r}")
    return out


def _iso_ms(col: pa.Array, errors: dict[int, str]) -> np.ndarray:
    """ISO-8601 strings -> epoch ms, vectorised in Arrow when the whole column parses."""
    try:
        ns = pc.cast(col, pa.timestamp("ns", tz="UTC")).cast(pa.int64())
        return pc.fill_null(
            pc.floor(pc.divide(ns, 1_000_000)).cast(pa.int64()), TS_MISSING
        ).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _iso_ms_by_value(col, errors)


def _timestamps(col: pa.Array, errors: dict[int, str]) -> np.ndarray:
    """ISO-8601 with a UTC offset (or Arrow timestamps) -> epoch ms; others recorded."""
    if pa.types.is_integer(col.type):  # epoch milliseconds
        out = _epoch_ms(col, errors)
    elif pa.types.is_timestamp(col.type):
        out = _arrow_ts_ms(col)
    else:
        out = _iso_ms(col, errors)
    for missing in np.flatnonzero(out == TS_MISSING).tolist():
        errors.setdefault(missing, "missing ts")
    return out


def _sides(col: pa.Array, errors: dict[int, str]) -> np.ndarray:
    codes = np.zeros(len(col), dtype=np.int8)
    enc = pc.dictionary_encode(pc.utf8_lower(pc.utf8_trim_whitespace(col.cast(pa.string()))))
    for k, name in enumerate(enc.dictionary.to_pylist()):
        rows = np.flatnonzero(pc.equal(enc.indices, k).to_numpy(zero_copy_only=False))
        if name in ("buy", "b"):
            codes[rows] = 1
        elif name in ("sell", "s"):
            codes[rows] = -1
        elif name != "":
            for i in rows:
                errors.setdefault(int(i), f"unknown side {name[:20]!r}")
    return codes


def _symbols(col: pa.Array, errors: dict[int, str]) -> np.ndarray:
    trimmed = pc.utf8_trim_whitespace(col.cast(pa.string()))
    out = np.asarray(pc.fill_null(trimmed, "").to_numpy(zero_copy_only=False), dtype=object)
    for i in np.flatnonzero(out == ""):
        errors.setdefault(int(i), "missing symbol")
    return out


def decode_table(
    batch: pa.RecordBatch, origin: TickOrigin, source: str, first_row: int, candle_ms: int
) -> TickRows:
    """Decode one block of a file in a known layout into :class:`TickRows`."""
    n = batch.num_rows
    errors: dict[int, str] = {}
    col = {name.strip().lower(): batch.column(i) for i, name in enumerate(batch.schema.names)}
    ts = _timestamps(col["ts"], errors)
    symbol = _symbols(col["symbol"], errors)
    nan = np.full(n, NAN)
    candle = None
    side = np.zeros(n, dtype=np.int8)
    if origin is TickOrigin.TRADE:
        price = _floats(col["price"], "price", errors, True)
        size = _floats(col["size"], "size", errors, False)
        side = _sides(col["side"], errors)
        bid = ask = nan
    elif origin is TickOrigin.QUOTE:
        bid = _floats(col["bid"], "bid", errors, True)
        ask = _floats(col["ask"], "ask", errors, True)
        with np.errstate(over="ignore"):  # absurd quotes: validation names their range
            price = (bid + ask) / 2.0
        size = nan
        for name in ("bid_size", "ask_size"):
            sizes = _floats(col[name], name, errors, False)
            for i in np.flatnonzero(sizes < 0):
                errors.setdefault(int(i), f"negative {name}")
            for i in np.flatnonzero(sizes > SIZE_MAX):
                errors.setdefault(int(i), f"{name} outside the sane range (above {SIZE_MAX:g})")
    else:
        candle = (
            _floats(col["open"], "open", errors, True),
            _floats(col["high"], "high", errors, True),
            _floats(col["low"], "low", errors, True),
        )
        price = _floats(col["close"], "close", errors, True)
        size = _floats(col["volume"], "volume", errors, False)
        bid = ask = nan
        ok = ts != TS_MISSING
        ts = np.where(ok, ts + (candle_ms - 1), ts)
    return TickRows(
        sources=(source,),
        src=np.zeros(n, dtype=np.int16),
        row_no=np.arange(first_row, first_row + n, dtype=np.int64),
        ts_ms=ts,
        symbol=symbol,
        origin=np.full(n, ORIGIN_CODE[origin], dtype=np.int8),
        price=price,
        bid=bid,
        ask=ask,
        size=size,
        side=side,
        candle=candle,
        errors=errors,
        raw_batch=batch,
    )


def decode_messages(values: Sequence[bytes | None], source: str, row_no: Sequence[int]) -> TickRows:
    """Decode Kafka JSON tick messages; a bad message becomes a row with an error."""
    n = len(values)
    ts = np.full(n, TS_MISSING, dtype=np.int64)
    symbol = np.full(n, "", dtype=object)
    origin = np.zeros(n, dtype=np.int8)
    cols = {k: np.full(n, NAN) for k in ("price", "bid", "ask", "size", "open", "high", "low")}
    side = np.zeros(n, dtype=np.int8)
    errors: dict[int, str] = {}
    raw: list[str] = []
    any_candle = False
    for i, value in enumerate(values):
        text = b"" if value is None else value
        raw.append(text.decode("utf-8", errors="replace"))
        try:
            tick = Tick.from_json(text)
        except codec.SchemaError as exc:
            errors[i] = str(exc)[:200]
            continue
        except OverflowError:  # a time whose UTC offset takes it past year 1 or 9999
            ts_text = _json_literal(raw[i], "ts") or "?"
            errors[i] = f"ts out of range (cannot be represented): {ts_text[:40]}"
            continue
        ts[i] = to_ms(tick.ts)
        symbol[i] = tick.symbol.strip()
        origin[i] = ORIGIN_CODE[tick.origin]
        side[i] = SIDE_CODE[tick.side]
        for k, arr in cols.items():
            arr[i] = getattr(tick, k)
            if math.isinf(arr[i]):
                literal = _json_literal(raw[i], k)
                if literal is not None and _overflow(literal):
                    errors.setdefault(i, f"numeric overflow in {k}: {literal[:40]!r}")
        if tick.origin is TickOrigin.QUOTE and math.isnan(tick.price):
            cols["price"][i] = (tick.bid + tick.ask) / 2.0
        any_candle |= tick.origin is TickOrigin.CANDLE
        if not symbol[i]:
            errors[i] = "missing symbol"
    return TickRows(
        sources=(source,),
        src=np.zeros(n, dtype=np.int16),
        row_no=np.asarray(row_no, dtype=np.int64),
        ts_ms=ts,
        symbol=symbol,
        origin=origin,
        price=cols["price"],
        bid=cols["bid"],
        ask=cols["ask"],
        size=cols["size"],
        side=side,
        candle=(cols["open"], cols["high"], cols["low"]) if any_candle else None,
        errors=errors,
        raw_text=raw,
    )


def _json_literal(text: str, key: str) -> str | None:
    """The raw text of ``key``'s value in a flat JSON object (for error messages)."""
    m = re.search(rf'"{re.escape(key)}"\s*:\s*("[^"]*"|[^,}}\s]+)', text)
    return None if m is None else m[1].strip('"')


def tick_rows_from_ticks(ticks: Sequence[Tick], source: str = "memory") -> TickRows:
    """Build :class:`TickRows` from Tick objects (tests, in-process feeds)."""
    return decode_messages([t.to_json() for t in ticks], source, range(len(ticks)))
