"""Foreign layouts (connectors/layouts): real files of ../shared/data, rewritten as Binance
public data, Tardis.dev CSV, freqtrade candles and column-mapped CSV/Parquet, replay into
bars that are bit-identical to those of the original rows; and clear one-line errors."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as pa_feather
import pyarrow.parquet as pq
import pytest

from connectors.layouts.base import LayoutOptions, LayoutSettingError
from connectors.replay import InputFileError, ReplaySource, file_layout
from schemas.timeutil import parse_iso, to_ms

CANDLES = "candles/binance_spot_XRPETH_1m_2019-10-11.csv.gz"  # 2,469 rows, BINANCE:XRPETH
BITTREX = "candles/bittrex_10altBTC_1m_2018-01-20.csv.gz"  # 10 symbols
TRADES = "trades/binance_spot_BTCUSDT_2023-04-05_trades.csv.gz"  # 3,144 rows, with sides
BITSTAMP = "trades/bitstamp_BTCUSD_2011-09_2012-05_trades.csv.gz"  # side unknown
QUOTES = "quotes/histdata_EURUSD_2020-01-01_quotes.csv.gz"  # 9,500 rows
TRUEFX = "quotes/truefx_USDJPY_2013-01-01_quotes.csv.gz"  # 1,000 rows, one crossed
FXCM = "quotes/fxcm_EURUSD-NZDUSD_2014-05_quotes.csv.gz"
ROWS = 3000

Rows = list[dict[str, str]]


def original(
    shared_data: Path,
    relpath: str,
    tmp_path: Path,
    rows: int = ROWS,
) -> tuple[Path, Rows]:
    """The first ``rows`` rows of a real file, as a file of the project's layout (the
    reference) and as dicts of its fields (to rewrite in another layout)."""
    with gzip.open(shared_data / relpath, "rt") as f:
        lines = list(itertools.islice(f, rows + 1 if rows else None))
    ref = tmp_path / f"original_{Path(relpath).name.removesuffix('.gz')}"
    ref.write_text("".join(lines))
    names = lines[0].strip().split(",")
    return ref, [dict(zip(names, ln.rstrip("\n").split(","), strict=True)) for ln in lines[1:]]


def ms(row: dict[str, str]) -> int:
    return to_ms(parse_iso(row["ts"]))


def write_csv(path: Path, header: str | None, lines: list[str], zipped: bool = False) -> Path:
    text = "".join(f"{ln}\n" for ln in ([header] if header else []) + lines)
    if zipped:
        path = path.with_suffix(".zip")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(path.with_suffix(".csv").name, text)
    else:
        path.write_text(text)
    return path


def bar_key(bar, symbols: Callable[[str], str] = lambda s: s) -> tuple:
    """A bar, bit for bit (floats as hex, so NaN equals NaN), symbol mapped back."""
    values = dataclasses.astuple(bar)
    return (symbols(values[0]), *(v.hex() if isinstance(v, float) else v for v in values[1:]))


def assert_same_bars(
    run_market,
    reference: Path,
    converted: str | Path,
    symbols: Callable[[str], str] = lambda s: s,
    **settings,
) -> None:
    ref_bars, _, ref_val = run_market(str(reference), **settings)
    bars, _, validated = run_market(str(converted), **settings)
    assert len(ref_bars) > 5
    assert sorted(bar_key(b) for b in ref_bars) == sorted(bar_key(b, symbols) for b in bars)
    dead = [d.reason for v in validated for d in v.dead]
    assert sorted(dead) == sorted(d.reason for v in ref_val for d in v.dead)


# ---------------------------------------------------------------------------------------------
# Binance public data
# ---------------------------------------------------------------------------------------------


def kline_lines(rows: Rows, unit: int) -> list[str]:
    out = []
    for r in rows:
        t = ms(r)
        out.append(
            f"{t * unit},{r['open']},{r['high']},{r['low']},{r['close']},{r['volume']},"
            f"{(t + 59_999) * unit},0,1,0,0,0"
        )
    return out


KLINES_HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    "taker_buy_volume,taker_buy_quote_volume,ignore"
)


@pytest.mark.parametrize(
    ("header", "unit", "zipped"),
    [(False, 1, False), (True, 1, True), (False, 1000, True), (True, 1000, False)],
    ids=["csv-ms", "zip-header-ms", "zip-us", "csv-header-us"],
)
def test_binance_klines_replay_like_the_candles(
    shared_data: Path, tmp_path: Path, run_market, header: bool, unit: int, zipped: bool
) -> None:
    ref, rows = original(shared_data, CANDLES, tmp_path)
    path = write_csv(
        tmp_path / "XRPETH-1m-2019-10-11.csv",
        KLINES_HEADER if header else None,
        kline_lines(rows, unit),
        zipped,
    )
    layout = file_layout(path, LayoutOptions("BINANCE:", "", "auto"))
    assert (layout.name, layout.candle_ms, layout.header) == ("Binance klines", 60_000, header)
    assert ("µs" if unit == 1000 else "ms") in layout.why
    assert_same_bars(run_market, ref, path)


def test_binance_trades_and_agg_trades_replay_like_the_trades(
    shared_data: Path, tmp_path: Path, run_market
) -> None:
    ref, rows = original(shared_data, TRADES, tmp_path)
    maker = {"sell": "True", "buy": "False"}  # a maker buyer: the taker sold
    trades = write_csv(
        tmp_path / "BTCUSDT-trades-2023-04-05.csv",
        None,
        [
            f"{i},{r['price']},{r['size']},0,{ms(r) * 1000},{maker[r['side']]},True"
            for i, r in enumerate(rows)
        ],
        zipped=True,
    )
    agg = write_csv(
        tmp_path / "BTCUSDT-aggTrades-2023-04-05.csv",
        "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker",
        [
            f"{i},{r['price']},{r['size']},{i},{i},{ms(r)},{maker[r['side']].lower()}"
            for i, r in enumerate(rows)
        ],
    )
    for path in (trades, agg):
        assert_same_bars(run_market, ref, path, bar_seconds=5)


def test_binance_book_ticker_replays_like_the_quotes(
    shared_data: Path, tmp_path: Path, run_market
) -> None:
    ref, rows = original(shared_data, TRUEFX, tmp_path, rows=0)
    path = write_csv(
        tmp_path / "USDJPY-bookTicker-2013-01-01.csv",
        "update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,"
        "transaction_time,event_time",
        [
            f"{i},{r['bid']},{r['bid_size']},{r['ask']},{r['ask_size']},{ms(r)},{ms(r) + 3}"
            for i, r in enumerate(rows)
        ],
    )
    assert_same_bars(
        run_market,
        ref,
        path,
        bar_seconds=10,  # and the one crossed quote
        symbol_prefix="TRUEFX:",
    )


# ---------------------------------------------------------------------------------------------
# Tardis.dev
# ---------------------------------------------------------------------------------------------


def test_tardis_trades_and_quotes_replay_like_the_originals(
    shared_data: Path, tmp_path: Path, run_market
) -> None:
    ref, rows = original(shared_data, BITSTAMP, tmp_path)
    trades = tmp_path / "bitstamp_trades_2011-09-13_BTCUSD.csv.gz"
    with gzip.open(trades, "wt") as f:
        f.write("exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n")
        for i, r in enumerate(rows):
            f.write(
                f"bitstamp,BTCUSD,{ms(r) * 1000},{ms(r) * 1000 + 137},{i},"
                f"{r['side'] or 'unknown'},{r['price']},{r['size']}\n"
            )
    assert_same_bars(run_market, ref, trades, bar_seconds=3600)

    ref, rows = original(shared_data, QUOTES, tmp_path)
    quotes = tmp_path / "histdata_quotes_2020-01-01_EURUSD.csv"
    quotes.write_text(
        "exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,"
        "bid_price,bid_amount\n"
        + "".join(
            f"histdata,EURUSD,{ms(r) * 1000 + 999},{ms(r) * 1000 + 5000},"
            f"{r['ask_size']},{r['ask']},{r['bid']},{r['bid_size']}\n"
            for r in rows
        )
    )
    layout = file_layout(quotes, LayoutOptions("BINANCE:", "", "auto"))
    assert layout.name == "Tardis.dev quotes"
    assert_same_bars(run_market, ref, quotes, bar_seconds=10)  # µs truncate to the ms


def test_a_quoted_tardis_header_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "deribit_trades.csv"  # (Arrow's CSV writer quotes header names)
    path.write_text(
        '"exchange","symbol","timestamp","local_timestamp","id","side","price",'
        '"amount"\nderibit,BTC-PERPETUAL,1585699202957000,1585699203957000,a,buy,'
        "6425.5,12\n"
    )
    layout = file_layout(path, OPTIONS)
    assert layout.name == "Tardis.dev trades"
    blocks, _ = drain(ReplaySource([path], layouts=OPTIONS))
    assert [(b.symbol[0], int(b.ts_ms[0]), int(b.side[0])) for b in blocks if len(b)] == [
        ("DERIBIT:BTC-PERPETUAL", 1585699202957, 1)
    ]


# ---------------------------------------------------------------------------------------------
# freqtrade
# ---------------------------------------------------------------------------------------------


def _by_pair(rows: Rows) -> dict[str, Rows]:
    pairs: dict[str, Rows] = {}
    for r in rows:
        pairs.setdefault(
            r["symbol"].removeprefix("BITTREX:").removesuffix("BTC") + "_BTC", []
        ).append(r)
    return pairs


@pytest.mark.parametrize("fmt", ["feather", "parquet", "json", "json.gz"])
def test_freqtrade_candles_replay_like_the_candles(
    shared_data: Path, tmp_path: Path, run_market, fmt: str
) -> None:
    ref, rows = original(shared_data, BITTREX, tmp_path, rows=4000)
    files = []
    for pair, prs in _by_pair(rows).items():
        path = tmp_path / f"{pair}-1m.{fmt}"
        if fmt in ("feather", "parquet"):  # as freqtrade writes them: date in ns, UTC
            table = pa.table(
                {
                    "date": pa.array(
                        [ms(r) * 1_000_000 for r in prs], pa.timestamp("ns", tz="UTC")
                    ),
                    **{
                        c: pa.array([float(r[c]) for r in prs])
                        for c in ("open", "high", "low", "close", "volume")
                    },
                }
            )
            if fmt == "feather":
                pa_feather.write_feather(table, path, compression="lz4")
            else:
                pq.write_table(table, path)
        else:
            data = json.dumps(
                [
                    [ms(r), *(float(r[c]) for c in ("open", "high", "low", "close", "volume"))]
                    for r in prs
                ]
            )
            path.write_bytes(gzip.compress(data.encode()) if fmt.endswith("gz") else data.encode())
        files.append(path)
    assert len(files) == 10
    assert file_layout(files[0], LayoutOptions("BITTREX:", "", "auto")).symbols == {
        "BITTREX:" + files[0].name.split("-")[0].replace("_", "")
    }
    assert_same_bars(run_market, ref, ",".join(map(str, files)), symbol_prefix="BITTREX:")


# ---------------------------------------------------------------------------------------------
# Any CSV / Parquet through QT_TICKS_COLUMNS
# ---------------------------------------------------------------------------------------------


def test_mapped_csv_with_seconds_replays_like_the_quotes(
    shared_data: Path, tmp_path: Path, run_market
) -> None:
    ref, rows = original(shared_data, FXCM, tmp_path)
    path = tmp_path / "my_quotes.csv"
    path.write_text(
        "pair,when,b,a,note\n"
        + "".join(
            f"{r['symbol']},{ms(r) // 1000}.{ms(r) % 1000:03d},{r['bid']},{r['ask']},x\n"
            for r in rows
        )
    )
    mapping = "ts=when,symbol=pair,bid=b,ask=a"
    layout = file_layout(path, LayoutOptions("", mapping, "auto"))
    assert layout.name == "mapped quotes" and "ts as s" in layout.why
    assert_same_bars(run_market, ref, path, bar_seconds=5, ticks_columns=mapping)


def test_mapped_parquet_with_nanoseconds_and_a_fixed_symbol(
    shared_data: Path, tmp_path: Path, run_market
) -> None:
    ref, rows = original(shared_data, TRADES, tmp_path)
    path = tmp_path / "fills.parquet"
    pq.write_table(
        pa.table(
            {
                "t_ns": pa.array([ms(r) * 1_000_000 + 123_456 for r in rows], pa.int64()),
                "px": pa.array([float(r["price"]) for r in rows]),
                "qty": pa.array([r["size"] for r in rows]),
                "aggressor": pa.array([r["side"] for r in rows]),
            }
        ),
        path,
        row_group_size=1000,
    )
    assert_same_bars(
        run_market,
        ref,
        path,
        bar_seconds=5,
        ticks_columns=("ts=t_ns,price=px,size=qty,side=aggressor,symbol=@BINANCE:BTCUSDT"),
    )


@pytest.mark.parametrize("unit", ["auto", "iso"])
def test_mapped_csv_with_iso_times_replays_like_the_candles(
    shared_data: Path, tmp_path: Path, run_market, unit: str
) -> None:
    ref, rows = original(shared_data, CANDLES, tmp_path)
    path = tmp_path / "xrp.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("Open Time,O,H,L,C,Vol\n")
        for r in rows:
            f.write(
                f"{r['ts'].replace('Z', '+00:00')},{r['open']},{r['high']},{r['low']},"
                f"{r['close']},{r['volume']}\n"
            )
    assert_same_bars(
        run_market,
        ref,
        path,
        ticks_ts_unit=unit,
        ticks_columns=(
            "ts=Open Time,open=O,high=H,low=L,price=C,volume=Vol,symbol=@BINANCE:XRPETH"
        ),
    )


# ---------------------------------------------------------------------------------------------
# Accounting: dead letters, damage, recovery (one implementation for every layout)
# ---------------------------------------------------------------------------------------------


def drain(source: ReplaySource, resume=None, limit: int | None = None):
    part = source.build_part("t", source.list_parts()[0], resume)
    out = []
    try:
        while limit is None or len(out) < limit:
            out.extend(part.next_batch())
    except StopIteration:
        pass
    return out, part


OPTIONS = LayoutOptions("BINANCE:", "", "auto")


def test_a_bad_binance_row_is_a_dead_letter_with_its_line_and_text(tmp_path: Path) -> None:
    lines = kline_lines(
        [
            {
                "ts": "2024-01-01T00:00:00Z",
                "open": "1",
                "high": "2",
                "low": "1",
                "close": "2",
                "volume": "3",
            }
        ]
        * 4,
        1000,
    )
    lines[1] = "x" + lines[1]
    lines[2] = "1,2,3"
    path = write_csv(tmp_path / "BTCUSDT-1m-2024-01-01.csv", None, lines)
    blocks, _ = drain(ReplaySource([path], layouts=OPTIONS))
    errors = {int(b.row_no[i]): (why, b.raw([i])[0]) for b in blocks for i, why in b.errors.items()}
    assert errors == {2: (f"unparseable open_time: {lines[1].split(',')[0]!r}", lines[1])}
    assert [d[1:] for b in blocks for d in b.extra_dead] == [
        (3, "1,2,3", "not a row of the Binance klines layout (3 fields)")
    ]
    assert [int(r) for b in blocks for r in b.row_no] == [1, 2, 4]


def test_a_truncated_binance_zip_replays_its_readable_rows(
    tmp_path: Path, shared_data: Path
) -> None:
    _, rows = original(shared_data, TRADES, tmp_path)
    whole = write_csv(
        tmp_path / "BTCUSDT-trades-2023-04-05.csv",
        None,
        [f"{i},{r['price']},{r['size']},0,{ms(r)},False,True" for i, r in enumerate(rows)],
        zipped=True,
    )
    cut = tmp_path / "cut" / whole.name
    cut.parent.mkdir()
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # no central directory
    blocks, _ = drain(ReplaySource([cut], layouts=OPTIONS, block_bytes=1 << 14))
    got = [int(r) for b in blocks for r in b.row_no]
    dead = [d for b in blocks for d in b.extra_dead]
    assert 0 < len(got) < len(rows) and got == list(range(1, len(got) + 1))
    assert [(d[1], d[3]) for d in dead] == [
        (
            len(got) + 1,
            f"file truncated: the compressed stream ended at row {len(got) + 1} before its end",
        )
    ]
    # a wrong CRC-32 is found at the end: every row replays, then one dead letter
    data = bytearray(whole.read_bytes())
    at = data.index(b"PK\x01\x02") + 16  # the central directory's CRC of the member
    data[at : at + 4] = struct.pack("<I", struct.unpack("<I", data[at : at + 4])[0] ^ 1)
    bad = tmp_path / "crc" / whole.name
    bad.parent.mkdir()
    bad.write_bytes(bytes(data))
    blocks, _ = drain(ReplaySource([bad], layouts=OPTIONS))
    assert sum(len(b) for b in blocks) == len(rows)
    assert [d[3] for b in blocks for d in b.extra_dead] == [
        f"file corrupt: the compressed stream could not be read from row {len(rows) + 1} on "
        "(zip: CRC-32 mismatch)"
    ]


def test_resume_of_a_converted_layout_continues_exactly(shared_data: Path, tmp_path: Path) -> None:
    _, rows = original(shared_data, CANDLES, tmp_path, rows=0)
    path = write_csv(
        tmp_path / "XRPETH-1m-2019-10-11.csv", None, kline_lines(rows, 1000), zipped=True
    )
    source = ReplaySource([path], layouts=OPTIONS, block_bytes=1 << 13)
    whole, _ = drain(source)
    head, part = drain(source, limit=5)
    tail, _ = drain(source, part.snapshot())

    def key(blocks) -> list[tuple[int, int]]:
        return [(int(r), int(t)) for b in blocks for r, t in zip(b.row_no, b.ts_ms, strict=True)]

    assert len(whole) > 6 and key(head) + key(tail) == key(whole)


def test_files_named_by_symbol_group_without_a_scan(shared_data: Path, tmp_path: Path) -> None:
    from connectors.replay import group_by_symbols

    _, rows = original(shared_data, CANDLES, tmp_path, rows=100)
    a = write_csv(tmp_path / "XRPETH-1m-2019-10-11.csv", None, kline_lines(rows, 1))
    b = write_csv(tmp_path / "XRPETH-1m-2019-10-12.csv", None, kline_lines(rows, 1))
    c = write_csv(tmp_path / "BTCUSDT-1m-2019-10-11.csv", None, kline_lines(rows, 1))
    assert sorted(map(len, group_by_symbols([a, b, c], OPTIONS))) == [1, 2]


# ---------------------------------------------------------------------------------------------
# Errors: one line, naming the file and what was expected
# ---------------------------------------------------------------------------------------------


def test_an_unknown_layout_names_the_file_and_every_layout(tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_text("when,what,px\n1,2,3\n")
    with pytest.raises(InputFileError) as err:
        file_layout(path, OPTIONS)
    message = str(err.value)
    assert message.startswith(
        f"{path}: unrecognised header 'when,what,px'; expected the header "
        "of a trades, quotes or candles file"
    )
    for hint in ("Binance", "Tardis.dev", "freqtrade", "QT_TICKS_COLUMNS"):
        assert hint in message
    assert "\n" not in message


def test_a_zip_of_several_files_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-1m-2024-01.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("BTCUSDT-1m-2024-01-01.csv", "1,2\n")
        z.writestr("BTCUSDT-1m-2024-01-02.csv", "1,2\n")
    with pytest.raises(
        InputFileError,
        match=(
            r"BTCUSDT-1m-2024-01\.zip: the zip holds 2 files \(BTCUSDT-1m-2024-01-01\.csv, "
            r"BTCUSDT-1m-2024-01-02\.csv\); expected one CSV file"
        ),
    ):
        ReplaySource([path], layouts=OPTIONS)


def test_a_mapping_naming_a_missing_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("time,sym,last\n1700000000000,X,1.5\n")
    with pytest.raises(
        InputFileError,
        match=(
            r"mine\.csv: QT_TICKS_COLUMNS maps price to column 'close', which the file does "
            r"not have; its columns: time,sym,last"
        ),
    ):
        file_layout(path, LayoutOptions("", "ts=time,symbol=sym,price=close", "auto"))
    with pytest.raises(
        LayoutSettingError,
        match=r"QT_TICKS_COLUMNS: the trades layout needs "
        r"symbol",
    ):
        file_layout(path, LayoutOptions("", "ts=time,price=last", "auto"))
    with pytest.raises(
        LayoutSettingError,
        match=r"QT_TICKS_COLUMNS: size is not a field of "
        r"the candles layout",
    ):
        file_layout(
            path,
            LayoutOptions(
                "", "ts=time,open=last,high=last,low=last,close=last,size=last,symbol=@X", "auto"
            ),
        )


@pytest.mark.parametrize(
    ("values", "why"),
    [
        (["12345678", "12345679"], "12345678 is no time between 1990 and 2100 in any of s, ms"),
        (
            ["1700000000", "1700000000000"],
            "the values fit different units (1700000000 in s, 1700000000000 in ms)",
        ),
        (["2024-01-01 00:00:00"], "has no UTC offset"),
    ],
)
def test_an_ambiguous_time_unit_is_refused(tmp_path: Path, values: list[str], why: str) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("time,last\n" + "".join(f"{v},1.5\n" for v in values))
    options = LayoutOptions("", "ts=time,price=last,symbol=@X", "auto")
    with pytest.raises(InputFileError) as err:
        file_layout(path, options)
    assert str(err.value).startswith(
        f"{path}: cannot tell the unit of the ts column 'time' from its first values: "
    )
    assert why in str(err.value) and str(err.value).endswith(
        "set QT_TICKS_TS_UNIT to s, ms, us, ns or iso"
    )
    told = file_layout(path, LayoutOptions("", "ts=time,price=last,symbol=@X", "ms"))
    assert "ts as ms" in told.why


def test_files_whose_name_claims_a_layout_their_content_does_not_fit(tmp_path: Path) -> None:
    klines = write_csv(tmp_path / "BTCUSDT-1m-2024-01-01.csv", None, ["1704067200000,1,2,3"])
    with pytest.raises(
        InputFileError,
        match=r"named like Binance klines \(SYMBOL-INTERVAL-DATE"
        r"\) but its first line has 4 fields; expected "
        r"open_time,open,high",
    ):
        file_layout(klines, OPTIONS)
    monthly = write_csv(tmp_path / "BTCUSDT-1mo-2024-01.csv", None, ["1"])
    with pytest.raises(InputFileError, match=r"interval 1mo have no fixed length"):
        file_layout(monthly, OPTIONS)
    funding = tmp_path / "BTC_USDT_USDT-8h-funding_rate.feather"
    pa_feather.write_feather(
        pa.table({"date": pa.array([0], pa.timestamp("ms", tz="UTC"))}), funding
    )
    with pytest.raises(InputFileError, match=r"candle type 'funding_rate' is not a traded"):
        file_layout(funding, OPTIONS)
    naive = tmp_path / "BTC_USDT-1m.feather"
    pa_feather.write_feather(
        pa.table(
            {
                "date": pa.array([0], pa.timestamp("ms")),
                **{c: pa.array([1.0]) for c in ("open", "high", "low", "close", "volume")},
            }
        ),
        naive,
    )
    with pytest.raises(InputFileError, match=r"date column has no time zone"):
        file_layout(naive, OPTIONS)


def test_a_json_that_breaks_off_replays_the_candles_before(tmp_path: Path) -> None:
    data = json.dumps([[1_700_000_000_000 + 60_000 * i, 1, 2, 0.5, 1.5, 10] for i in range(50)])
    path = tmp_path / "ETH_BTC-1m.json"
    path.write_text(data[: len(data) - 40])
    blocks, _ = drain(ReplaySource([path], layouts=OPTIONS))
    rows = [int(r) for b in blocks for r in b.row_no]
    assert rows == list(range(1, len(rows) + 1)) and 45 < len(rows) < 50
    assert [d[1] for b in blocks for d in b.extra_dead] == [len(rows) + 1]
    assert {s for b in blocks for s in b.symbol} == {"BINANCE:ETHBTC"}
    bad = tmp_path / "LTC_BTC-1m.json"
    bad.write_text(json.dumps([[1_700_000_000_000, 1, 2, 0.5, 1.5, 10], [1, "x"], None]))
    blocks, _ = drain(ReplaySource([bad], layouts=OPTIONS))
    errors = {int(b.row_no[i]): (why, b.raw([i])[0]) for b in blocks for i, why in b.errors.items()}
    assert errors == {
        2: ("not a row of the freqtrade candles layout (6 numbers)", '[1, "x"]'),
        3: ("not a row of the freqtrade candles layout (6 numbers)", "null"),
    }


def test_options_reject_an_unknown_time_unit() -> None:
    with pytest.raises(LayoutSettingError, match=r"QT_TICKS_TS_UNIT='sec': expected one of auto"):
        LayoutOptions("", "", "sec")


def test_settings_reach_the_source_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("QT_SYMBOL_PREFIX", "X:")
    monkeypatch.setenv("QT_TICKS_TS_UNIT", "us")
    assert LayoutOptions.from_env() == LayoutOptions("X:", "", "us")


# ---------------------------------------------------------------------------------------------
# Progress: the bytes of the input each block consumed
# ---------------------------------------------------------------------------------------------


def _in_form(shared_data: Path, tmp_path: Path, form: str) -> list[Path]:
    """The XRPETH candles (2,469 real rows) as a file, or files, of ``form``."""
    native = shared_data / CANDLES
    if form == "csv.gz":
        return [native]
    _, rows = original(shared_data, CANDLES, tmp_path, rows=0)
    if form == "csv.bz2":
        import bz2

        path = tmp_path / "candles.csv.bz2"
        path.write_bytes(bz2.compress(gzip.decompress(native.read_bytes())))
        return [path]
    if form in ("zip", "two zips"):
        half = len(rows) // 2 if form == "two zips" else len(rows)
        return [
            write_csv(
                tmp_path / f"XRPETH-1m-2019-10-1{k}.csv", None, kline_lines(part, 1), zipped=True
            )
            for k, part in enumerate([rows[:half], rows[half:]][: 1 + (form == "two zips")])
        ]
    path = tmp_path / f"XRP_ETH-1m.{form}"
    if form == "json":
        path.write_text(
            json.dumps(
                [
                    [ms(r), *(float(r[c]) for c in ("open", "high", "low", "close", "volume"))]
                    for r in rows
                ]
            )
        )
        return [path]
    table = pa.table(
        {
            "date": pa.array([ms(r) for r in rows], pa.timestamp("ms", tz="UTC")),
            **{
                c: pa.array([float(r[c]) for r in rows])
                for c in ("open", "high", "low", "close", "volume")
            },
        }
    )
    if form == "parquet":
        pq.write_table(table, path, row_group_size=500)
    else:
        pa_feather.write_feather(table, path, chunksize=500)
    return [path]


@pytest.mark.parametrize(
    "form", ["csv.gz", "csv.bz2", "zip", "two zips", "parquet", "feather", "json"]
)
def test_blocks_carry_the_bytes_of_the_input_they_consumed(
    shared_data: Path, tmp_path: Path, form: str
) -> None:
    """``input_bytes`` (the progress line's share of the input): the blocks of a replay add
    up to the files' sizes on disk, and follow the rows read (Arrow's read-ahead aside)."""
    paths = _in_form(shared_data, tmp_path, form)
    size = sum(p.stat().st_size for p in paths)
    blocks, _ = drain(ReplaySource(paths, layouts=OPTIONS, block_bytes=1 << 13))
    assert sum(b.input_bytes for b in blocks) == size
    assert blocks[-1].final and sum(b.rows_in for b in blocks) == 2469
    if form == "json":  # parsed whole: counted at its end
        assert [b.input_bytes for b in blocks[:-1]] == [0] * (len(blocks) - 1)
        return
    if form == "csv.bz2":  # Arrow decompresses 64 KiB of the file at a time: all of this one
        return
    rows = done = 0
    shares = []
    for b in blocks[:-1]:
        rows, done = rows + b.rows_in, done + b.input_bytes
        shares.append((rows / 2469, done / size))
    assert len(shares) >= 3, shares
    assert all(abs(r - s) < 0.2 for r, s in shares), shares


def test_a_damaged_row_among_the_first_does_not_hide_the_time_unit(tmp_path: Path) -> None:
    """One time that fits no unit is a dead letter of its own, not a refused file."""
    path = tmp_path / "mine.csv"
    path.write_text("t,p\n1700000000,1.5\n99999999999999999999999,1.5\n1700000001,1.5\n")
    options = LayoutOptions("", "ts=t,price=p,symbol=@X", "auto")
    assert "ts as s" in file_layout(path, options).why
    blocks, _ = drain(ReplaySource([path], layouts=options))
    assert [(int(b.row_no[i]), why) for b in blocks for i, why in b.errors.items()] == [
        (3, "t out of range (cannot be represented): 99999999999999999999999")
    ]


def test_table_columns_of_the_wrong_type_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "fills.parquet"
    pq.write_table(pa.table({"t": pa.array([[1]]), "p": [True]}), path)
    with pytest.raises(
        InputFileError,
        match=r"fills\.parquet: column 't' \(ts\) is of type "
        r"list<element: int64>; expected times",
    ):
        file_layout(path, LayoutOptions("", "ts=t,price=p,symbol=@X", "ms"))
    pq.write_table(pa.table({"t": pa.array([1]), "p": [True]}), path)
    with pytest.raises(
        InputFileError,
        match=r"column 'p' \(price\) is of type bool; expected "
        r"numbers",
    ):
        file_layout(path, LayoutOptions("", "ts=t,price=p,symbol=@X", "ms"))


def test_a_damaged_feather_batch_ends_the_file_as_one_dead_letter(tmp_path: Path) -> None:
    table = pa.table(
        {
            "date": pa.array(range(1_700_000_000_000, 1_700_000_000_000 + 3000), pa.int64()),
            **{c: pa.array([1.0] * 3000) for c in ("open", "high", "low", "close", "volume")},
        }
    )
    path = tmp_path / "ETH_BTC-1m.feather"
    pa_feather.write_feather(table, path, chunksize=1000, compression="lz4")
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 50] = b"\xff" * 50  # inside the second batch
    path.write_bytes(bytes(data))
    blocks, _ = drain(ReplaySource([path], layouts=OPTIONS))
    assert sum(len(b) for b in blocks) == 1000
    assert [(d[1], d[3][:50]) for b in blocks for d in b.extra_dead] == [
        (1001, "file corrupt: the file could not be read from row ")
    ]
