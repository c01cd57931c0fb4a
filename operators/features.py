"""Features: incremental per-symbol indicators, updated once per closed bar.

This is the only feature code in the project: the live flow calls :meth:`FeatureEngine.update`
on each closed bar, and training builds its sets by running the same engine over historical
bars (see :func:`features_for_bars`), so training and serving cannot drift apart.

Definitions (``c`` close, ``r`` one-bar log return ``ln(c_t / c_{t-1})``; EMAs are recursive,
seeded with their first input, like pandas ``ewm(adjust=False)``):

=================  ==========================================================================
``ret_{k}``        ``ln(c_t / c_{t-k})`` for k in 1, 5, 15, 60 bars
``vol_ewma``       ``sqrt(EMA_{alpha=0.06}(r^2))`` (RiskMetrics lambda 0.94), per bar
``vol_daily``      ``vol_ewma * sqrt(86400 / bar_seconds)``: the same, scaled to one day; the
                   ensemble's volatility rule (5%) reads this one
``rsi_14``         Wilder RSI: ``100 - 100 / (1 + EMA_{1/14}(gain) / EMA_{1/14}(loss))``
``macd``           ``(EMA_12(c) - EMA_26(c)) / c``; ``macd_signal`` its EMA_9;
                   ``macd_hist`` their difference
``bb_pctb``        Bollinger %b, 20 bars, 2 sigma (population std); 0.5 when flat
``atr_14``         ``EMA_{1/14}(true range) / c``
``volume_z``       z-score of this bar's volume against the previous 20 bars (0 when flat)
``activity_z``     the same for the tick count (quote feeds have no volume)
``range_hl``       ``(high - low) / c``
``vwap_dist``      ``(c - vwap) / vwap``
``spread_bps``     mean quoted spread / c, in basis points (NaN without quotes)
``imbalance``      ``(buy - sell) / (buy + sell)`` aggressor volume (NaN without sides)
``tod_sin/cos``    time of day of the bar close (UTC), on the unit circle
``dow_sin/cos``    day of week of the bar close (UTC), on the unit circle
=================  ==========================================================================

``window`` holds the last ``seq_window`` one-bar log returns for the sequence models. A vector
is ``warm`` once the engine has seen ``warmup_bars`` bars, enough for every lookback above and a
full window. Gaps (weekends, minutes without ticks) are not filled: returns are between
consecutive bars that exist.

>>> from schemas.bars import Bar
>>> from schemas.timeutil import from_ms
>>> def bar(i, c):
...     return Bar("X", 60, from_ms(i * 60_000), from_ms((i + 1) * 60_000), c, c, c, c,
...                0.0, 1, c, 0.0, 0.0, 0, float("nan"), float("nan"))
>>> eng = FeatureEngine("X", bar_seconds=60, seq_window=4)
>>> fvs = [eng.update(bar(i, 100.0 + i)) for i in range(70)]
>>> fvs[0].warm, fvs[-1].warm, round(fvs[-1].values["ret_1"], 6)
(False, True, 0.005935)
>>> len(fvs[-1].window)
4
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream

from operators.bars import ShardBarStep
from operators.stage import stage_builder
from schemas.bars import Bar, BarStep
from schemas.features import (
    ATR_PERIOD,
    BB_PERIOD,
    BB_SIGMA,
    EWMA_VOL_ALPHA,
    FEATURE_NAMES,
    FEATURE_SET_VERSION,
    MACD_FAST,
    MACD_SIGNAL,
    MACD_SLOW,
    RETURN_HORIZONS,
    RSI_PERIOD,
    Z_PERIOD,
    FeatureStep,
    FeatureVector,
)
from schemas.timeutil import to_ms

NAN = math.nan
DAY_MS = 86_400_000
TAU = 2.0 * math.pi


RSI_ALPHA = 1.0 / RSI_PERIOD
ATR_ALPHA = 1.0 / ATR_PERIOD
FAST_ALPHA = 2.0 / (MACD_FAST + 1)
SLOW_ALPHA = 2.0 / (MACD_SLOW + 1)
SIGNAL_ALPHA = 2.0 / (MACD_SIGNAL + 1)


def _ema(prev: float | None, x: float, alpha: float) -> float:
    """The recursive EMA step (seeded with its first input); :meth:`FeatureEngine.update`
    writes it out inline."""
    return x if prev is None else prev + alpha * (x - prev)


def _zscore(x: float, hist: deque[float]) -> float:
    n = len(hist)
    if n < 2:
        return NAN
    m = sum(hist) / n
    var = sum([(h - m) ** 2 for h in hist]) / n
    return 0.0 if var <= 0 else (x - m) / math.sqrt(var)


_TIME_FEATURES: dict[datetime, tuple[float, float, float, float]] = {}


def _time_features(end: datetime) -> tuple[float, float, float, float]:
    """``tod_sin, tod_cos, dow_sin, dow_cos`` of a bar end; the symbols that close a bar
    together share the one computation (recent bar ends are kept)."""
    out = _TIME_FEATURES.get(end)
    if out is None:
        end_ms = to_ms(end)
        tod = (end_ms % DAY_MS) / DAY_MS
        dow = ((end_ms // DAY_MS) + 3) % 7 / 7.0  # 1970-01-01 was a Thursday; Monday = 0
        if len(_TIME_FEATURES) >= 4096:
            _TIME_FEATURES.clear()
        out = _TIME_FEATURES[end] = (
            math.sin(TAU * tod),
            math.cos(TAU * tod),
            math.sin(TAU * dow),
            math.cos(TAU * dow),
        )
    return out


@dataclass
class FeatureEngine:
    """Feature state of one symbol. Pure Python; snapshot-able for Bytewax recovery."""

    symbol: str
    bar_seconds: int
    seq_window: int = 64
    bars_seen: int = 0
    closes: deque[float] = field(default_factory=lambda: deque(maxlen=max(RETURN_HORIZONS) + 1))
    returns: deque[float] = field(default_factory=deque)
    bb: deque[float] = field(default_factory=lambda: deque(maxlen=BB_PERIOD))
    volumes: deque[float] = field(default_factory=lambda: deque(maxlen=Z_PERIOD))
    counts: deque[float] = field(default_factory=lambda: deque(maxlen=Z_PERIOD))
    var_ewma: float | None = None
    gain: float | None = None
    loss: float | None = None
    ema_fast: float | None = None
    ema_slow: float | None = None
    macd_sig: float | None = None
    atr: float | None = None

    def __post_init__(self) -> None:
        self.returns = deque(self.returns, maxlen=self.seq_window)
        # constants of this engine, kept out of its snapshot (names starting with "_")
        self._day_scale = math.sqrt(86_400 / self.bar_seconds)
        self._warmup = self.warmup_bars

    @property
    def warmup_bars(self) -> int:
        return max(max(RETURN_HORIZONS) + 1, MACD_SLOW + MACD_SIGNAL, self.seq_window + 1)

    def update(self, bar: Bar) -> FeatureVector:
        """The features of ``bar`` (the module docstring's definitions). Written for speed
        (one of these runs per bar of every symbol) but with the very operations, in the very
        order, of the definitions: the values are bit for bit those of the plain formulas."""
        c = bar.close
        closes = self.closes
        nc = len(closes)
        log = math.log
        rets = [log(c / closes[-k]) if nc >= k else NAN for k in RETURN_HORIZONS]
        high, low = bar.high, bar.low
        if nc:
            prev = closes[-1]
            r = log(c / prev)
            self.returns.append(r)
            ve = self.var_ewma
            self.var_ewma = ve = r * r if ve is None else ve + EWMA_VOL_ALPHA * (r * r - ve)
            change = c - prev
            up, down = max(change, 0.0), max(-change, 0.0)
            g, lo_ = self.gain, self.loss
            self.gain = g = up if g is None else g + RSI_ALPHA * (up - g)
            self.loss = lo_ = down if lo_ is None else lo_ + RSI_ALPHA * (down - lo_)
            true_range = max(high - low, abs(high - prev), abs(low - prev))
        else:
            ve, g, lo_ = self.var_ewma, self.gain, self.loss
            true_range = high - low
        vol = NAN if ve is None else math.sqrt(ve)
        if g is None or lo_ is None:
            rsi = NAN
        elif lo_ == 0:
            rsi = 100.0 if g > 0 else 50.0
        else:
            rsi = 100.0 - 100.0 / (1.0 + g / lo_)
        f, sl, ms = self.ema_fast, self.ema_slow, self.macd_sig
        self.ema_fast = f = c if f is None else f + FAST_ALPHA * (c - f)
        self.ema_slow = sl = c if sl is None else sl + SLOW_ALPHA * (c - sl)
        macd = (f - sl) / c
        self.macd_sig = ms = macd if ms is None else ms + SIGNAL_ALPHA * (macd - ms)
        bb = self.bb
        bb.append(c)
        nb = len(bb)
        m = sum(bb) / nb
        sd = math.sqrt(sum([(x - m) ** 2 for x in bb]) / nb)
        a = self.atr
        self.atr = a = true_range if a is None else a + ATR_ALPHA * (true_range - a)
        volume, ticks = bar.volume, float(bar.tick_count)
        volume_z = _zscore(volume, self.volumes)
        activity_z = _zscore(ticks, self.counts)
        self.volumes.append(volume)
        self.counts.append(ticks)
        buy, sell = bar.buy_volume, bar.sell_volume
        flow = buy + sell
        vwap = bar.vwap
        v = dict(
            zip(
                FEATURE_NAMES,
                (
                    *rets,
                    vol,
                    vol * self._day_scale,
                    rsi,
                    macd,
                    ms,
                    macd - ms,
                    0.5 if sd <= 0 else (c - (m - BB_SIGMA * sd)) / (2 * BB_SIGMA * sd),
                    a / c,
                    volume_z,
                    activity_z,
                    (high - low) / c,
                    (c - vwap) / vwap,
                    bar.spread_mean / c * 1e4,
                    (buy - sell) / flow if flow > 0 else NAN,
                    *_time_features(bar.end),
                ),
                strict=False,
            )
        )  # 22 values: FEATURE_NAMES
        closes.append(c)
        self.bars_seen += 1
        returns = self.returns
        pad = self.seq_window - len(returns)
        window = (NAN,) * pad + tuple(returns) if pad > 0 else tuple(returns)
        # (symbol, ts, bar_start, feature_set, warm, close, values, window)
        return FeatureVector(
            self.symbol,
            bar.end,
            bar.start,
            FEATURE_SET_VERSION,
            self.bars_seen >= self._warmup,
            c,
            v,
            window,
        )

    # --- as a stage (see operators.stage) --------------------------------------------------
    def push(self, step: BarStep) -> list[FeatureStep]:
        return [
            FeatureStep(
                self.symbol, [self.update(b) for b in step.bars], step.tag, step.clocks, step
            )
        ]

    def finish(self) -> list[FeatureStep]:
        return []

    def snapshot(self) -> dict:
        state = {k: val for k, val in vars(self).items() if not k.startswith("_")}
        for k, val in state.items():
            if isinstance(val, deque):
                state[k] = list(val)
        return state

    @classmethod
    def restore(cls, state: dict) -> FeatureEngine:
        eng = cls(state["symbol"], state["bar_seconds"], state["seq_window"])
        for k, val in state.items():
            cur = getattr(eng, k)
            setattr(eng, k, deque(val, maxlen=cur.maxlen) if isinstance(cur, deque) else val)
        return eng


def features_for_bars(
    bars: Iterable[Bar], bar_seconds: int, seq_window: int
) -> list[FeatureVector]:
    """Run the live feature code over historical bars (training sets are built from this)."""
    engines: dict[str, FeatureEngine] = {}
    out = []
    for bar in bars:
        eng = engines.get(bar.symbol)
        if eng is None:
            eng = engines[bar.symbol] = FeatureEngine(bar.symbol, bar_seconds, seq_window)
        out.append(eng.update(bar))
    return out


@dataclass(slots=True)
class ShardFeatureStep(FeatureStep):
    """The feature vectors of a :class:`~operators.bars.ShardBarStep`, one per bar in its
    order (``bar_step`` says which symbol each belongs to)."""


class ShardFeatures:
    """The feature engines of one shard's symbols, fed a shard's bar step at a time."""

    def __init__(
        self, bar_seconds: int, seq_window: int, engines: dict[str, FeatureEngine] | None = None
    ) -> None:
        self.bar_seconds, self.seq_window = bar_seconds, seq_window
        self.engines: dict[str, FeatureEngine] = dict(engines or {})

    def push(self, step: BarStep) -> list[FeatureStep]:
        if not isinstance(step, ShardBarStep):  # one symbol's step
            return self._engine(step.symbol).push(step)
        vectors: list[FeatureVector] = []
        bars = step.bars
        for part in step.symbols:
            if part.bars_to > part.bars_from:
                update = self._engine(part.symbol).update
                vectors += [update(b) for b in bars[part.bars_from : part.bars_to]]
        return [ShardFeatureStep(step.symbol, vectors, step.tag, step.clocks, step)]

    def _engine(self, symbol: str) -> FeatureEngine:
        eng = self.engines.get(symbol)
        if eng is None:
            eng = self.engines[symbol] = FeatureEngine(symbol, self.bar_seconds, self.seq_window)
        return eng

    def finish(self) -> list[FeatureStep]:
        return []

    def snapshot(self) -> tuple[int, int, dict[str, dict]]:
        return (
            self.bar_seconds,
            self.seq_window,
            {sym: eng.snapshot() for sym, eng in self.engines.items()},
        )

    @classmethod
    def restore(cls, state: tuple[int, int, dict[str, dict]]) -> ShardFeatures:
        bar_seconds, seq_window, engines = state
        return cls(
            bar_seconds, seq_window, {sym: FeatureEngine.restore(e) for sym, e in engines.items()}
        )


@operator
def compute_features(
    step_id: str, up: KeyedStream[BarStep], bar_seconds: int, seq_window: int
) -> KeyedStream[FeatureStep]:
    """Features on every closed bar (see the module docstring), per shard of symbols as the
    bars come (:class:`ShardFeatureStep`)."""
    if seq_window < 2:
        raise ValueError(f"{step_id}: seq_window must be at least 2, got {seq_window}")
    return op.stateful(
        "features",
        up,
        stage_builder(lambda _: ShardFeatures(bar_seconds, seq_window), ShardFeatures.restore),
    )
