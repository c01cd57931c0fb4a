"""Which layout a file is in: the registry, tried in a fixed order (first match wins).

Text files (CSV; gzip, bz2, zstd, lz4, brotli, or a zip holding one CSV):

1. the project's trades, quotes or candles layout, by its header (``../shared/data``);
2. Binance public data, by the file name (:mod:`connectors.layouts.binance`);
3. Tardis.dev trades or quotes, by the header (:mod:`connectors.layouts.tardis`);
4. ``QT_TICKS_COLUMNS``, when set (:mod:`connectors.layouts.mapped`).

Parquet (``.parquet``, ``.pq``) and Feather (``.feather``, ``.arrow``, ``.ipc``): the
project's layouts by their columns, then freqtrade candles by the file name
(:mod:`connectors.layouts.freqtrade`), then ``QT_TICKS_COLUMNS``. JSON (``.json``,
``.json.gz``): freqtrade candles. Anything else is an :class:`InputFileError` that names the
file and what was expected. A file whose name claims a layout its content does not fit is an
error too, not the next guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as pa_feather
import pyarrow.parquet as pq

from connectors.layouts import binance, freqtrade, mapped, tardis
from connectors.layouts.base import (
    FileLayout,
    InputFileError,
    LayoutOptions,
    Reader,
    feather_batches,
    feather_schema,
    parquet_batches,
    parquet_schema,
)
from schemas.ticks import LAYOUTS, TickOrigin, layout_of

LAYOUT_HINT = (
    "expected the header of a trades, quotes or candles file: "
    + "; ".join(",".join(cols) for cols in LAYOUTS.values())
    + "; or Binance public data (SYMBOL-1m-DATE, SYMBOL-trades-DATE, SYMBOL-aggTrades-DATE, "
    "SYMBOL-bookTicker-DATE .csv/.zip), Tardis.dev trades/quotes CSV, freqtrade candles "
    "(PAIR-TIMEFRAME .feather/.parquet/.json); or map its columns with QT_TICKS_COLUMNS"
)
TEXT_SUFFIXES = (".zip", ".gz", ".gzip", ".tgz", ".bz2", ".zst", ".zstd", ".lz4", ".br")
TABLE_FORMATS = {
    ".parquet": "Parquet",
    ".pq": "Parquet",
    ".feather": "Feather",
    ".arrow": "Feather",
    ".ipc": "Feather",
}


def table_format(path: Path) -> str | None:
    """ "Parquet", "Feather" or "JSON" for files read as tables (not as text), else None."""
    name = path.name.lower()
    if name.endswith((".json", ".json.gz")):
        return "JSON"
    return TABLE_FORMATS.get(path.suffix.lower())


def project_layout(origin: TickOrigin, why: str, read: Reader | None = None) -> FileLayout:
    """One of the project's own layouts: its batches need no conversion."""
    return FileLayout(
        name=f"{origin.value}s",
        origin=origin,
        why=why,
        columns=LAYOUTS[origin] if read is None else (),
        read=read,
    )


def csv_stem(name: str) -> str:
    """``BTCUSDT-1m-2024-01-01.csv.zip`` -> ``BTCUSDT-1m-2024-01-01``."""
    while name.lower().endswith(TEXT_SUFFIXES):
        name = name.rsplit(".", 1)[0]
    return name[:-4] if name.lower().endswith(".csv") else name


def text_layout(
    path: Path, lines: Sequence[str], member: str | None, options: LayoutOptions
) -> FileLayout:
    """The layout of a text file from its first lines (``lines[0]`` is its first line, not
    empty) and name (or, zipped, its member's name)."""
    header = lines[0].split(",")
    try:
        origin = layout_of(header)
    except ValueError:
        pass
    else:
        return project_layout(origin, f"header {lines[0].strip()[:120]}")
    for stem in dict.fromkeys([csv_stem(path.name)] + ([csv_stem(member)] if member else [])):
        found = binance.detect(path, stem, list(lines), options)
        if found is not None:
            return found
    names = [h.strip().strip('"') for h in header]  # (some writers quote header names)
    found = tardis.detect(path, names) or mapped.detect_csv(path, names, lines, options)
    if found is not None:
        return found
    raise InputFileError(f"{path}: unrecognised header {lines[0].strip()[:120]!r}; {LAYOUT_HINT}")


def table_layout(path: Path, options: LayoutOptions) -> FileLayout:
    """The layout of a Parquet, Feather or JSON file (by its columns and name)."""
    kind = table_format(path)
    if kind == "JSON":
        found = freqtrade.detect_json(path, options)
        if found is None:
            raise InputFileError(
                f"{path}: a JSON file not named like freqtrade candles "
                f"({freqtrade.PATTERN}.json); {LAYOUT_HINT}"
            )
        return found
    schema, read = (
        (parquet_schema(path), parquet_batches)
        if kind == "Parquet"
        else (feather_schema(path), feather_batches)
    )
    try:
        origin = layout_of(schema.names)
    except ValueError:
        pass
    else:
        return project_layout(origin, f"{kind} columns {','.join(schema.names)}", read)
    found = freqtrade.detect_table(path, schema, read, options) or mapped.detect_table(
        path, schema, read, options
    )
    if found is not None:
        return found
    raise InputFileError(
        f"{path}: unrecognised columns {','.join(schema.names)[:120]!r}; {LAYOUT_HINT}"
    )


def table_columns(path: Path, columns: Sequence[str]) -> pa.Table:
    """Only ``columns`` of a Parquet or Feather file (the symbol scan)."""
    if table_format(path) == "Parquet":
        return pq.read_table(path, columns=list(columns))
    return pa_feather.read_table(path, columns=list(columns), memory_map=True)


def table_rows(path: Path) -> int | None:
    """The rows of a Parquet or Feather file from its metadata (None for JSON, or when it
    cannot say): how far through the file a replay is."""
    try:
        if table_format(path) == "Parquet":
            return pq.ParquetFile(path).metadata.num_rows
        if table_format(path) == "Feather":
            with pa.memory_map(str(path)) as source:
                reader = pa.ipc.open_file(source)
                return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    except (OSError, pa.ArrowException):
        return None
    return None
