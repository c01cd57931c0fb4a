"""Replay source: grouping, event-time merge, line accounting, resume, Parquet, pacing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from connectors.replay import InputFileError, ReplaySource, expand_paths, group_by_symbols
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
        return [(b.sources[s], int(r), int(t)) for b in blocks
                for s, r, t in zip(b.src, b.row_no, b.ts_ms, strict=True)]

    assert key(head) + key(tail) == key(whole)


def test_parquet_replays_like_csv(shared_data: Path, tmp_path: Path) -> None:
    csv_path = shared_data / TRADES
    table = pa_csv.read_csv(csv_path, convert_options=pa_csv.ConvertOptions(
        column_types={"ts": pa.string(), "side": pa.string()}))
    pq_path = tmp_path / "trades.parquet"
    pq.write_table(table, pq_path)
    a = drain(ReplaySource([csv_path]).build_part("t", csv_path.name, None))
    b = drain(ReplaySource([pq_path]).build_part("t", pq_path.name, None))
    for col in ("ts_ms", "price", "size", "side"):
        np.testing.assert_array_equal(np.concatenate([x.__getattribute__(col) for x in a]),
                                      np.concatenate([x.__getattribute__(col) for x in b]))


def test_paced_replay_emits_the_same_rows_in_time_order(shared_data: Path) -> None:
    path = shared_data / "quotes/truefx_USDJPY_2013-01-01_quotes.csv.gz"  # spans 35 minutes
    fast = drain(ReplaySource([path]).build_part("t", path.name, None))
    paced_part = ReplaySource([path], speed=20_000.0).build_part("t", path.name, None)
    paced = drain(paced_part)
    assert len(paced) > len(fast)  # pacing releases rows as their time comes
    np.testing.assert_array_equal(np.concatenate([b.ts_ms for b in paced]),
                                  np.concatenate([b.ts_ms for b in fast]))


def test_bad_spec_and_bad_header_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no file matches"):
        expand_paths(str(tmp_path / "nothing*.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("time,sym,px\n1,2,3\n")
    with pytest.raises(InputFileError, match=r"bad\.csv: unrecognised header 'time,sym,px'"):
        ReplaySource([bad])


def test_resume_of_a_paced_replay_rereads_what_pacing_held_back(shared_data: Path) -> None:
    path = shared_data / "quotes/truefx_USDJPY_2013-01-01_quotes.csv.gz"
    whole = np.concatenate([b.row_no for b in drain(
        ReplaySource([path]).build_part("t", path.name, None))])
    paced = ReplaySource([path], speed=20_000.0).build_part("t", path.name, None)
    head = drain(paced, limit=3)
    assert paced._ready is not None and len(paced._ready)  # part of a block is held back
    tail = drain(ReplaySource([path]).build_part("t", path.name, paced.snapshot()))
    got = np.concatenate([b.row_no for b in head + tail])
    np.testing.assert_array_equal(got, whole)
