"""What a detected file layout is, and the conversions the foreign layouts share.

A :class:`FileLayout` says how to read one file (CSV columns and whether it has a header, or
a reader of record batches for table formats) and how each batch becomes a batch of one of
the three internal layouts (``schemas.ticks.LAYOUTS``), which ``decode_table`` decodes. So
every layout shares one decoder, one validation, one dead-letter and recovery accounting.

Event times: every foreign layout turns its times into epoch milliseconds here
(:func:`epoch_ms`), truncated like the files of ``../shared/data`` (a microsecond time keeps
its millisecond). A unit is told from the magnitude of a file's first values
(:func:`guess_unit`): the epoch times of 1990..2100 in s, ms, us and ns lie in ranges far
apart (a factor of 150 between them), so a value names its unit or fits none.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as pa_feather
import pyarrow.parquet as pq

from errors import UserError
from schemas.ticks import LAYOUTS, TickOrigin

if TYPE_CHECKING:
    from settings import Settings


class InputFileError(UserError, ValueError):
    """An input file that cannot be replayed at all (the message names it)."""


class LayoutSettingError(UserError, ValueError):
    """``QT_TICKS_COLUMNS`` or ``QT_TICKS_TS_UNIT`` cannot be used (the message says why)."""


class DamagedFile(Exception):
    """A table-format file that cannot be read on from some row: ``what`` is "truncated" or
    "corrupt"; the rows before it replay, the rest is one dead letter."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what}: {detail}")
        self.what = what
        self.detail = detail


TS_UNITS = ("auto", "s", "ms", "us", "ns", "iso")


@dataclass(frozen=True)
class LayoutOptions:
    """The settings that steer layout detection (see ``settings.py`` for their docs)."""

    symbol_prefix: str
    columns: str
    ts_unit: str

    def __post_init__(self) -> None:
        if self.ts_unit.strip().lower() not in TS_UNITS:
            raise LayoutSettingError(
                f"QT_TICKS_TS_UNIT={self.ts_unit!r}: expected one of {', '.join(TS_UNITS)}"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> LayoutOptions:
        return cls(settings.symbol_prefix, settings.ticks_columns, settings.ticks_ts_unit)

    @classmethod
    def from_env(cls) -> LayoutOptions:
        """The ``QT_*`` environment's options (what a source gets when not told)."""
        from settings import Settings

        return cls.from_settings(Settings.from_env())


class Converted(NamedTuple):
    """One batch of a file in an internal layout, the rows it could not convert (row index ->
    reason, a decode dead letter) and, when the file's own columns do not spell a row's input
    (JSON), the raw text to keep with a dead letter."""

    batch: pa.RecordBatch
    errors: dict[int, str]
    raw: pa.RecordBatch | None = None


Converter = Callable[[pa.RecordBatch], Converted]
Reader = Callable[[Path, int], Iterator[pa.RecordBatch]]  # (path, rows per batch)
SymbolsOf = Callable[[pa.Table], pa.Array]


def symbol_column(table: pa.Table) -> pa.Array:
    return table.column("symbol")


@dataclass(frozen=True)
class FileLayout:
    """How to read one file and turn it into the internal ``origin`` layout.

    ``name`` names the layout in messages ("quotes", "Binance klines"); ``why`` says how it was
    recognised (``python -m cli.inspect``). CSV: ``columns`` are the names given to the
    file's fields (all read as text) and ``header`` whether its first line is a header. Table
    formats: ``read`` yields its record batches. ``convert`` is None when the batches are
    already an internal layout. Symbols: ``symbols`` when the file name or a setting fixes
    them, else ``symbols_of`` over the ``symbol_columns`` (for grouping files that share a
    symbol). ``candle_ms``: the candle length the file names (else ``QT_CANDLE_SECONDS``).
    """

    name: str
    origin: TickOrigin
    why: str
    columns: tuple[str, ...] = ()
    header: bool = True
    convert: Converter | None = None
    read: Reader | None = None
    symbols: frozenset[str] | None = None
    symbol_columns: tuple[str, ...] = ("symbol",)
    symbols_of: SymbolsOf = symbol_column
    candle_ms: int | None = None


# ---------------------------------------------------------------------------------------------
# Building internal batches
# ---------------------------------------------------------------------------------------------


def internal_batch(origin: TickOrigin, n: int, cols: Mapping[str, pa.Array]) -> pa.RecordBatch:
    """A batch in ``origin``'s internal layout; fields not given are empty (null)."""
    names = list(LAYOUTS[origin])
    return pa.RecordBatch.from_arrays(
        [cols[c] if c in cols else pa.nulls(n, pa.string()) for c in names], names=names
    )


def fixed_symbol(symbol: str, n: int) -> pa.Array:
    return pa.repeat(symbol, n)


def maker_side(col: pa.Array, name: str, errors: dict[int, str]) -> pa.Array:
    """Binance's ``is_buyer_maker`` -> the aggressor: a maker buyer means the taker sold."""
    flag = pc.utf8_lower(pc.utf8_trim_whitespace(col.cast(pa.string())))
    side = pc.if_else(
        pc.equal(flag, "true"), "sell", pc.if_else(pc.equal(flag, "false"), "buy", "")
    )
    bad = pc.and_kleene(
        pc.invert(pc.is_in(flag, pa.array(["true", "false", ""]))), pc.is_valid(flag)
    )
    for i in np.flatnonzero(bad.to_numpy(zero_copy_only=False)):
        errors.setdefault(int(i), f"unparseable {name}: {str(col[int(i)].as_py())[:40]!r}")
    return side


# ---------------------------------------------------------------------------------------------
# Event times
# ---------------------------------------------------------------------------------------------

_YEAR_1990, _YEAR_2100 = 631_152_000, 4_102_444_800  # epoch seconds
UNIT_SCALE = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}  # per second
UNIT_NAME = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
_INT64_MAX = 2**63 - 1


