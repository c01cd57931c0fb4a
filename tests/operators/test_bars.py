"""Bars against an independent pandas computation over real files, and their invariants."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.bars import BarBuilder
from schemas.ticks import TickBatch
from schemas.timeutil import to_ms


def bars_frame(bars) -> pd.DataFrame:
    df = pd.DataFrame(
        [
            {
                "symbol": b.symbol,
                "start": to_ms(b.start),
                "open": b.open,
                "high": b.high,
                "low": b.low,
                "close": b.close,
                "volume": b.volume,
                "tick_count": b.tick_count,
                "vwap": b.vwap,
                "buy_volume": b.buy_volume,
                "sell_volume": b.sell_volume,
                "quote_count": b.quote_count,
                "spread_mean": b.spread_mean,
                "spread_max": b.spread_max,
            }
            for b in bars
        ]
    )
    return df.sort_values(["symbol", "start"]).reset_index(drop=True)


def pandas_bars(df: pd.DataFrame, seconds: int) -> pd.DataFrame:
    """Independent reference: group ticks by (symbol, floor(ts / bar)) with pandas."""
    df = df.copy()
    df["start"] = (df["ms"] // (seconds * 1000)) * seconds * 1000
    sized = df["size"].fillna(0) > 0
    df["sz"] = df["size"].where(sized, 0.0)
    df["pv"] = df["price"] * df["sz"]
    df["buy"] = df["sz"].where(df["side"] == "buy", 0.0)
    df["sell"] = df["sz"].where(df["side"] == "sell", 0.0)
    df["quoted"] = df["bid"].notna() & df["ask"].notna()
    df["spread"] = (df["ask"] - df["bid"]).where(df["quoted"])
    g = df.groupby(["symbol", "start"], sort=True)
    out = pd.DataFrame(
        {
            "open": g["price"].first(),
            "high": g["price"].max(),
            "low": g["price"].min(),
            "close": g["price"].last(),
            "volume": g["sz"].sum(),
            "tick_count": g.size(),
            "buy_volume": g["buy"].sum(),
            "sell_volume": g["sell"].sum(),
            "quote_count": g["quoted"].sum(),
            "spread_mean": g["spread"].mean(),
            "spread_max": g["spread"].max(),
            "vwap": g["pv"].sum() / g["sz"].sum(),
        }
    ).reset_index()
    unsized_mean = g["price"].mean().reset_index(drop=True)
    out["vwap"] = out["vwap"].where(out["volume"] > 0, unsized_mean)
    return out


def read_ticks(path: Path) -> pd.DataFrame:
    df = pd.read_csv(
        path,
        dtype={"side": "string"},
        keep_default_na=False,
        na_values={c: [""] for c in ("price", "size", "bid", "ask")},
    )
    df["ms"] = pd.to_datetime(df["ts"], utc=True).dt.as_unit("ms").astype("int64")
    if "bid" in df:
        df["price"] = (df["bid"] + df["ask"]) / 2
        df["size"] = np.nan
        df["side"] = ""
        df = df[df["bid"] <= df["ask"]]  # crossed quotes are dead letters
    else:
        df["bid"] = df["ask"] = np.nan
    return df


def assert_frames_close(ours: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert len(ours) == len(ref)
    assert ours["symbol"].tolist() == ref["symbol"].tolist()
    assert ours["start"].tolist() == ref["start"].tolist()
    for col in (
        "open",
        "high",
        "low",
        "close",
        "volume",
        "tick_count",
        "vwap",
        "buy_volume",
        "sell_volume",
        "quote_count",
        "spread_mean",
        "spread_max",
    ):
        np.testing.assert_allclose(
            ours[col].to_numpy(float),
            ref[col].to_numpy(float),
            rtol=1e-9,
            atol=1e-12,
            equal_nan=True,
            err_msg=col,
        )


@pytest.mark.parametrize(
    "relpath",
    [
        "trades/binance_spot_BTCUSDT-ETHUSDT_2024-08-08_trades.csv.gz",
        "quotes/binance_usdm_BTCUSDT_2023-04-04_quotes.csv.gz",
    ],
)
def test_bars_equal_pandas_on_real_ticks(shared_data: Path, run_market, relpath: str) -> None:
    path = shared_data / relpath
    bars, _, validated = run_market(str(path), bar_seconds=10, max_backwards_ms=0)
    assert sum(len(v.dead) for v in validated) == 0
    assert_frames_close(bars_frame(bars), pandas_bars(read_ticks(path), 10))


def test_trades_and_quotes_of_the_same_symbols_merge_into_one_bar_series(
    shared_data: Path, run_market
) -> None:
    trades = shared_data / "trades/binance_spot_BTCUSDT-ETHUSDT_2024-08-08_trades.csv.gz"
    quotes = shared_data / "quotes/binance_spot_BTCUSDT-ETHUSDT_2024-08-08_quotes.csv.gz"
    bars, _, validated = run_market(f"{trades},{quotes}", bar_seconds=30, max_backwards_ms=0)
    assert sum(len(v.dead) for v in validated) == 0  # merged in event time: nothing backwards
    both = pd.concat([read_ticks(trades), read_ticks(quotes)]).sort_values("ms", kind="stable")
    assert_frames_close(bars_frame(bars), pandas_bars(both, 30))


def test_one_minute_candles_become_the_same_bars(shared_data: Path, run_market) -> None:
    path = shared_data / "candles/bitstamp_BTCUSD_1m_2020-01-01.csv.gz"
    bars, _, _ = run_market(str(path), bar_seconds=60, candle_seconds=60)
    ref = pd.read_csv(path)
    ours = bars_frame(bars)
    assert len(ours) == len(ref) == 1440
    assert (
        ours["start"].tolist()
        == (pd.to_datetime(ref["ts"], utc=True).dt.as_unit("ms").astype("int64")).tolist()
    )
    for col in ("open", "high", "low", "close", "volume"):
        np.testing.assert_allclose(ours[col], ref[col], rtol=1e-12, err_msg=col)


def _batch(ts: np.ndarray, px: np.ndarray, size: np.ndarray) -> TickBatch:
    n = len(ts)
    nan = np.full(n, np.nan)
    return TickBatch("S", ts, px, nan, nan, size, np.zeros(n, np.int8), np.zeros(n, np.int8))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 5_000), min_size=1, max_size=200),
    st.lists(st.integers(1, 199), max_size=6),
)
def test_bars_do_not_depend_on_batch_boundaries(gaps: list[int], cuts: list[int]) -> None:
    ts = np.cumsum(np.array(gaps, dtype=np.int64)) + 1_700_000_000_000
    rng = np.random.default_rng(len(gaps))
    px = rng.uniform(1, 2, len(ts))
    size = rng.uniform(0, 3, len(ts))
    whole = BarBuilder("S", 1)
    ref = whole.push_ticks(_batch(ts, px, size))[0] + whole.flush()
    pieces = BarBuilder("S", 1)
    got = []
    bounds = [0, *sorted({c for c in cuts if c < len(ts)}), len(ts)]
    for a, b in itertools.pairwise(bounds):
        closed, idx = pieces.push_ticks(_batch(ts[a:b], px[a:b], size[a:b]))
        got += closed
        for bar, i in zip(closed, idx, strict=True):  # the closing tick is in a later bar
            assert to_ms(bar.end) <= ts[a + i]
    got += pieces.flush()
    assert got == ref


def test_late_tick_within_tolerance_joins_the_open_bar() -> None:
    b = BarBuilder("S", 60)
    closed, _ = b.push_ticks(_batch(np.array([0, 61_000]), np.array([1.0, 2.0]), np.ones(2)))
    assert [x.close for x in closed] == [1.0]
    closed, _ = b.push_ticks(_batch(np.array([59_500]), np.array([5.0]), np.ones(1)))
    assert closed == []  # the bar [0, 60s) never reopens
    (bar,) = b.flush()
    assert (to_ms(bar.start), bar.high, bar.tick_count) == (60_000, 5.0, 2)


def test_snapshot_and_restore_mid_bar() -> None:
    ts = np.arange(0, 300_000, 7_000, dtype=np.int64)
    px = np.linspace(1, 2, len(ts))
    a = BarBuilder("S", 60)
    ref = a.push_ticks(_batch(ts, px, np.ones(len(ts))))[0] + a.flush()
    b = BarBuilder("S", 60)
    first = b.push_ticks(_batch(ts[:20], px[:20], np.ones(20)))[0]
    c = BarBuilder.restore(b.snapshot())
    rest = c.push_ticks(_batch(ts[20:], px[20:], np.ones(len(ts) - 20)))[0] + c.flush()
    assert first + rest == ref
