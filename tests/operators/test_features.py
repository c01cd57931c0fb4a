"""Features against an independent pandas computation, no lookahead, and recovery."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.features import FeatureEngine
from schemas.features import FEATURE_NAMES
from schemas.timeutil import to_ms


def pandas_features(bars, bar_seconds: int) -> pd.DataFrame:
    """The documented definitions, written independently with pandas."""
    df = pd.DataFrame(
        [
            {
                "c": b.close,
                "h": b.high,
                "l": b.low,
                "v": b.volume,
                "n": float(b.tick_count),
                "vwap": b.vwap,
                "spread": b.spread_mean,
                "buy": b.buy_volume,
                "sell": b.sell_volume,
                "end": to_ms(b.end),
            }
            for b in bars
        ]
    )
    c = df["c"]
    r = np.log(c / c.shift(1))
    out = pd.DataFrame(index=df.index)
    for k in (1, 5, 15, 60):
        out[f"ret_{k}"] = np.log(c / c.shift(k))
    out["vol_ewma"] = np.sqrt((r**2).ewm(alpha=0.06, adjust=False).mean())
    out["vol_daily"] = out["vol_ewma"] * math.sqrt(86_400 / bar_seconds)
    d = c.diff()
    gain = d.clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
    loss = (-d).clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
    rsi = 100 - 100 / (1 + gain / loss)
    rsi[loss == 0] = np.where(gain[loss == 0] > 0, 100.0, 50.0)
    out["rsi_14"] = rsi
    macd = (c.ewm(span=12, adjust=False).mean() - c.ewm(span=26, adjust=False).mean()) / c
    out["macd"] = macd
    out["macd_signal"] = macd.ewm(span=9, adjust=False).mean()
    out["macd_hist"] = out["macd"] - out["macd_signal"]
    # two-pass window statistics (pandas' online rolling variance loses digits on FX prices)
    m = c.rolling(20, min_periods=1).apply(np.mean, raw=True)
    s = c.rolling(20, min_periods=1).apply(np.std, raw=True)
    out["bb_pctb"] = ((c - (m - 2 * s)) / (4 * s)).where(s > 0, 0.5)
    prev = c.shift(1)
    tr = pd.concat([df["h"] - df["l"], (df["h"] - prev).abs(), (df["l"] - prev).abs()], axis=1).max(
        axis=1
    )
    out["atr_14"] = tr.ewm(alpha=1 / 14, adjust=False).mean() / c
    for name, col in (("volume_z", "v"), ("activity_z", "n")):
        hist = df[col].shift(1).rolling(20, min_periods=2)
        mean = hist.apply(lambda w: np.mean(w[~np.isnan(w)]), raw=True)
        std = hist.apply(lambda w: np.std(w[~np.isnan(w)]), raw=True)
        out[name] = ((df[col] - mean) / std).where(std > 0, 0.0).where(mean.notna())
    out["range_hl"] = (df["h"] - df["l"]) / c
    out["vwap_dist"] = (c - df["vwap"]) / df["vwap"]
    out["spread_bps"] = df["spread"] / c * 1e4
    flow = df["buy"] + df["sell"]
    out["imbalance"] = ((df["buy"] - df["sell"]) / flow).where(flow > 0)
    tod = (df["end"] % 86_400_000) / 86_400_000
    dow = ((df["end"] // 86_400_000) + 3) % 7 / 7
    out["tod_sin"], out["tod_cos"] = np.sin(2 * np.pi * tod), np.cos(2 * np.pi * tod)
    out["dow_sin"], out["dow_cos"] = np.sin(2 * np.pi * dow), np.cos(2 * np.pi * dow)
    return out


@pytest.mark.parametrize(
    ("ticks", "seconds"),
    [
        ("sample", 60),
        ("trades/binance_spot_BTCUSDT-ETHUSDT_2024-08-08_trades.csv.gz", 5),
    ],
)
def test_features_equal_pandas(
    shared_data: Path, sample_ticks: Path, run_market, ticks: str, seconds: int
) -> None:
    path = sample_ticks if ticks == "sample" else shared_data / ticks
    bars, vectors, _ = run_market(str(path), bar_seconds=seconds)
    assert len(vectors) == len(bars) > 100
    for symbol in sorted({b.symbol for b in bars}):
        sb = [b for b in bars if b.symbol == symbol]
        sv = [v for v in vectors if v.symbol == symbol]
        assert [v.ts for v in sv] == [b.end for b in sb]
        ref = pandas_features(sb, seconds)
        ours = pd.DataFrame([v.values for v in sv])
        assert list(ours.columns) == list(FEATURE_NAMES)
        for name in FEATURE_NAMES:
            np.testing.assert_allclose(
                ours[name],
                ref[name],
                rtol=1e-7,
                atol=1e-10,
                equal_nan=True,
                err_msg=f"{symbol} {name}",
            )
        # the sequence window is the last 64 one-bar returns, oldest first
        r = np.log(np.array([b.close for b in sb[1:]]) / np.array([b.close for b in sb[:-1]]))
        np.testing.assert_allclose(sv[-1].window, r[-64:], rtol=1e-12)
        warm = [v.warm for v in sv]
        assert warm == [i + 1 >= FeatureEngine(symbol, seconds).warmup_bars for i in range(len(sv))]


@pytest.fixture(scope="module")
def trade_lines(shared_data: Path) -> list[str]:
    path = shared_data / "trades/binance_spot_BTCUSDT-ETHUSDT_2024-08-08_trades.csv.gz"
    with gzip.open(path, "rt") as f:
        return f.read().splitlines()


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.integers(2_000, 34_000))
def test_no_lookahead_features_are_the_same_when_the_input_is_cut(
    tmp_path_factory, run_market, trade_lines: list[str], cut: int
) -> None:
    """Features of every bar that ended by the cut are identical to the uncut run's."""
    full = tmp_path_factory.getbasetemp() / "full_trades.csv"
    if not full.exists():
        full.write_text("\n".join(trade_lines) + "\n")
    part = tmp_path_factory.mktemp("cut") / "cut_trades.csv"
    part.write_text("\n".join(trade_lines[: cut + 1]) + "\n")
    cut_ms = to_ms(pd.Timestamp(trade_lines[cut].split(",")[0]).to_pydatetime())
    _, whole, _ = run_market(str(full), bar_seconds=5)
    _, cut_vectors, _ = run_market(str(part), bar_seconds=5)
    done = [v for v in cut_vectors if to_ms(v.ts) <= cut_ms]
    assert done, "the cut should leave complete bars"
    reference = {(v.symbol, v.ts): v for v in whole}
    for v in done:
        assert v == _same_nan(reference[(v.symbol, v.ts)], v)


def _same_nan(a, b):
    """Features compare equal with NaN == NaN (dataclass equality treats NaN != NaN)."""
    for name in FEATURE_NAMES:
        x, y = a.values[name], b.values[name]
        if not (x == y or (math.isnan(x) and math.isnan(y))):
            return a
    if not all(
        x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a.window, b.window, strict=True)
    ):
        return a
    return b


def test_snapshot_restore_continues_identically(sample_ticks: Path, run_market) -> None:
    bars, vectors, _ = run_market(str(sample_ticks))
    sb = [b for b in bars if b.symbol == bars[0].symbol]
    eng = FeatureEngine(sb[0].symbol, 60)
    head = [eng.update(b) for b in sb[:500]]
    restored = FeatureEngine.restore(eng.snapshot())
    tail = [restored.update(b) for b in sb[500:]]
    ref = [v for v in vectors if v.symbol == sb[0].symbol]
    for ours, theirs in zip(head + tail, ref, strict=True):
        assert _same_nan(ours, theirs) is theirs