class UnitUnknown(ValueError):
    """The first values of a time column do not tell its unit (the message says why)."""


def _unit_fits(value: float, units: Sequence[str]) -> str | None:
    for unit in units:
        k = UNIT_SCALE[unit]
        if _YEAR_1990 * k <= value < _YEAR_2100 * k:
            return unit
    return None


def number(value: object) -> float | None:
    """A finite number from a JSON value or text, else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        out = float(str(value).strip())
    except ValueError:
        return None
    return out if math.isfinite(out) else None


def _iso(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None


def guess_unit(
    samples: Sequence[object], units: Sequence[str] = ("s", "ms", "us", "ns"), iso: bool = True
) -> str | None:
    """The unit of a time column from its first values: the numbers must be times between
    1990 and 2100 in one of ``units``, all in the same one (a minority that fits none, rows
    that will be dead letters, does not stop it); text must be ISO-8601 with a UTC offset
    ("iso", when allowed). None when there is no value to judge; :class:`UnitUnknown` when the
    values do not say (with the values that show why)."""
    texts = [s for s in samples if s is not None and str(s).strip()]
    if not texts:
        return None
    numbers = [(s, v) for s in texts if (v := number(s)) is not None]
    if not numbers:
        return _iso_unit(texts, iso)
    return _number_unit(numbers, units)


def _iso_unit(texts: Sequence[object], iso: bool) -> str:
    """The unit "iso" when every (non-numeric) sample is ISO-8601 with a UTC offset; otherwise
    :class:`UnitUnknown` naming the first sample that is not."""
    if not iso:
        raise UnitUnknown(f"{str(texts[0])[:40]!r} is not a number")
    for text in texts:
        dt = _iso(str(text))
        if dt is None:
            raise UnitUnknown(f"{str(text)[:40]!r} is neither a number nor an ISO-8601 time")
        if dt.tzinfo is None:
            raise UnitUnknown(
                f"ISO-8601 time {str(text)[:40]!r} has no UTC offset (event "
                "times must be UTC: add 'Z' or '+00:00')"
            )
    return "iso"


def _number_unit(numbers: Sequence[tuple[object, float]], units: Sequence[str]) -> str:
    """The one unit in ``units`` the numbers fit, tolerating a minority that fits none;
    :class:`UnitUnknown` when they fit several or too few fit any."""
    fits: dict[str, str] = {}
    misfits: list[str] = []
    for text, value in numbers:
        unit = _unit_fits(value, units)
        if unit is None:
            misfits.append(str(text).strip())
        else:
            fits.setdefault(unit, str(text).strip())
    if len(fits) > 1:
        shown = ", ".join(f"{v} in {u}" for u, v in fits.items())
        raise UnitUnknown(f"the values fit different units ({shown})")
    if not fits or 2 * len(misfits) > len(numbers):  # a damaged row or two may not fit
        raise UnitUnknown(
            f"{misfits[0][:40]} is no time between 1990 and 2100 in any of "
            f"{', '.join(units)} since 1970"
        )
    return next(iter(fits))


def epoch_ms(col: pa.Array, unit: str, name: str, errors: dict[int, str]) -> pa.Array:
    """A time column in ``unit`` -> epoch milliseconds (int64, null where it has no value or
    none could be read: ``errors`` says why). ISO text and Arrow timestamps pass through for
    ``decode_table``, which reads them."""
    if unit == "iso" or pa.types.is_timestamp(col.type):
        return col
    scale = UNIT_SCALE[unit]
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_integer(col.type):
        return _ints_to_ms(
            pc.fill_null(col.cast(pa.int64()), 0).to_numpy(), valid, scale, name, errors
        )
    if pa.types.is_floating(col.type):
        return _floats_to_ms(
            pc.fill_null(col.cast(pa.float64()), 0.0).to_numpy(), valid, scale, name, errors
        )
    text = col.cast(pa.string())
    try:
        ints = pc.cast(text, pa.int64())
    except pa.ArrowInvalid:
        pass
    else:
        return _ints_to_ms(pc.fill_null(ints, 0).to_numpy(), valid, scale, name, errors)
    try:
        floats = pc.cast(text, pa.float64())
    except pa.ArrowInvalid:
        return _texts_to_ms(text.to_pylist(), scale, name, errors)
    return _floats_to_ms(pc.fill_null(floats, 0.0).to_numpy(), valid, scale, name, errors, text)


def _ints_to_ms(
    v: np.ndarray, valid: np.ndarray, scale: int, name: str, errors: dict[int, str]
) -> pa.Array:
    if scale >= 1000:
        ms = v // (scale // 1000)
    else:  # seconds: * 1000 must not overflow
        limit = _INT64_MAX // 1000
        over = valid & (np.abs(v) > limit)
        for i in np.flatnonzero(over):
            errors.setdefault(int(i), f"{name} out of range (cannot be represented): {v[i]} s")
        valid = valid & ~over
        ms = np.where(over, 0, v) * 1000
    return pa.array(ms, type=pa.int64(), mask=~valid)


def _floats_to_ms(
    x: np.ndarray,
    valid: np.ndarray,
    scale: int,
    name: str,
    errors: dict[int, str],
    text: pa.Array | None = None,
) -> pa.Array:
    with np.errstate(invalid="ignore", over="ignore"):
        # to the microsecond first: 1723161254.087 s is 1723161254086.9998 ms as a float
        ms = np.floor(np.round(x * 1000.0 / scale, 3))
    bad = valid & ~(np.abs(ms) < 2.0**62)
    for i in np.flatnonzero(bad):
        shown = str(text[int(i)].as_py()).strip()[:40] if text is not None else repr(float(x[i]))
        errors.setdefault(int(i), f"{name} out of range (cannot be represented): {shown}")
    valid = valid & ~bad
    return pa.array(np.where(valid, ms, 0).astype(np.int64), type=pa.int64(), mask=~valid)


def _texts_to_ms(
    values: list[str | None], scale: int, name: str, errors: dict[int, str]
) -> pa.Array:
    """The slow path of a block with unreadable times: each value on its own."""
    out: list[int | None] = []
    for i, text in enumerate(values):
        ms: int | None = None
        if text is not None:
            stripped = text.strip()
            try:
                value = int(stripped)
            except ValueError:
                x = number(stripped)
                if x is None:
                    errors.setdefault(i, f"unparseable {name}: {text[:40]!r}")
                else:
                    ms = math.floor(round(x * 1000.0 / scale, 3))
            else:
                ms = value * 1000 // scale
            if ms is not None and not -(2**62) < ms < 2**62:
                errors.setdefault(
                    i, f"{name} out of range (cannot be represented): {stripped[:40]}"
                )
                ms = None
        out.append(ms)
    return pa.array(out, type=pa.int64())


def interval_ms(text: str) -> int | None:
    """``1s``, ``15m``, ``4h``, ``1d``, ``1w`` -> milliseconds; None for months (no fixed
    length) or anything else."""
    units = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
    number, unit = text[:-1], text[-1:]
    if not number.isdigit() or unit not in units or int(number) <= 0:
        return None
    return int(number) * units[unit]


# ---------------------------------------------------------------------------------------------
# Table formats
# ---------------------------------------------------------------------------------------------


def _text(t: pa.DataType) -> bool:
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or (pa.types.is_dictionary(t) and _text(t.value_type))
    )


def _number(t: pa.DataType) -> bool:
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or pa.types.is_null(t)
    )


_FIELD_TYPES = {  # field -> (what it must hold, the column types that hold it)
    "ts": (
        "times (numbers since 1970, ISO-8601 text or a UTC timestamp)",
        lambda t: _number(t) or _text(t) or pa.types.is_timestamp(t),
    ),
    "symbol": ("text", lambda t: _text(t) or pa.types.is_integer(t) or pa.types.is_null(t)),
    "side": ("text", lambda t: _text(t) or pa.types.is_null(t)),
}
_NUMBERS = ("numbers", lambda t: _number(t) or _text(t))


def check_types(path: Path, schema: pa.Schema, columns: Mapping[str, int]) -> None:
    """Each column (``field -> column index``) of a table file must hold what its field needs
    (numbers or text for prices and sizes, ...): a column of another type (a list, a struct,
    true/false, a date without time) is an :class:`InputFileError` naming it."""
    for field_name, i in columns.items():
        what, fits = _FIELD_TYPES.get(field_name, _NUMBERS)
        t = schema.field(i).type
        if not fits(t):
            raise InputFileError(
                f"{path}: column {schema.names[i]!r} ({field_name}) is of type {t}; expected {what}"
            )


def parquet_batches(path: Path, rows: int) -> Iterator[pa.RecordBatch]:
    return pq.ParquetFile(path).iter_batches(batch_size=rows)


def feather_batches(path: Path, rows: int) -> Iterator[pa.RecordBatch]:
    """Feather (Arrow IPC) record batches, one at a time from a memory map (so a damaged
    batch ends the file where it is, as a dead letter, after the batches before it)."""
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        batches: Iterator[pa.RecordBatch] = (
            reader.get_batch(i) for i in range(reader.num_record_batches)
        )
    except (OSError, pa.ArrowException):  # Feather version 1 (no IPC footer)
        batches = iter(pa_feather.read_table(path, memory_map=True).to_batches())
    for batch in batches:
        for start in range(0, batch.num_rows, rows):
            yield batch.slice(start, rows)


def parquet_schema(path: Path) -> pa.Schema:
    try:
        return pq.ParquetFile(path).schema_arrow
    except (OSError, pa.ArrowException) as exc:
        raise InputFileError(
            f"{path}: not a readable Parquet file ({exc}); give a Parquet "
            "file written by Arrow/pandas, or a CSV file"
        ) from None


def feather_schema(path: Path) -> pa.Schema:
    try:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_file(source).schema
    except (OSError, pa.ArrowException):
        pass
    try:  # Feather version 1 (no IPC footer)
        return pa_feather.read_table(path, memory_map=True).schema
    except (OSError, pa.ArrowException) as exc:
        raise InputFileError(
            f"{path}: not a readable Feather file ({exc}); give a Feather "
            "file written by Arrow/pandas, or a CSV file"
        ) from None
