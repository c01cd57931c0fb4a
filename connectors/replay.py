"""Replay of historical tick files as a Bytewax source.

- Formats: CSV, CSV.gz (any compression Arrow detects) and Parquet, in the trades, quotes or
  candles layout of ``../shared/data`` (the header decides). One file, a glob, or several.
- Partitions: files that share a symbol must be merged into one event-time stream (a symbol's
  trades and quotes, say), so files are grouped by shared symbols and each group is one
  partition; groups replay in parallel across workers. A single file needs no symbol scan.
- Order: inside a partition, files are merged by event time (ties keep file order; a row that
  goes backwards inside its own file stays where it is, for validation to judge).
- Blocks: Arrow parses a block of bytes at a time; one block becomes one :class:`TickRows`
  item, so the dataflow handles thousands of rows per item rather than one.
- Accounting: every line after the header becomes a row or, if Arrow cannot split it into the
  layout's fields, an ``extra_dead`` entry with its line number and text. Invalid UTF-8 is
  replaced (U+FFFD), not fatal.
- Damaged files: a file that cannot be used at all (missing, empty, unknown header, not gzip
  although named ``.gz``, not Parquet) is a :class:`InputFileError` naming it, raised when the
  source is built. A compressed file that is truncated (or corrupt) part-way is not fatal: the
  rows before the damage replay as usual (whole lines only, so a cut row is never read as a
  shorter one), the rest of the file becomes ONE dead letter (stage ``decode``, row = the first
  line that could not be read), and a warning names the file.
- Pacing: ``speed`` 0 replays as fast as possible; 1 at real time; N at N times real time.
- Recovery: the resume state is the block sequence number and, per file, the rows consumed.
  The flow ends at the end of the data.
"""

from __future__ import annotations

import codecs
import glob
import io
import logging
import os
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from cli.errors import UserError
from schemas.ticks import LAYOUTS, TS_MISSING, TickOrigin, TickRows, decode_table, layout_of

log = logging.getLogger(__name__)

NEVER = -(2**62)
GZIP_MAGIC = b"\x1f\x8b"
GZIP_SUFFIXES = (".gz", ".gzip", ".tgz")
ARROW_COMPRESSED = (".bz2", ".zst", ".zstd", ".lz4", ".br")  # decompressed by Arrow
HEADER_LIMIT = 64 * 1024  # a header line longer than this is not a tick file's
_COMPRESSED_CHUNK = 1 << 18
_LONGEST_LINE = 1 << 20  # a "line" longer than this is handed on as is (Arrow rejects it)
LAYOUT_HINT = ("expected the header of a trades, quotes or candles file: " + "; ".join(
    ",".join(cols) for cols in LAYOUTS.values()))


class InputFileError(UserError, ValueError):
    """An input file that cannot be replayed at all (the message names it)."""


class MissingInputError(UserError, FileNotFoundError):
    """``QT_TICKS`` (or ``--ticks``) names no existing file."""


def expand_paths(spec: str, setting: str = "QT_TICKS") -> list[Path]:
    """``a.csv.gz``, ``dir/*.csv.gz`` or a comma-separated list of either -> sorted files."""
    paths: list[Path] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        matches = sorted(glob.glob(os.path.expanduser(part)))
        if not matches:
            where = "" if os.path.isabs(os.path.expanduser(part)) else f" (in {os.getcwd()})"
            raise MissingInputError(
                f"{setting}: no file matches {part}{where}; give an existing file, a glob or a "
                "comma-separated list of them (CSV, CSV.gz or Parquet tick files)")
        paths.extend(Path(m) for m in matches if Path(m).is_file())
    if not paths:
        raise MissingInputError(f"{setting}={spec!r} names no files (only directories?); give "
                                "tick files, e.g. dir/*.csv.gz")
    return list(dict.fromkeys(paths))


def check_tick_files(spec: str, setting: str = "QT_TICKS") -> list[Path]:
    """The files of ``spec``, each checked to be a replayable tick file (its header or
    schema): an unusable one is an :class:`InputFileError` before anything starts."""
    paths = expand_paths(spec, setting)
    for path in paths:
        file_layout(path)
    return paths


class _Broken(Exception):
    """The compressed stream cannot be read on (truncated or corrupt)."""

    def __init__(self, what: str, detail: str = "") -> None:
        super().__init__(what)
        self.what = what  # "truncated" or "corrupt"
        self.detail = detail


