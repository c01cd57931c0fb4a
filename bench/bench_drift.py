"""Benchmark: does the drift trigger fire on real drift and stay quiet on sampling noise?

Feature rows come from the project's own replay (``training.history.history_from_ticks``: the
live flow's validation, bars and features) of two real files: the FXCM month of EURUSD and
NZDUSD quotes (2014-05-01..16) and ten Bittrex altcoins' 1-minute candles (2018-01-20..30).
Every check fits a :class:`learning.drift.FeatureReference` on a reference period's warm rows
with their bar close times (as the CLM does at training time) and scores a recent window of
the check's length ``L`` (``--hours``: 24 and 6) with :meth:`FeatureReference.drift_check`;
a check fires when a score exceeds ``QT_CLM_DRIFT_THRESHOLD`` (0.05). The table gives the
share of checks that fire under each score, then the median raw and final scores:

- ``raw``: the old score, mean PSI against the pooled reference;
- ``raw-iid``: raw minus the no-drift expectation of independent rows,
  ``(bins - 1)(1/n_ref + 1/n)``;
- ``raw-neff``: raw minus the same with an effective sample size from the autocorrelation,
  ``(bins - 1) tau (1/n_ref + 1/n)``, ``tau`` per feature from the reference
  (:func:`neff_expected_psi`);
- ``raw-mean``: raw minus the mean score of same-size windows of the reference;
- ``pooled``: raw minus the 95% null level of same-size windows (no seasonal matching);
- ``final``: :attr:`DriftScore.corrected`, what the CLM compares with the threshold.

How the draws are made (``--draws`` per row, ``--seed``; times are bar close times, ms; every
uniform draw is over integers, upper end excluded):

- **same regime** (false alarms; FXCM and Bittrex). A week: ``a`` uniform in
  ``[first row, last row - 2 d - L]``, redrawn if it falls in a market closure; the week is
  ``[a, e)`` with ``e = a + 7 d``, cut at the next closure (24 h or more without a bar: the FX
  weekend; Bittrex trades around the clock). A split ``s`` uniform in ``[a + 2 d, e - L]``.
  Reference: all symbols' rows in ``[a, s)``; recent window: all symbols' rows in
  ``(s, s + L]``, the window right after the reference, like the first check after a training
  cycle. Redrawn until the reference holds at least two days of bars (2 x 1440 x symbols rows)
  and the window at least 100 rows (the CLM's own minimum).
- **(stress)** the same, but the window starts at ``t`` uniform in ``[s, e - L]``: up to five
  days after the reference ends, so slow drift in the market adds to the noise.
- **EURUSD -> NZDUSD**: the same-regime draws on FXCM, the reference only EURUSD's rows, the
  window only NZDUSD's (redrawn until the reference holds two days of EURUSD bars).
- **returns x2** (and x1.5): the same draws as *same regime*, but the recent window comes from
  the file replayed with every bar's log price around the symbol's first close scaled by 2
  (open, high, low, close, vwap; the spread kept in basis points) and its features recomputed
  by the project's feature engine: volatility doubled, nothing else changed.
- **calm -> volatile** (FXCM): trading days (>= 2000 rows) ranked by the RMS of ``ret_1``; the
  reference is the two calmest (05-12 and 05-05); the windows are the three most volatile
  non-overlapping stretches of length ``L`` (hourly starts, at least 90% of a full window's
  rows, RMS of ``ret_1``), one picked uniformly per check, its start shifted uniformly by up
  to ``L / 4`` either way.

    python bench/bench_drift.py [--draws N] [--hours 24 6] [--seed S]

Takes about 15 minutes with the defaults (200 draws per row, one core).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learning.drift import FeatureReference, iid_expected_psi  # noqa: E402
from models.dataset import History, feature_matrix  # noqa: E402
from operators.features import features_for_bars  # noqa: E402
from schemas.bars import Bar  # noqa: E402
from schemas.features import FEATURE_NAMES  # noqa: E402
from schemas.timeutil import to_ms  # noqa: E402
from settings import Settings  # noqa: E402
from training.history import history_from_ticks  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
FXCM = DATA / "quotes" / "fxcm_EURUSD-NZDUSD_2014-05_quotes.csv.gz"
BITTREX = DATA / "candles" / "bittrex_10altBTC_1m_2018-01-20.csv.gz"
HOUR = 3_600_000
DAY = 24 * HOUR
METHODS = ("raw", "raw-iid", "raw-neff", "raw-mean", "pooled", "final")


@dataclasses.dataclass(frozen=True)
class Rows:
    """Warm feature rows of a file, in (time, symbol) order."""

    X: np.ndarray
    ts: np.ndarray
    symbol: np.ndarray

    @property
    def symbols(self) -> int:
        return len(np.unique(self.symbol))


def rows_of(history: History, scale: float = 1.0) -> Rows:
    """Warm rows of ``history``; ``scale`` != 1 replays its bars with log returns scaled."""
    settings = Settings.from_env({})
    X, ts, sym = [], [], []
    for symbol in history.symbols:
        if scale == 1.0:
            vectors = history.vectors[symbol]
        else:
            bars = [_scaled(b, history.bars[symbol][0].close, scale) for b in history.bars[symbol]]
            vectors = features_for_bars(bars, settings.bar_seconds, settings.seq_window)
        warm = [v for v in vectors if v.warm]
        X.append(feature_matrix(warm))
        ts.append(np.array([to_ms(v.ts) for v in warm], dtype=np.int64))
        sym.append(np.array([symbol] * len(warm)))
    Xa, tsa, syma = np.concatenate(X), np.concatenate(ts), np.concatenate(sym)
    order = np.lexsort((syma, tsa))
    return Rows(Xa[order], tsa[order], syma[order])


def _scaled(bar: Bar, anchor: float, k: float) -> Bar:
    """``p -> anchor * (p / anchor) ** k`` on every price; the spread keeps its bps."""

    def f(p: float) -> float:
        return anchor * math.exp(k * math.log(p / anchor))

    ratio = f(bar.close) / bar.close
    return dataclasses.replace(
        bar,
        open=f(bar.open),
        high=f(bar.high),
        low=f(bar.low),
        close=f(bar.close),
        vwap=f(bar.vwap),
        spread_mean=bar.spread_mean * ratio,
        spread_max=bar.spread_max * ratio,
    )


Check = tuple[np.ndarray, np.ndarray]  # reference mask, recent mask


def stretches(ts: np.ndarray) -> list[tuple[int, int]]:
    """``[first, last]`` bar close times of the runs without a closure (24 h without a bar)."""
    gaps = np.flatnonzero(np.diff(ts) >= DAY)
    starts = np.concatenate([[ts[0]], ts[gaps + 1]])
    ends = np.concatenate([ts[gaps], [ts[-1]]])
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def same_regime(
    data: Rows,
    hours: float,
    rng: np.random.Generator,
    lagged: bool = False,
    ref_symbol: str | None = None,
    recent_symbol: str | None = None,
) -> Iterator[tuple[Check, tuple[int, int]]]:
    """Endless draws of the *same regime* protocol (see the module docstring)."""
    L = int(hours * HOUR)
    per_day = 1440 * (1 if ref_symbol else data.symbols)
    runs = stretches(data.ts)
    while True:
        a = int(rng.integers(data.ts[0], data.ts[-1] - 2 * DAY - L))
        run = next(((x, y) for x, y in runs if x <= a <= y), None)
        if run is None:
            continue
        end = min(a + 7 * DAY, run[1] + 1)  # the week, cut at the next closure
        if end - L <= a + 2 * DAY:
            continue
        s = int(rng.integers(a + 2 * DAY, end - L))
        t = int(rng.integers(s, end - L)) if lagged else s
        ref = (data.ts >= a) & (data.ts < s)
        rec = (data.ts > t) & (data.ts <= t + L)
        if ref_symbol:
            ref &= data.symbol == ref_symbol
        if recent_symbol:
            rec &= data.symbol == recent_symbol
        if ref.sum() >= 2 * per_day and rec.sum() >= 100:
            yield (ref, rec), (t, t + L)


def trading_days(data: Rows) -> list[int]:
    """UTC days (numbers) with at least 2000 rows, calmest first (RMS of ``ret_1``)."""
    day = data.ts // DAY
    r1 = data.X[:, FEATURE_NAMES.index("ret_1")]
    days = [int(d) for d in np.unique(day) if (day == d).sum() >= 2000]
    return sorted(days, key=lambda d: float(np.sqrt(np.mean(r1[day == d] ** 2))))


def volatile_stretches(data: Rows, hours: float, avoid: np.ndarray, count: int = 3) -> list[int]:
    """Starts of the ``count`` most volatile non-overlapping windows of ``hours`` (RMS of
    ``ret_1``, hourly starts, at least 90% of a full window's rows, none on ``avoid`` days)."""
    L = int(hours * HOUR)
    r2 = np.concatenate([[0.0], np.cumsum(data.X[:, FEATURE_NAMES.index("ret_1")] ** 2)])
    starts = np.arange(data.ts[0] // HOUR * HOUR, data.ts[-1] - L, HOUR)
    lo = np.searchsorted(data.ts, starts, side="right")
    hi = np.searchsorted(data.ts, starts + L, side="right")
    full = 0.9 * L / 60_000 * data.symbols
    ok = (
        ((hi - lo) >= full)
        & ~np.isin(starts // DAY, avoid)
        & ~np.isin((starts + L - 1) // DAY, avoid)
    )
    rms = np.where(ok, np.sqrt((r2[hi] - r2[lo]) / np.maximum(hi - lo, 1)), -1.0)
    picked: list[int] = []
    for k in np.argsort(-rms):
        if rms[k] < 0 or len(picked) == count:
            break
        if all(abs(int(starts[k]) - p) >= L for p in picked):
            picked.append(int(starts[k]))
    return picked


def calm_to_volatile(
    data: Rows, hours: float, rng: np.random.Generator
) -> Iterator[tuple[Check, tuple[int, int]]]:
    """Reference: the two calmest trading days; window: about one of the three most volatile
    stretches of the check's length (start shifted uniformly by up to a quarter of it)."""
    L = int(hours * HOUR)
    calm = np.array(trading_days(data)[:2])
    ref = np.isin(data.ts // DAY, calm)
    peaks = volatile_stretches(data, hours, calm)
    while True:
        t = peaks[int(rng.integers(0, len(peaks)))] + int(rng.integers(-L // 4, L // 4 + 1))
        rec = (data.ts > t) & (data.ts <= t + L)
        if rec.sum() >= 100:
            yield (ref, rec), (t, t + L)


def neff_expected_psi(reference: FeatureReference, rows: Rows, ref: np.ndarray, n: int) -> float:
    """The analytic alternative: ``(bins - 1)(tau / n_ref + tau / n)`` per scored feature,
    ``tau`` the integrated autocorrelation time of its bin index per symbol (summed to the
    first lag under 0.05, at most a day), mean over the scored features."""
    X, sym = rows.X[ref], rows.symbol[ref]
    out = []
    for j, f in enumerate(reference.features):
        if f.name not in reference.scored:
            continue
        k = sum(s > 0 for s in f.shares)
        if k < 2:
            out.append(0.0)
            continue
        acf_sum, weight = np.zeros(1441), 0
        for s in np.unique(sym):
            x = f.index(X[sym == s, j]).astype(np.float64)
            x -= x.mean()
            if len(x) < 2 or not x.any():
                continue
            spec = np.fft.rfft(x, 2 * len(x))
            acf = np.fft.irfft(spec * np.conj(spec))[: min(len(x), 1441)]
            acf_sum[: len(acf)] += acf / acf[0] * len(x)
            weight += len(x)
        rho = acf_sum / max(weight, 1)
        below = np.flatnonzero(rho[1:] < 0.05)
        cut = int(below[0]) + 1 if len(below) else len(rho)
        tau = max(1.0, 1 + 2 * float(rho[1:cut].sum()))
        out.append((k - 1) * (tau / reference.rows + tau / n))
    return float(np.mean(out)) if out else 0.0


def scores(ref_rows: Rows, ref: np.ndarray, rec_rows: Rows, rec: np.ndarray) -> dict[str, float]:
    """Every method's score of one check (compare with the threshold)."""
    reference = FeatureReference.fit(ref_rows.X[ref], ts_ms=ref_rows.ts[ref])
    X, ts = rec_rows.X[rec], rec_rows.ts[rec]
    final = reference.drift_check(X, ts)
    pooled = reference.drift_check(X)
    return {
        "raw": final.raw,
        "raw-iid": final.raw - iid_expected_psi(reference, len(X)),
        "raw-neff": final.raw - neff_expected_psi(reference, ref_rows, ref, len(X)),
        "raw-mean": final.raw - pooled.expected,
        "pooled": pooled.corrected,
        "final": final.corrected,
    }


def run(
    name: str,
    draws: Iterator[tuple[Check, tuple[int, int]]],
    ref_rows: Rows,
    rec_rows: Rows,
    n: int,
    threshold: float,
) -> dict[str, float]:
    """Fire rates of every method over ``n`` draws; prints one table row."""
    values: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(n):
        (ref, rec), _window = next(draws)
        for m, v in scores(ref_rows, ref, rec_rows, rec).items():
            values[m].append(v)
    rates = {m: float(np.mean(np.array(values[m]) > threshold)) for m in METHODS}
    print(
        f"{name:<36}{n:>7}"
        + "".join(f"{rates[m]:>9.1%}" for m in METHODS)
        + f"{np.median(values['raw']):>9.3f}{np.median(values['final']):>9.3f}",
        flush=True,
    )
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--draws", type=int, default=200, help="checks per scenario and length")
    ap.add_argument("--hours", type=float, nargs="+", default=[24.0, 6.0])
    ap.add_argument("--seed", type=int, default=20140501)
    ap.add_argument("--fxcm", type=Path, default=FXCM)
    ap.add_argument("--bittrex", type=Path, default=BITTREX)
    args = ap.parse_args()
    settings = Settings.from_env({})
    threshold = settings.clm_drift_threshold
    t0 = time.perf_counter()
    fx_h = history_from_ticks(str(args.fxcm), settings)
    bt_h = history_from_ticks(str(args.bittrex), settings)
    fx, bt = rows_of(fx_h), rows_of(bt_h)
    fx2, bt2, fx15 = rows_of(fx_h, 2.0), rows_of(bt_h, 2.0), rows_of(fx_h, 1.5)
    assert all(np.array_equal(a.ts, b.ts) for a, b in ((fx, fx2), (bt, bt2), (fx, fx15)))
    print(
        f"rows: FXCM {len(fx.X):,} ({fx.symbols} symbols), Bittrex {len(bt.X):,} "
        f"({bt.symbols} symbols); built in {time.perf_counter() - t0:.0f} s; "
        f"threshold {threshold:g}"
    )
    eur, nzd = "FXCM:EURUSD", "FXCM:NZDUSD"
    Draws = Callable[[float, np.random.Generator], Iterator[tuple[Check, tuple[int, int]]]]
    scenarios: list[tuple[str, Draws, Rows, Rows]] = [
        ("FA  FXCM same regime", lambda h, g: same_regime(fx, h, g), fx, fx),
        ("FA  Bittrex same regime", lambda h, g: same_regime(bt, h, g), bt, bt),
        ("DET FXCM EURUSD -> NZDUSD", lambda h, g: same_regime(fx, h, g, False, eur, nzd), fx, fx),
        ("DET FXCM calm -> volatile", lambda h, g: calm_to_volatile(fx, h, g), fx, fx),
        ("DET FXCM returns x2", lambda h, g: same_regime(fx, h, g), fx, fx2),
        ("DET Bittrex returns x2", lambda h, g: same_regime(bt, h, g), bt, bt2),
        ("(smaller) FXCM returns x1.5", lambda h, g: same_regime(fx, h, g), fx, fx15),
        ("(stress) FXCM, window 0-5 d later", lambda h, g: same_regime(fx, h, g, True), fx, fx),
        ("(stress) Bittrex, 0-5 d later", lambda h, g: same_regime(bt, h, g, True), bt, bt),
    ]
    print(
        f"\n{'share of checks that fire':<36}{'checks':>7}"
        + "".join(f"{m:>9}" for m in METHODS)
        + f"{'med raw':>9}{'med fin':>9}"
    )
    for hours in args.hours:
        print(f"-- recent window {hours:g} h")
        for name, draws, ref_rows, rec_rows in scenarios:
            rng = np.random.default_rng([args.seed, int(hours * 60)])
            run(name, draws(hours, rng), ref_rows, rec_rows, args.draws, threshold)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
