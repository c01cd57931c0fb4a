"""Replay source: grouping, event-time merge, line accounting, resume, Parquet, pacing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from connectors.replay import (
    InputFileError,
    MissingInputError,
    ReplaySource,
    expand_paths,
    group_by_symbols,
)
from schemas.ticks import TickRows

TRADES = "trades/binance_spot_BTCUSDT-ETHUSDT_2024-08-08_trades.csv.gz"
QUOTES = "quotes/binance_spot_BTCUSDT-ETHUSDT_2024-08-08_quotes.csv.gz"
OTHER = "candles/bitstamp_BTCUSD_1m_2020-01-01.csv.gz"


def drain(partition, limit: int | None = None) -> list[TickRows]:
    out: list[TickRows] = []
    try:
        while limit is None or len(out) < limit:
            out.extend(partition.next_batch())
    except StopIteration:
        pass
    return out


def test_files_sharing_symbols_form_one_partition(shared_data: Path) -> None:
    paths = [shared_data / TRADES, shared_data / QUOTES, shared_data / OTHER]
    groups = group_by_symbols(paths)
    assert sorted(len(g) for g in groups) == [1, 2]
    src = ReplaySource(paths)
    assert len(src.list_parts()) == 2


def test_merge_is_in_event_time_and_keeps_every_row(shared_data: Path) -> None:
    src = ReplaySource([shared_data / TRADES, shared_data / QUOTES], block_bytes=1 << 16)
    (part,) = src.list_parts()
    blocks = drain(src.build_part("t", part, None))
    ts = np.concatenate([b.ts_ms for b in blocks])
    assert len(ts) == 34_419 + 131_932
    assert np.all(np.diff(ts) >= 0)  # both files are sorted, so the merge is too
    assert [b.seq for b in blocks] == list(range(len(blocks)))
    # each row remembers its file and line
    origins = {b.sources[s] for b in blocks for s in np.unique(b.src)}
    assert origins == {Path(TRADES).name, Path(QUOTES).name}


def test_resume_from_a_snapshot_continues_exactly(shared_data: Path) -> None:
    paths = [shared_data / TRADES, shared_data / QUOTES]
    src = ReplaySource(paths, block_bytes=1 << 15)
    (part,) = src.list_parts()
    whole = drain(src.build_part("t", part, None))
    first = src.build_part("t", part, None)
    head = drain(first, limit=7)
    state = first.snapshot()
    tail = drain(src.build_part("t", part, state))
    assert tail[0].seq == head[-1].seq + 1

    def key(blocks: list[TickRows]) -> list[tuple]:
        return [
            (b.sources[s], int(r), int(t))
            for b in blocks
            for s, r, t in zip(b.src, b.row_no, b.ts_ms, strict=True)
        ]

    assert key(head) + key(tail) == key(whole)


def test_parquet_replays_like_csv(shared_data: Path, tmp_path: Path) -> None:
    csv_path = shared_data / TRADES
    table = pa_csv.read_csv(
        csv_path,
        convert_options=pa_csv.ConvertOptions(
            column_types={"ts": pa.string(), "side": pa.string()}
        ),
    )
    pq_path = tmp_path / "trades.parquet"
    pq.write_table(table, pq_path)
    a = drain(ReplaySource([csv_path]).build_part("t", csv_path.name, None))
    b = drain(ReplaySource([pq_path]).build_part("t", pq_path.name, None))
    for col in ("ts_ms", "price", "size", "side"):
        np.testing.assert_array_equal(
            np.concatenate([x.__getattribute__(col) for x in a]),
            np.concatenate([x.__getattribute__(col) for x in b]),
        )


def test_paced_replay_emits_the_same_rows_in_time_order(shared_data: Path) -> None:
    path = shared_data / "quotes/truefx_USDJPY_2013-01-01_quotes.csv.gz"  # spans 35 minutes
    fast = drain(ReplaySource([path]).build_part("t", path.name, None))
    paced_part = ReplaySource([path], speed=20_000.0).build_part("t", path.name, None)
    paced = drain(paced_part)
    assert len(paced) > len(fast)  # pacing releases rows as their time comes
    np.testing.assert_array_equal(
        np.concatenate([b.ts_ms for b in paced]), np.concatenate([b.ts_ms for b in fast])
    )


def test_bad_spec_and_bad_header_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match="no file matches"):
        expand_paths(str(tmp_path / "nothing*.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("time,sym,px\n1,2,3\n")
    with pytest.raises(InputFileError, match=r"bad\.csv: unrecognised header 'time,sym,px'"):
        ReplaySource([bad])


REAL = "quotes/histdata_EURUSD_2020-01-01_quotes.csv.gz"  # 9,500 rows


def _rows_and_dead(path: Path, resume=None) -> tuple[list[int], list, object]:
    part = ReplaySource([path], block_bytes=1 << 14).build_part("t", path.name, resume)
    blocks = drain(part)
    rows = [int(r) for b in blocks for r in b.row_no]
    return rows, [d for b in blocks for d in b.extra_dead], part


@pytest.mark.parametrize("name", ["plain.csv", "named_plain.csv.bz2"])
def test_unusable_files_name_themselves(tmp_path: Path, name: str) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(InputFileError, match=r"empty\.csv: the file is empty"):
        ReplaySource([empty])
    binary = tmp_path / "binary.csv.gz"
    binary.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(InputFileError, match=r"binary\.csv\.gz: not gzip-compressed"):
        ReplaySource([binary])
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00\n")
    with pytest.raises(InputFileError, match=r"garbage\.csv: not a CSV text file"):
        ReplaySource([garbage])
    parquet = tmp_path / "not.parquet"
    parquet.write_text("ts,symbol,price,size,side\n")
    with pytest.raises(InputFileError, match=r"not\.parquet: not a readable Parquet file"):
        ReplaySource([parquet])


def test_gzip_is_recognised_by_its_signature_and_members_concatenate(
    tmp_path: Path, shared_data: Path
) -> None:
    import gzip

    text = gzip.decompress((shared_data / REAL).read_bytes())
    lines = text.splitlines(keepends=True)
    two = tmp_path / "two_members.csv"  # a gzip file without .gz, in two gzip members
    two.write_bytes(gzip.compress(b"".join(lines[:5000])) + gzip.compress(b"".join(lines[5000:])))
    rows, dead, _ = _rows_and_dead(two)
    assert rows == list(range(2, len(lines) + 1)) and dead == []


def test_a_truncated_file_replays_its_readable_rows_and_one_dead_letter(
    tmp_path: Path, shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    whole, _, _ = _rows_and_dead(shared_data / REAL)
    data = (shared_data / REAL).read_bytes()
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING"):
        rows, dead, part = _rows_and_dead(cut)
    assert 0 < len(rows) < len(whole) and rows == whole[: len(rows)]  # whole rows, in order
    assert len(dead) == 1
    name, row, raw, reason = dead[0]
    assert (name, row) == ("cut.csv.gz", rows[-1] + 1)
    assert reason == f"file truncated: the compressed stream ended at row {row} before its end"
    assert raw == "" or not raw.endswith("\n")  # the cut line, kept as the dead letter's raw
    assert [r.getMessage() for r in caplog.records] == [
        f"warning: {cut}: {reason}; the rows before it were replayed, the rest of the file is "
        "one dead letter"
    ]
    # a resume after the dead letter went out does not send it again
    again, dead_again, _ = _rows_and_dead(cut, part.snapshot())
    assert again == [] and dead_again == []


def test_a_corrupt_file_replays_its_readable_rows_and_one_dead_letter(
    tmp_path: Path, shared_data: Path
) -> None:
    # gzip checks its data at the end of a member (CRC-32): a wrong checksum is found after
    # the rows, which then all replay; trailing bytes that are not gzip are found there too
    whole, _, _ = _rows_and_dead(shared_data / REAL)
    data = bytearray((shared_data / REAL).read_bytes())
    data[-8] ^= 0xFF
    bad = tmp_path / "bad_crc.csv.gz"
    bad.write_bytes(bytes(data))
    rows, dead, _ = _rows_and_dead(bad)
    assert rows == whole and len(dead) == 1 and dead[0][1] == whole[-1] + 1
    assert dead[0][3] == (
        f"file corrupt: the compressed stream could not be read from row "
        f"{dead[0][1]} on (zlib: Error -3 while decompressing data: incorrect "
        "data check)"
    )
    tail = tmp_path / "tail.csv.gz"
    tail.write_bytes((shared_data / REAL).read_bytes() + b"not gzip")
    rows, dead, _ = _rows_and_dead(tail)
    assert rows == whole and [d[3] for d in dead] == [
        f"file corrupt: the compressed stream could not be read from row {whole[-1] + 1} on "
        "(unexpected bytes after the compressed data)"
    ]


def test_resume_of_a_paced_replay_rereads_what_pacing_held_back(shared_data: Path) -> None:
    path = shared_data / "quotes/truefx_USDJPY_2013-01-01_quotes.csv.gz"
    whole = np.concatenate(
        [b.row_no for b in drain(ReplaySource([path]).build_part("t", path.name, None))]
    )
    paced = ReplaySource([path], speed=20_000.0).build_part("t", path.name, None)
    head = drain(paced, limit=3)
    assert paced._ready is not None and len(paced._ready)  # part of a block is held back
    tail = drain(ReplaySource([path]).build_part("t", path.name, paced.snapshot()))
    got = np.concatenate([b.row_no for b in head + tail])
    np.testing.assert_array_equal(got, whole)


def test_the_text_stream_never_hands_arrow_more_than_it_asked_for(tmp_path: Path) -> None:
    """Arrow copies a read() into a buffer of the size it asked for: a longer answer would
    overrun it. Invalid UTF-8 grows when repaired (1 byte -> 3) and lines are kept whole."""
    from connectors.replay import _TextStream

    raw = b"ts,symbol,price,size,side\n" + b"".join(
        b"2024-01-01T00:00:%02d.000Z,A\xff\xfe,%d,1,buy\n" % (i % 60, i) for i in range(500)
    )
    path = tmp_path / "bytes.csv"
    path.write_bytes(raw)
    with _TextStream(path) as stream:
        chunks = []
        for size in [7, 100, 1, 4096, 33] * 1000:
            chunk = stream.read(size)
            assert len(chunk) <= size
            chunks.append(chunk)
    assert b"".join(chunks) == raw.decode("utf-8", "replace").encode()