class _TextStream(io.RawIOBase):
    """A tick file's text: decompressed (gzip by its signature, whatever the name; bz2/zstd/
    lz4/brotli by the name, through Arrow), always valid UTF-8 (bad bytes become U+FFFD), and
    handed out in whole lines.

    Whole lines, so that a file truncated or corrupt part-way ends cleanly after its last
    complete line: no cut row is read as a shorter one. The stream then just ends, and
    :attr:`failure` says what happened, :attr:`lines` how many lines came before it and
    :attr:`partial` holds the incomplete line (for the dead letter).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.failure: str | None = None  # "truncated" / "corrupt (...)" once the stream broke
        self.detail = ""
        self.lines = 0  # newlines handed out
        self.partial = ""
        self._carry = b""  # the incomplete line read so far
        self._out = b""  # whole lines ready for read()
        self._eof = False
        self._pending: _Broken | None = None  # found after salvaging the data before it
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise InputFileError(f"{path}: cannot be read ({exc.strerror}); check the path "
                                 "and its permissions") from None
        head = self._file.read(2)
        self._file.seek(0)
        self._gz: zlib._Decompress | None = None
        self._arrow: pa.NativeFile | None = None
        suffix = path.suffix.lower()
        if head == GZIP_MAGIC:
            self._gz = zlib.decompressobj(31)
        elif suffix in GZIP_SUFFIXES and head:
            self._file.close()
            raise InputFileError(
                f"{path}: not gzip-compressed (the name ends in {suffix} but the content does "
                "not start with the gzip signature); give a gzip-compressed CSV, or rename "
                "the file if it is plain CSV")
        elif suffix in ARROW_COMPRESSED:
            self._arrow = pa.input_stream(str(path), compression="detect")

    def readable(self) -> bool:
        return True

    def _gunzip(self, size: int) -> bytes:
        assert self._gz is not None
        while True:
            d = self._gz
            if d.eof:  # a member ended: another member, the end, or garbage
                rest = d.unused_data or self._file.read(_COMPRESSED_CHUNK)
                while 0 < len(rest) < 2 and (more := self._file.read(_COMPRESSED_CHUNK)):
                    rest += more
                if not rest:
                    return b""
                if rest[:2] != GZIP_MAGIC:
                    if not rest.strip(b"\0") and not self._file.read().strip(b"\0"):
                        return b""  # zero padding after the last member
                    raise _Broken("corrupt", "unexpected bytes after the compressed data")
                self._gz = d = zlib.decompressobj(31)
                data = rest
            else:
                data = d.unconsumed_tail or self._file.read(_COMPRESSED_CHUNK)
                if not data:
                    raise _Broken("truncated")
            saved = d.copy()
            try:
                out = d.decompress(data, size)
            except zlib.error as exc:
                # what this input held before the damage (zlib drops a failing call's output)
                self._pending = _Broken("corrupt", f"zlib: {exc}")
                return _salvage(saved, data)
            if out:
                return out

    def _raw_read(self, size: int) -> bytes:
        if self._pending is not None:
            raise self._pending
        if self._gz is not None:
            return self._gunzip(size)
        if self._arrow is not None:
            try:
                return self._arrow.read(size)
            except OSError as exc:
                what = "truncated" if "truncated" in str(exc).lower() else "corrupt"
                raise _Broken(what, str(exc)) from None
        return self._file.read(size)

    def _text(self, data: bytes, final: bool = False) -> bytes:
        if data.isascii() and not self._decoder.getstate()[0]:
            return data
        return self._decoder.decode(data, final=final).encode("utf-8")

    def _fill(self, want: int) -> None:
        """Move the next whole lines (or the final line at a clean end) into ``_out``."""
        while not self._eof and not self._out:
            try:
                chunk = self._raw_read(want)
            except _Broken as exc:
                self._eof = True
                self.failure, self.detail = exc.what, exc.detail
                self.partial = self._carry.decode("utf-8", errors="replace")
                self._carry = b""
                return
            if not chunk:
                self._eof = True
                self._out, self._carry = self._text(self._carry, final=True), b""
                return
            data = self._carry + chunk if self._carry else chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) <= _LONGEST_LINE:
                self._carry = data
                continue
            cut = cut or len(data)
            self._carry = data[cut:]
            whole = data[:cut]
            self.lines += whole.count(b"\n")
            self._out = self._text(whole)

    def read(self, size: int = -1) -> bytes:
        """At most ``size`` bytes (Arrow's buffer is that large: never more)."""
        want = size if size and size > 0 else 1 << 20
        if not self._out:
            self._fill(want)
        out = self._out[:want]
        self._out = self._out[want:]
        return out

    def header_line(self) -> str:
        """The first line (at most :data:`HEADER_LIMIT` bytes), for :func:`file_layout`."""
        head = b""
        while b"\n" not in head and len(head) < HEADER_LIMIT:
            try:
                chunk = self._raw_read(HEADER_LIMIT)
            except _Broken as exc:
                self.failure, self.detail = exc.what, exc.detail
                break
            if not chunk:
                break
            head += chunk
        line, newline, _ = head.partition(b"\n")
        if not newline and self.failure is not None:
            what = ("truncated" if self.failure == "truncated"
                    else f"corrupt ({self.detail})")
            raise InputFileError(f"{self.path}: the compressed file is {what} before the end "
                                 "of its header line; re-create or re-download it")
        if not newline and len(head) >= HEADER_LIMIT:
            raise InputFileError(f"{self.path}: no header line in its first "
                                 f"{HEADER_LIMIT // 1024} KiB: not a CSV tick file; "
                                 f"{LAYOUT_HINT}")
        return line.decode("utf-8", errors="replace").strip().lstrip("\ufeff")

    def readinto(self, b: bytearray) -> int:  # pragma: no cover - Arrow calls read()
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._arrow is not None:
            self._arrow.close()
        self._file.close()
        super().close()


def _salvage(decompressor: zlib._Decompress, data: bytes, piece: int = 4096) -> bytes:
    """The output of ``data`` up to the point where it fails to decompress (zlib drops the
    output of a call that fails), fed to a copy of the decompressor taken before it in ever
    smaller pieces around the failure, down to single bytes."""
    out: list[bytes] = []
    d = decompressor
    i = 0
    while i < len(data):
        before = d.copy()
        try:
            out.append(d.decompress(data[i:i + piece]))
        except zlib.error:
            if piece == 1:
                break
            d, piece = before, max(1, piece // 16)
            continue
        i += piece
    return b"".join(out)


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _open_text(path: Path) -> _TextStream:
    return _TextStream(path)


def file_layout(path: Path) -> TickOrigin:
    """The layout of a file, from its header (CSV) or schema (Parquet); a file that cannot be
    replayed at all is an :class:`InputFileError` that names it and says what to do."""
    if _is_parquet(path):
        try:
            names = pq.ParquetFile(path).schema_arrow.names
        except (OSError, pa.ArrowException) as exc:
            raise InputFileError(f"{path}: not a readable Parquet file ({exc}); give a Parquet "
                                 "file written by Arrow/pandas, or a CSV file") from None
        try:
            return layout_of(names)
        except ValueError:
            raise InputFileError(f"{path}: unrecognised columns {','.join(names)[:120]!r}; "
                                 f"{LAYOUT_HINT}") from None
    with _open_text(path) as stream:
        header = stream.header_line()
    if not header:
        raise InputFileError(f"{path}: the file is empty (no header line); {LAYOUT_HINT}")
    if "\0" in header or "\ufffd" in header:
        raise InputFileError(f"{path}: not a CSV text file (binary content in its first "
                             f"line); {LAYOUT_HINT}")
    try:
        return layout_of(header.split(","))
    except ValueError:
        raise InputFileError(f"{path}: unrecognised header {header[:120]!r}; "
                             f"{LAYOUT_HINT}") from None


def file_symbols(path: Path) -> set[str]:
    """Every symbol in a file (one pass over the symbol column only)."""
    if _is_parquet(path):
        col = pq.read_table(path, columns=["symbol"]).column("symbol")
    else:
        stream = pa.PythonFile(_open_text(path), mode="r")
        col = pa_csv.read_csv(
            stream, parse_options=pa_csv.ParseOptions(quote_char=False,
                                                     invalid_row_handler=lambda _: "skip"),
            convert_options=pa_csv.ConvertOptions(include_columns=["symbol"],
                                                  column_types={"symbol": pa.string()}),
        ).column("symbol")
    return {s for s in col.unique().to_pylist() if s}


def group_by_symbols(paths: Sequence[Path]) -> list[list[Path]]:
    """Connected components of files that share at least one symbol (union-find)."""
    if len(paths) == 1:
        return [list(paths)]
    parent = list(range(len(paths)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, path in enumerate(paths):
        for sym in file_symbols(path):
            if sym in owner:
                parent[find(i)] = find(owner[sym])
            else:
                owner[sym] = i
    groups: dict[int, list[Path]] = {}
    for i, path in enumerate(paths):
        groups.setdefault(find(i), []).append(path)
    return sorted(groups.values(), key=lambda g: [p.name for p in g])


# ---------------------------------------------------------------------------------------------
# One file -> decoded blocks
# ---------------------------------------------------------------------------------------------


class FileBlocks:
    """Decoded blocks of one file. ``skip_rows``/``skip_bad_through`` resume mid-file."""

    def __init__(self, path: Path, candle_ms: int, block_bytes: int, skip_rows: int = 0,
                 skip_bad_through: int = 0) -> None:
        self.path = path
        self.name = path.name
        self.origin = file_layout(path)
        self.candle_ms = candle_ms
        self._bad: list[tuple[int, str]] = []
        self._bad_lock = threading.Lock()
        self._unpassed_bad: set[int] = set()  # reported bad lines not yet numbered past
        self._next_line = 2  # line 1 is the header
        self.rows_read = 0
        self._skip_rows = skip_rows
        self._skip_bad_through = skip_bad_through
        self._stream: _TextStream | None = None
        self._broken: tuple[str, str] | None = None  # Parquet read error: (what, detail)
        self._reported = False
        self._batches = self._open(block_bytes)

    def _on_invalid(self, row: pa_csv.InvalidRow) -> str:
        with self._bad_lock:
            self._bad.append((int(row.number or 0), row.text))
        return "skip"

    def _open(self, block_bytes: int) -> Iterator[pa.RecordBatch]:
        if _is_parquet(self.path):
            rows = max(1024, block_bytes // 64)
            return pq.ParquetFile(self.path).iter_batches(batch_size=rows)
        names = LAYOUTS[self.origin]
        self._stream = _open_text(self.path)
        reader = pa_csv.open_csv(
            pa.PythonFile(self._stream, mode="r"),
            read_options=pa_csv.ReadOptions(use_threads=False, block_size=block_bytes,
                                            skip_rows=1, column_names=list(names)),
            parse_options=pa_csv.ParseOptions(quote_char=False, ignore_empty_lines=False,
                                              invalid_row_handler=self._on_invalid),
            convert_options=pa_csv.ConvertOptions(
                column_types={c: pa.string() for c in names}, strings_can_be_null=True,
                null_values=[""]),
        )
        return iter(reader)

    def _line_numbers(self, n: int) -> np.ndarray:
        """Line numbers of the next ``n`` decodable rows, skipping undecodable lines.

        Arrow reports a bad line while parsing ahead, possibly before the batch that would
        have held it, so reported lines wait in ``_unpassed_bad`` until numbering reaches them.
        """
        if _is_parquet(self.path):
            out = np.arange(self._next_line - 1, self._next_line - 1 + n, dtype=np.int64)
            self._next_line += n
            return out
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        lines = np.arange(self._next_line, self._next_line + n, dtype=np.int64)
        while True:
            hits = {b for b in self._unpassed_bad if b <= lines[-1]}
            if not hits:
                break
            self._unpassed_bad -= hits
            keep = lines[~np.isin(lines, list(hits))]
            more = np.arange(lines[-1] + 1, lines[-1] + 1 + (n - len(keep)), dtype=np.int64)
            lines = np.concatenate((keep, more))
        self._next_line = int(lines[-1]) + 1
        return lines

    def _next_batch(self) -> pa.RecordBatch | None:
        try:
            return next(self._batches, None)
        except (OSError, pa.ArrowException) as exc:  # Parquet: a damaged page or row group
            if self._stream is not None:
                raise
            self._broken = ("corrupt", str(exc)[:200])
            return None

    def _damage(self) -> list[tuple[str, int, str, str]]:
        """At the end of the readable rows of a damaged file: the rest of it as ONE dead
        letter (once, and not again after a resume that already emitted it), and a warning."""
        if self._reported:
            return []
        self._reported = True
        if self._stream is not None and self._stream.failure is not None:
            what, detail, partial = (self._stream.failure, self._stream.detail,
                                     self._stream.partial)
            row = max(self._next_line, self._stream.lines + 1)
        elif self._broken is not None:
            (what, detail), partial, row = self._broken, "", self._next_line - 1
        else:
            return []
        unit = "compressed stream" if self._stream is not None else "file"
        reason = (f"file truncated: the {unit} ended at row {row} before its end"
                  if what == "truncated" else
                  f"file corrupt: the {unit} could not be read from row {row} on ({detail})")
        if row <= self._skip_bad_through:  # emitted before the resume
            return []
        log.warning("warning: %s: %s; the rows before it were replayed, the rest of the file "
                    "is one dead letter", self.path, reason)
        return [(self.name, row, partial[:1000], reason)]

    def next_block(self) -> TickRows | None:
        """The next decoded block, or None at end of file."""
        while True:
            batch = self._next_batch()
            with self._bad_lock:
                bad, self._bad = self._bad, []
            damage = self._damage() if batch is None else []
            if batch is None and not bad and not damage:
                return None
            n = 0 if batch is None else batch.num_rows
            self._unpassed_bad.update(line for line, _ in bad)
            line_no = self._line_numbers(n)
            extra = [(self.name, line, text, "not a row of the "
                      f"{self.origin.value}s layout ({len(text.split(','))} fields)")
                     for line, text in bad if line > self._skip_bad_through]
            extra += damage
            if batch is None:
                rows = decode_table(pa.RecordBatch.from_pylist(
                    [], schema=pa.schema([(c, pa.string()) for c in LAYOUTS[self.origin]])),
                    self.origin, self.name, 0, self.candle_ms)
            else:
                rows = decode_table(batch, self.origin, self.name, 0, self.candle_ms)
            rows.row_no = line_no
            rows.extra_dead = extra
            if self._skip_rows:
                k = min(self._skip_rows, len(rows))
                self._skip_rows -= k
                rows = _with_extra(rows.slice(k, len(rows)), extra)
            if len(rows) == 0 and not rows.extra_dead:
                continue
            return rows


def _with_extra(rows: TickRows, extra: list[tuple[str, int, str, str]]) -> TickRows:
    rows.extra_dead = extra
    return rows


@dataclass
class _Cursor:
    """A file being merged: its reader and the rows read but not yet emitted."""

    blocks: FileBlocks
    pending: TickRows | None = None
    done: bool = False
    emitted_rows: int = 0
    emitted_bad_through: int = 0

    def fill(self) -> None:
        while not self.done and (self.pending is None or len(self.pending) == 0):
            extra = [] if self.pending is None else self.pending.extra_dead
            nxt = self.blocks.next_block()
            if nxt is None:  # pending may still hold undecodable lines that must go out
                self.done = True
                return
            nxt.extra_dead = extra + nxt.extra_dead
            self.pending = nxt

    def take(self, k: int) -> TickRows:
        assert self.pending is not None
        out = self.pending.slice(0, k)
        rest = self.pending.slice(k, len(self.pending))
        rest.extra_dead = []
        self.pending = rest
        self.emitted_rows += len(out)
        for _, line, _, _ in out.extra_dead:
            self.emitted_bad_through = max(self.emitted_bad_through, line)
        return out


def _order_key(ts: np.ndarray) -> np.ndarray:
    """Running max of event time (missing times ride with their predecessor)."""
    return np.maximum.accumulate(np.where(ts == TS_MISSING, NEVER, ts))


# ---------------------------------------------------------------------------------------------
# Bytewax source
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayState:
    """Resume state of one partition."""

    seq: int
    consumed: dict[str, tuple[int, int]] = field(default_factory=dict)  # rows, bad-through


class ReplayPartition(StatefulSourcePartition[TickRows, ReplayState]):
    def __init__(self, name: str, paths: Sequence[Path], candle_ms: int, block_bytes: int,
                 speed: float, resume: ReplayState | None) -> None:
        self.name = name
        self.seq = 0 if resume is None else resume.seq
        consumed = {} if resume is None else resume.consumed
        self.cursors = []
        for p in paths:
            rows, bad = consumed.get(p.name, (0, 0))
            cur = _Cursor(FileBlocks(p, candle_ms, block_bytes, rows, bad))
            cur.emitted_rows, cur.emitted_bad_through = rows, bad
            self.cursors.append(cur)
        self.speed = speed
        self._ready: TickRows | None = None
        self._ended = False
        self._wall0: float | None = None
        self._event0: int | None = None
        self._awake: datetime | None = None

    def _merged_block(self) -> TickRows | None:
        for c in self.cursors:
            c.fill()
        live = [c for c in self.cursors if c.pending is not None and
                (len(c.pending) or c.pending.extra_dead)]
        if not live:
            return None
        if len(live) == 1:
            c = live[0]
            return c.take(len(c.pending))  # type: ignore[arg-type]
        keys = {id(c): _order_key(c.pending.ts_ms) for c in live}  # type: ignore[union-attr]
        # Everything up to the earliest "last time" of the files is safe to emit in order.
        ends = [int(keys[id(c)][-1]) for c in live if len(keys[id(c)])]
        horizon = min(ends) if ends else NEVER
        parts, part_keys = [], []
        for order, c in enumerate(live):
            k = keys[id(c)]
            n = int(np.searchsorted(k, horizon, side="right")) if len(k) else 0
            if n or c.pending.extra_dead:  # type: ignore[union-attr]
                parts.append(c.take(n))
                part_keys.append((k[:n], order))
        key = np.concatenate([k for k, _ in part_keys])
        src = np.concatenate([np.full(len(k), o) for k, o in part_keys])
        merged = np.lexsort((src, key))
        return TickRows.concat(parts, merged)

    def next_batch(self) -> list[TickRows]:
        if self._ready is None:
            self._ready = self._merged_block()
            if self._ready is None:
                if self._ended:
                    raise StopIteration
                self._ended = True  # one empty final block tells downstream we are done
                self.seq += 1
                return [TickRows.end_of(self.name, self.seq - 1)]
        block = self._ready
        if self.speed > 0 and len(block):
            block = self._paced(block)
            if block is None:
                return []
        else:
            self._ready = None
        block.partition = self.name
        block.seq = self.seq
        self.seq += 1
        return [block]

    def _paced(self, block: TickRows) -> TickRows | None:
        """The prefix of ``block`` that is due now; the rest waits for its time."""
        now = time.monotonic()
        key = _order_key(block.ts_ms)
        if self._wall0 is None:
            known = key[key > NEVER]
            self._wall0, self._event0 = now, int(known[0]) if len(known) else 0
        due_event = self._event0 + (now - self._wall0) * 1000.0 * self.speed
        n = int(np.searchsorted(key, due_event, side="right"))
        if n >= len(block):
            self._ready, self._awake = None, None
            return block
        self._ready = _with_extra(block.slice(n, len(block)), [])
        wait_s = (int(key[n]) - due_event) / 1000.0 / self.speed
        self._awake = datetime.now(UTC) + timedelta(seconds=min(max(wait_s, 0.0), 1.0))
        if n == 0 and not block.extra_dead:
            return None
        return block.slice(0, n)

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> ReplayState:
        """Rows handed downstream per file: what the cursors gave out, minus what pacing still
        holds back in ``_ready`` (those rows are re-read after a resume, not lost)."""
        held: dict[str, int] = {}
        if self._ready is not None and len(self._ready):
            names, counts = np.unique(self._ready.src, return_counts=True)
            held = {self._ready.sources[int(k)]: int(n) for k, n in zip(names, counts,
                                                                       strict=True)}
        return ReplayState(self.seq, {
            c.blocks.name: (c.emitted_rows - held.get(c.blocks.name, 0), c.emitted_bad_through)
            for c in self.cursors})


class ReplaySource(FixedPartitionedSource[TickRows, ReplayState]):
    """Historical files as a partitioned, resumable, optionally paced source."""

    def __init__(self, paths: Sequence[Path], candle_seconds: int = 60,
                 block_bytes: int = 1 << 20, speed: float = 0.0) -> None:
        self.paths = [Path(p) for p in paths]
        for p in self.paths:
            file_layout(p)  # fail fast, with the file name, on an unknown layout
        self.candle_ms = candle_seconds * 1000
        self.block_bytes = block_bytes
        self.speed = speed
        self._groups: dict[str, list[Path]] | None = None
        self._lock = threading.Lock()

    def groups(self) -> dict[str, list[Path]]:
        with self._lock:
            if self._groups is None:
                self._groups = {"+".join(p.name for p in g): g
                                for g in group_by_symbols(self.paths)}
            return self._groups

    def list_parts(self) -> list[str]:
        return list(self.groups())

    def build_part(self, step_id: str, for_part: str,
                   resume_state: ReplayState | None) -> ReplayPartition:
        paths = self.groups().get(for_part)
        if paths is None:
            raise ValueError(f"{step_id}: no replay partition {for_part!r} (input files changed "
                             "since the recovery snapshot?)")
        return ReplayPartition(for_part, paths, self.candle_ms, self.block_bytes, self.speed,
                               resume_state)
