"""Replay of historical tick files as a Bytewax source.

- Formats: CSV (plain, gzip, any compression Arrow detects, or a zip holding one CSV,
  streamed), Parquet and Feather in the trades, quotes or candles layout of
  ``../shared/data`` (the header decides); and Binance public data, Tardis.dev CSV,
  freqtrade candles and any CSV/Parquet/Feather through ``QT_TICKS_COLUMNS``, each converted
  batch by batch into one of those three layouts (:mod:`connectors.layouts`, which also
  says how a file's layout is recognised). One file, a glob, or several.
- Partitions: files that share a symbol must be merged into one event-time stream (a symbol's
  trades and quotes, say), so files are grouped by shared symbols and each group is one
  partition; groups replay in parallel across workers. A single file needs no symbol scan.
- Order: inside a partition, files are merged by event time (ties keep file order; a row that
  goes backwards inside its own file stays where it is, for validation to judge).
- Blocks: Arrow parses a block of bytes at a time; one block becomes one :class:`TickRows`
  item, so the dataflow handles thousands of rows per item rather than one.
- Accounting: every line after the header (if the file has one) becomes a row or, if Arrow
  cannot split it into the layout's fields, an ``extra_dead`` entry with its line number and
  text. Invalid UTF-8 is replaced (U+FFFD), not fatal. Rows of table formats (Parquet,
  Feather, JSON) are numbered from 1.
- Damaged files: a file that cannot be used at all (missing, empty, unknown layout, not gzip
  although named ``.gz``, a zip of several files, not Parquet) is a :class:`InputFileError`
  naming it, raised when the source is built. A compressed file that is truncated (or
  corrupt) part-way is not fatal: the rows before the damage replay as usual (whole lines
  only, so a cut row is never read as a shorter one), the rest of the file becomes ONE dead
  letter (stage ``decode``, row = the first line that could not be read), and a warning names
  the file. A zip's member is inflated here like gzip (from its local header, so a zip cut
  short, without its central directory, still replays its readable rows; its CRC-32 is
  checked at the end when the central directory gives it).
- Progress: each block carries ``input_bytes``, the bytes of its partition's files on disk
  (compressed bytes for a compressed file) consumed since the block before, so the blocks of
  a replay add up to the files' sizes and the progress line shows the share of the input read.
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
import struct
import threading
import time
import zipfile
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.decode import decode_table
from connectors.layouts import detect
from connectors.layouts.base import DamagedFile, FileLayout, InputFileError, LayoutOptions
from connectors.layouts.detect import LAYOUT_HINT
from errors import UserError
from schemas.ticks import LAYOUTS, TS_MISSING, TickRows

__all__ = [
    "InputFileError",
    "MissingInputError",
    "ReplaySource",
    "check_tick_files",
    "expand_paths",
    "file_layout",
    "group_by_symbols",
]

log = logging.getLogger(__name__)

NEVER = -(2**62)
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
GZIP_SUFFIXES = (".gz", ".gzip", ".tgz")
ARROW_COMPRESSED = {
    ".bz2": "bz2",
    ".zst": "zstd",
    ".zstd": "zstd",
    ".lz4": "lz4",
    ".br": "brotli",
}  # decompressed by Arrow
HEADER_LIMIT = 64 * 1024  # a header line longer than this is not a tick file's
_COMPRESSED_CHUNK = 1 << 18
_LONGEST_LINE = 1 << 20  # a "line" longer than this is handed on as is (Arrow rejects it)
SNIFF_LINES = 21  # the header and the first rows, for detection (connectors.layouts)


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
                "comma-separated list of them (CSV, CSV.gz or Parquet tick files)"
            )
        paths.extend(Path(m) for m in matches if Path(m).is_file())
    if not paths:
        raise MissingInputError(
            f"{setting}={spec!r} names no files (only directories?); give "
            "tick files, e.g. dir/*.csv.gz"
        )
    return list(dict.fromkeys(paths))


def check_tick_files(
    spec: str, setting: str = "QT_TICKS", options: LayoutOptions | None = None
) -> list[Path]:
    """The files of ``spec``, each checked to be a replayable tick file (its layout is
    recognised): an unusable one is an :class:`InputFileError` before anything starts."""
    paths = expand_paths(spec, setting)
    options = options or LayoutOptions.from_env()
    for path in paths:
        file_layout(path, options)
    return paths


class _Broken(Exception):
    """The compressed stream cannot be read on (truncated or corrupt)."""

    def __init__(self, what: str, detail: str = "") -> None:
        super().__init__(what)
        self.what = what  # "truncated" or "corrupt"
        self.detail = detail


class _ZipMember:
    """The one member of a zip file, inflated as a stream: from its local header, found
    through the central directory (which also says there is one member, and its CRC-32) or,
    in a zip cut short that has none, at the start of the file."""

    def __init__(self, path: Path, file: io.BufferedReader) -> None:
        self._file = file
        info = self._central(path)
        start = 0 if info is None else info.header_offset
        file.seek(start)
        local = file.read(30)
        if len(local) < 30 or local[:4] != ZIP_MAGIC:
            raise InputFileError(
                f"{path}: not a readable zip file (no local file header); "
                "re-create or re-download it"
            )
        flags, method, crc, size, name_len, extra_len = struct.unpack("<4x2xHH4xIIxxxxHH", local)
        self.name = file.read(name_len).decode("utf-8", errors="replace")
        if info is not None:
            crc, size = info.CRC, info.compress_size
        elif flags & 0x08:  # sizes and CRC follow the data: unknown without the directory
            crc, size = None, None
        if flags & 0x01:
            raise InputFileError(f"{path}: the zip is encrypted; unzip it and give the CSV")
        if method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise InputFileError(
                f"{path}: the zip's {self.name} is compressed with method "
                f"{method} (deflate or stored are read); unzip it and give "
                "the CSV, or re-zip it"
            )
        if detect.table_format(Path(self.name)) is not None:
            raise InputFileError(
                f"{path}: the zip holds {self.name}; only a CSV is read from "
                "a zip: unzip it and give the file"
            )
        file.seek(start + 30 + name_len + extra_len)
        self._stored = method == zipfile.ZIP_STORED
        self._expected_crc, self._left = crc, size
        self._crc = 0
        self.inflate = zlib.decompressobj(-15)
        self._pending: _Broken | None = None

    @staticmethod
    def _central(path: Path) -> zipfile.ZipInfo | None:
        try:
            with zipfile.ZipFile(path) as z:
                infos = [i for i in z.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, OSError):  # no central directory: a zip cut short
            return None
        if len(infos) != 1:
            names = ", ".join(i.filename for i in infos[:4]) + (", ..." if len(infos) > 4 else "")
            raise InputFileError(
                f"{path}: the zip holds {len(infos)} files ({names}); expected one CSV file, "
                "as data.binance.vision ships them: unzip it and give the files"
            )
        return infos[0]

    def read(self, size: int) -> bytes:
        if self._pending is not None:
            raise self._pending
        if self._stored:
            data = self._file.read(size if self._left is None else min(size, self._left))
            if self._left is not None:
                self._left -= len(data)
                if not data and self._left > 0:
                    raise _Broken("truncated")
        else:
            data = self._inflated(size)
        if data:
            self._crc = zlib.crc32(data, self._crc)
        elif self._expected_crc is not None and self._crc != self._expected_crc:
            raise _Broken("corrupt", "zip: CRC-32 mismatch")
        return data

    def _inflated(self, size: int) -> bytes:
        d = self.inflate
        while not d.eof:  # what follows the member's data (directory, ...) is not read
            data = d.unconsumed_tail or self._file.read(_COMPRESSED_CHUNK)
            if not data:
                raise _Broken("truncated")
            saved = d.copy()
            try:
                out = d.decompress(data, size)
            except zlib.error as exc:
                self._pending = _Broken("corrupt", f"zlib: {exc}")
                return _salvage(saved, data)
            if out:
                return out
        return b""


class _TextStream(io.RawIOBase):
    """A tick file's text: decompressed (gzip by its signature, whatever the name; a zip's one
    member by its signature or name; bz2/zstd/lz4/brotli by the name, through Arrow), always
    valid UTF-8 (bad bytes become U+FFFD), and handed out in whole lines.

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
        # (lines handed out, file position then): where in the file a line ended, for
        # progress (Arrow reads blocks ahead of the rows it has handed out)
        self.marks: deque[tuple[int, int]] = deque()
        try:
            self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise InputFileError(
                f"{path}: cannot be read ({exc.strerror}); check the path and its permissions"
            ) from None
        head = self._file.read(4)
        self._file.seek(0)
        self._gz: zlib._Decompress | None = None
        self._arrow: pa.NativeFile | None = None
        self._zip: _ZipMember | None = None
        self.member: str | None = None  # the name of a zip's member
        suffix = path.suffix.lower()
        if head[:2] == GZIP_MAGIC:
            self._gz = zlib.decompressobj(31)
        elif head == ZIP_MAGIC or (suffix == ".zip" and head):
            try:
                self._zip = _ZipMember(path, self._file)
            except InputFileError:
                self._file.close()
                raise
            self.member = self._zip.name
        elif suffix in GZIP_SUFFIXES and head:
            self._file.close()
            raise InputFileError(
                f"{path}: not gzip-compressed (the name ends in {suffix} but the content does "
                "not start with the gzip signature); give a gzip-compressed CSV, or rename "
                "the file if it is plain CSV"
            )
        elif suffix in ARROW_COMPRESSED:  # read through our file: its position is progress
            self._arrow = pa.CompressedInputStream(
                pa.PythonFile(self._file, mode="r"), ARROW_COMPRESSED[suffix]
            )
        self._position = 0

    def readable(self) -> bool:
        return True

    def position(self) -> int:
        """Bytes of the file on disk read so far (compressed bytes for a compressed file):
        the replay's progress through it."""
        try:
            self._position = self._file.tell()
        except (OSError, ValueError):  # closed: the last position known
            return self._position
        inflate = (
            self._gz
            if self._gz is not None
            else (self._zip.inflate if self._zip is not None else None)
        )
        if inflate is not None:  # read, but not yet decompressed
            self._position -= len(inflate.unconsumed_tail) + len(inflate.unused_data)
        return self._position

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
        if self._zip is not None:
            return self._zip.read(size)
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
            self.marks.append((self.lines, self.position()))

    def read(self, size: int = -1) -> bytes:
        """At most ``size`` bytes (Arrow's buffer is that large: never more)."""
        want = size if size and size > 0 else 1 << 20
        if not self._out:
            self._fill(want)
        out = self._out[:want]
        self._out = self._out[want:]
        return out

    def head_lines(self, count: int = SNIFF_LINES) -> list[str]:
        """The first line (at most :data:`HEADER_LIMIT` bytes) and the whole lines after it,
        up to ``count`` lines in all, for :func:`file_layout`; [] for an empty file."""
        head = b""
        ended = False
        while head.count(b"\n") < count and len(head) < HEADER_LIMIT:
            try:
                chunk = self._raw_read(HEADER_LIMIT)
            except _Broken as exc:
                self.failure, self.detail = exc.what, exc.detail
                break
            if not chunk:
                ended = True
                break
            head += chunk
        line, newline, _ = head.partition(b"\n")
        if not newline and self.failure is not None:
            what = "truncated" if self.failure == "truncated" else f"corrupt ({self.detail})"
            raise InputFileError(
                f"{self.path}: the compressed file is {what} before the end "
                "of its header line; re-create or re-download it"
            )
        if not newline and len(head) >= HEADER_LIMIT:
            raise InputFileError(
                f"{self.path}: no header line in its first "
                f"{HEADER_LIMIT // 1024} KiB: not a CSV tick file; "
                f"{LAYOUT_HINT}"
            )
        if not head:
            return []
        text = head.decode("utf-8", errors="replace").split("\n")
        whole = text if ended and text[-1] else text[:-1]  # the last one may be cut
        first = line.decode("utf-8", errors="replace").strip().lstrip("\ufeff")
        return [first, *(t.rstrip("\r") for t in whole[1:count])]

    def readinto(self, b: Any) -> int:  # any writable buffer; Arrow calls read() instead
        view = memoryview(b).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
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
            out.append(d.decompress(data[i : i + piece]))
        except zlib.error:
            if piece == 1:
                break
            d, piece = before, max(1, piece // 16)
            continue
        i += piece
    return b"".join(out)


def _open_text(path: Path) -> _TextStream:
    return _TextStream(path)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def file_layout(path: Path, options: LayoutOptions | None = None) -> FileLayout:
    """The layout of a file (:mod:`connectors.layouts.detect`); a file that cannot be
    replayed at all is an :class:`InputFileError` that names it and says what to do."""
    options = options or LayoutOptions.from_env()
    if detect.table_format(path) is not None:
        return detect.table_layout(path, options)
    with _open_text(path) as stream:
        lines = stream.head_lines()
        member = stream.member
    if not lines or not lines[0]:
        raise InputFileError(f"{path}: the file is empty (no header line); {LAYOUT_HINT}")
    if "\0" in lines[0] or "\ufffd" in lines[0]:
        raise InputFileError(
            f"{path}: not a CSV text file (binary content in its first line); {LAYOUT_HINT}"
        )
    return detect.text_layout(path, lines, member, options)


def file_symbols(path: Path, options: LayoutOptions | None = None) -> set[str]:
    """Every symbol in a file: named by the file or its layout, or one pass over the columns
    that hold it."""
    layout = file_layout(path, options)
    if layout.symbols is not None:
        return set(layout.symbols)
    columns = list(layout.symbol_columns)
    if layout.read is not None:
        table = detect.table_columns(path, columns)
    else:
        table = pa_csv.read_csv(
            pa.PythonFile(_open_text(path), mode="r"),
            read_options=pa_csv.ReadOptions(
                skip_rows=1 if layout.header else 0, column_names=list(layout.columns)
            ),
            parse_options=pa_csv.ParseOptions(
                quote_char=False, invalid_row_handler=lambda _: "skip"
            ),
            convert_options=pa_csv.ConvertOptions(
                include_columns=columns, column_types={c: pa.string() for c in columns}
            ),
        )
    return {s for s in layout.symbols_of(table).unique().to_pylist() if s}


def group_by_symbols(
    paths: Sequence[Path], options: LayoutOptions | None = None
) -> list[list[Path]]:
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
        for sym in file_symbols(path, options):
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

    def __init__(
        self,
        path: Path,
        candle_ms: int,
        block_bytes: int,
        skip_rows: int = 0,
        skip_bad_through: int = 0,
        options: LayoutOptions | None = None,
    ) -> None:
        self.path = path
        self.name = path.name
        self.layout = file_layout(path, options)
        self.origin = self.layout.origin
        self.candle_ms = self.layout.candle_ms or candle_ms  # a file that names its own wins
        self._bad: list[tuple[int, str]] = []
        self._bad_lock = threading.Lock()
        self._unpassed_bad: set[int] = set()  # reported bad lines not yet numbered past
        # the next row's number: CSV lines count the header; table rows count from 1
        self._next_line = 2 if self.layout.read is None and self.layout.header else 1
        self.rows_read = 0
        self._skip_rows = skip_rows
        self._skip_bad_through = skip_bad_through
        self._stream: _TextStream | None = None
        self._broken: tuple[str, str] | None = None  # table read error: (what, detail)
        self._reported = False
        self.size = _file_size(path)
        self.finished = False
        self._table_rows = None if self.layout.read is None else detect.table_rows(path)
        self._batch_rows = 0  # rows of the table batches read (their share of the file)
        self._batches = self._open(block_bytes)

    def _on_invalid(self, row: pa_csv.InvalidRow) -> str:
        with self._bad_lock:
            self._bad.append((int(row.number or 0), row.text))
        return "skip"

    def _open(self, block_bytes: int) -> Iterator[pa.RecordBatch]:
        if self.layout.read is not None:
            return self.layout.read(self.path, max(1024, block_bytes // 64))
        names = self.layout.columns
        self._stream = _open_text(self.path)
        reader = pa_csv.open_csv(
            pa.PythonFile(self._stream, mode="r"),
            read_options=pa_csv.ReadOptions(
                use_threads=False,
                block_size=block_bytes,
                skip_rows=1 if self.layout.header else 0,
                column_names=list(names),
            ),
            parse_options=pa_csv.ParseOptions(
                quote_char=False, ignore_empty_lines=False, invalid_row_handler=self._on_invalid
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types={c: pa.string() for c in names},
                strings_can_be_null=True,
                null_values=[""],
            ),
        )
        return iter(reader)

    def _line_numbers(self, n: int) -> np.ndarray:
        """Line numbers of the next ``n`` decodable rows, skipping undecodable lines.

        Arrow reports a bad line while parsing ahead, possibly before the batch that would
        have held it, so reported lines wait in ``_unpassed_bad`` until numbering reaches them.
        """
        if self._stream is None:
            out = np.arange(self._next_line, self._next_line + n, dtype=np.int64)
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

    def consumed_bytes(self) -> int:
        """Bytes of the file on disk consumed so far (its size once it is read to the end):
        the replay's progress. A text file: the compressed bytes decompressed up to the last
        line numbered so far; a Parquet or Feather file: its share of the rows read; JSON:
        nothing until its end."""
        if self.finished:
            return self.size
        if self._stream is not None:  # where the last line numbered so far ended
            line, marks = self._next_line - 1, self._stream.marks
            while len(marks) > 1 and marks[0][0] < line:
                marks.popleft()
            at = marks[0][1] if marks and marks[0][0] >= line else self._stream.position()
            return min(self.size, at)
        if self._table_rows:
            return min(self.size, self.size * self._batch_rows // self._table_rows)
        return 0

    def _next_batch(self) -> pa.RecordBatch | None:
        try:
            batch = next(self._batches, None)
            self._batch_rows += 0 if batch is None else batch.num_rows
            return batch
        except DamagedFile as exc:  # JSON that breaks off
            self._broken = (exc.what, exc.detail[:200])
            return None
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
            what, detail, partial = (
                self._stream.failure,
                self._stream.detail,
                self._stream.partial,
            )
            row = max(self._next_line, self._stream.lines + 1)
        elif self._broken is not None:
            (what, detail), partial, row = self._broken, "", self._next_line
        else:
            return []
        unit = "compressed stream" if self._stream is not None else "file"
        reason = (
            f"file truncated: the {unit} ended at row {row} before its end"
            if what == "truncated"
            else f"file corrupt: the {unit} could not be read from row {row} on ({detail})"
        )
        if row <= self._skip_bad_through:  # emitted before the resume
            return []
        log.warning(
            "warning: %s: %s; the rows before it were replayed, the rest of the file "
            "is one dead letter",
            self.path,
            reason,
        )
        return [(self.name, row, partial[:1000], reason)]

    def next_block(self) -> TickRows | None:
        """The next decoded block, or None at end of file."""
        while True:
            batch = self._next_batch()
            with self._bad_lock:
                bad, self._bad = self._bad, []
            damage = self._damage() if batch is None else []
            if batch is None and not bad and not damage:
                self.finished = True
                return None
            n = 0 if batch is None else batch.num_rows
            self._unpassed_bad.update(line for line, _ in bad)
            line_no = self._line_numbers(n)
            extra = [
                (
                    self.name,
                    line,
                    text,
                    f"not a row of the {self.layout.name} layout ({len(text.split(','))} fields)",
                )
                for line, text in bad
                if line > self._skip_bad_through
            ]
            extra += damage
            if batch is None:
                rows = decode_table(
                    pa.RecordBatch.from_pylist(
                        [], schema=pa.schema([(c, pa.string()) for c in LAYOUTS[self.origin]])
                    ),
                    self.origin,
                    self.name,
                    0,
                    self.candle_ms,
                )
            else:
                rows = self._decode(batch)
            rows.row_no = line_no
            rows.extra_dead = extra
            if self._skip_rows:
                k = min(self._skip_rows, len(rows))
                self._skip_rows -= k
                rows = _with_extra(rows.slice(k, len(rows)), extra)
            if len(rows) == 0 and not rows.extra_dead:
                continue
            return rows

    def _decode(self, batch: pa.RecordBatch) -> TickRows:
        """A batch of the file -> rows: converted to the internal layout first (keeping the
        file's own text as the rows' raw input) unless it is one already."""
        if self.layout.convert is None:
            return decode_table(batch, self.origin, self.name, 0, self.candle_ms)
        converted = self.layout.convert(batch)
        rows = decode_table(converted.batch, self.origin, self.name, 0, self.candle_ms)
        rows.errors.update(converted.errors)  # the conversion's reason is the precise one
        rows.raw_batch = batch if converted.raw is None else converted.raw
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
    def __init__(
        self,
        name: str,
        paths: Sequence[Path],
        candle_ms: int,
        block_bytes: int,
        speed: float,
        resume: ReplayState | None,
        options: LayoutOptions | None = None,
    ) -> None:
        self.name = name
        self.seq = 0 if resume is None else resume.seq
        consumed = {} if resume is None else resume.consumed
        self.cursors = []
        for p in paths:
            rows, bad = consumed.get(p.name, (0, 0))
            cur = _Cursor(FileBlocks(p, candle_ms, block_bytes, rows, bad, options))
            cur.emitted_rows, cur.emitted_bad_through = rows, bad
            self.cursors.append(cur)
        self.speed = speed
        self._bytes_reported = 0  # of the files' bytes, handed out as blocks' input_bytes
        self._ready: TickRows | None = None
        self._ended = False
        self._wall0: float | None = None
        self._event0: int | None = None
        self._awake: datetime | None = None

    def _merged_block(self) -> TickRows | None:
        for c in self.cursors:
            c.fill()
        live = [
            c
            for c in self.cursors
            if c.pending is not None and (len(c.pending) or c.pending.extra_dead)
        ]
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
                return [self._counted(TickRows.end_of(self.name, self.seq - 1))]
        block = self._ready
        if self.speed > 0 and len(block):
            due = self._paced(block)
            if due is None:
                return []
            block = due
        else:
            self._ready = None
        block.partition = self.name
        block.seq = self.seq
        self.seq += 1
        return [self._counted(block)]

    def _counted(self, block: TickRows) -> TickRows:
        """``block`` with the bytes of the input files consumed since the last block (the
        progress line's share of the input; all blocks of a replay add up to the files'
        sizes)."""
        consumed = sum(c.blocks.consumed_bytes() for c in self.cursors)
        block.input_bytes = max(0, consumed - self._bytes_reported)
        self._bytes_reported = max(consumed, self._bytes_reported)
        return block

    def _paced(self, block: TickRows) -> TickRows | None:
        """The prefix of ``block`` that is due now; the rest waits for its time."""
        now = time.monotonic()
        key = _order_key(block.ts_ms)
        if self._wall0 is None:
            known = key[key > NEVER]
            self._wall0, self._event0 = now, int(known[0]) if len(known) else 0
        assert self._event0 is not None
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
            held = {self._ready.sources[int(k)]: int(n) for k, n in zip(names, counts, strict=True)}
        return ReplayState(
            self.seq,
            {
                c.blocks.name: (c.emitted_rows - held.get(c.blocks.name, 0), c.emitted_bad_through)
                for c in self.cursors
            },
        )


class ReplaySource(FixedPartitionedSource[TickRows, ReplayState]):
    """Historical files as a partitioned, resumable, optionally paced source.

    ``layouts``: the settings that steer layout detection (``QT_SYMBOL_PREFIX``,
    ``QT_TICKS_COLUMNS``, ``QT_TICKS_TS_UNIT``); by default those of the environment.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        candle_seconds: int = 60,
        block_bytes: int = 1 << 20,
        speed: float = 0.0,
        layouts: LayoutOptions | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.options = layouts or LayoutOptions.from_env()
        for p in self.paths:
            file_layout(p, self.options)  # fail fast, with the file name, on an unknown layout
        self.candle_ms = candle_seconds * 1000
        self.block_bytes = block_bytes
        self.speed = speed
        self._groups: dict[str, list[Path]] | None = None
        self._lock = threading.Lock()

    def groups(self) -> dict[str, list[Path]]:
        with self._lock:
            if self._groups is None:
                self._groups = {
                    "+".join(p.name for p in g): g
                    for g in group_by_symbols(self.paths, self.options)
                }
            return self._groups

    def list_parts(self) -> list[str]:
        return list(self.groups())

    def build_part(
        self, step_id: str, for_part: str, resume_state: ReplayState | None
    ) -> ReplayPartition:
        paths = self.groups().get(for_part)
        if paths is None:
            raise ValueError(
                f"{step_id}: no replay partition {for_part!r} (input files changed "
                "since the recovery snapshot?)"
            )
        return ReplayPartition(
            for_part,
            paths,
            self.candle_ms,
            self.block_bytes,
            self.speed,
            resume_state,
            self.options,
        )
