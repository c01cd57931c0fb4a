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

import hashlib
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream

from operators.stage import stage_builder
from schemas.bars import Bar, BarStep
from schemas.features import FeatureStep, FeatureVector
from schemas.timeutil import to_ms

RETURN_HORIZONS = (1, 5, 15, 60)
EWMA_VOL_ALPHA = 0.06
RSI_PERIOD = 14
ATR_PERIOD = 14
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
BB_PERIOD, BB_SIGMA = 20, 2.0
Z_PERIOD = 20

FEATURE_NAMES: tuple[str, ...] = (
    *(f"ret_{k}" for k in RETURN_HORIZONS),
    "vol_ewma", "vol_daily", "rsi_14", "macd", "macd_signal", "macd_hist", "bb_pctb",
    "atr_14", "volume_z", "activity_z", "range_hl", "vwap_dist", "spread_bps", "imbalance",
    "tod_sin", "tod_cos", "dow_sin", "dow_cos",
)
_PARAMS = (RETURN_HORIZONS, EWMA_VOL_ALPHA, RSI_PERIOD, ATR_PERIOD, MACD_FAST, MACD_SLOW,
           MACD_SIGNAL, BB_PERIOD, BB_SIGMA, Z_PERIOD)
_DIGEST = hashlib.sha256(repr((FEATURE_NAMES, _PARAMS)).encode()).hexdigest()
FEATURE_SET_VERSION = f"fs1-{_DIGEST[:8]}"

NAN = math.nan
DAY_MS = 86_400_000
TAU = 2.0 * math.pi


def _ema(prev: float | None, x: float, alpha: float) -> float:
    return x if prev is None else prev + alpha * (x - prev)


def _zscore(x: float, hist: deque[float]) -> float:
    if len(hist) < 2:
        return NAN
    m = sum(hist) / len(hist)
    var = sum((h - m) ** 2 for h in hist) / len(hist)
    return 0.0 if var <= 0 else (x - m) / math.sqrt(var)


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

    @property
    def warmup_bars(self) -> int:
        return max(max(RETURN_HORIZONS) + 1, MACD_SLOW + MACD_SIGNAL, self.seq_window + 1)

    def update(self, bar: Bar) -> FeatureVector:
        c = bar.close
        prev = self.closes[-1] if self.closes else None
        v: dict[str, float] = {}
        for k in RETURN_HORIZONS:
            v[f"ret_{k}"] = math.log(c / self.closes[-k]) if len(self.closes) >= k else NAN
        if prev is not None:
            r = math.log(c / prev)
            self.returns.append(r)
            self.var_ewma = _ema(self.var_ewma, r * r, EWMA_VOL_ALPHA)
            change = c - prev
            self.gain = _ema(self.gain, max(change, 0.0), 1.0 / RSI_PERIOD)
            self.loss = _ema(self.loss, max(-change, 0.0), 1.0 / RSI_PERIOD)
            true_range = max(bar.high - bar.low, abs(bar.high - prev), abs(bar.low - prev))
        else:
            true_range = bar.high - bar.low
        vol = NAN if self.var_ewma is None else math.sqrt(self.var_ewma)
        v["vol_ewma"] = vol
        v["vol_daily"] = vol * math.sqrt(86_400 / self.bar_seconds)
        if self.gain is None or self.loss is None:
            v["rsi_14"] = NAN
        elif self.loss == 0:
            v["rsi_14"] = 100.0 if self.gain > 0 else 50.0
        else:
            v["rsi_14"] = 100.0 - 100.0 / (1.0 + self.gain / self.loss)
        self.ema_fast = _ema(self.ema_fast, c, 2.0 / (MACD_FAST + 1))
        self.ema_slow = _ema(self.ema_slow, c, 2.0 / (MACD_SLOW + 1))
        macd = (self.ema_fast - self.ema_slow) / c
        self.macd_sig = _ema(self.macd_sig, macd, 2.0 / (MACD_SIGNAL + 1))
        v["macd"], v["macd_signal"], v["macd_hist"] = macd, self.macd_sig, macd - self.macd_sig
        self.bb.append(c)
        m = sum(self.bb) / len(self.bb)
        sd = math.sqrt(sum((x - m) ** 2 for x in self.bb) / len(self.bb))
        v["bb_pctb"] = 0.5 if sd <= 0 else (c - (m - BB_SIGMA * sd)) / (2 * BB_SIGMA * sd)
        self.atr = _ema(self.atr, true_range, 1.0 / ATR_PERIOD)
        v["atr_14"] = self.atr / c
        v["volume_z"] = _zscore(bar.volume, self.volumes)
        v["activity_z"] = _zscore(float(bar.tick_count), self.counts)
        self.volumes.append(bar.volume)
        self.counts.append(float(bar.tick_count))
        v["range_hl"] = (bar.high - bar.low) / c
        v["vwap_dist"] = (c - bar.vwap) / bar.vwap
        v["spread_bps"] = bar.spread_mean / c * 1e4
        flow = bar.buy_volume + bar.sell_volume
        v["imbalance"] = (bar.buy_volume - bar.sell_volume) / flow if flow > 0 else NAN
        end_ms = to_ms(bar.end)
        tod = (end_ms % DAY_MS) / DAY_MS
        dow = ((end_ms // DAY_MS) + 3) % 7 / 7.0  # 1970-01-01 was a Thursday; Monday = 0
        v["tod_sin"], v["tod_cos"] = math.sin(TAU * tod), math.cos(TAU * tod)
        v["dow_sin"], v["dow_cos"] = math.sin(TAU * dow), math.cos(TAU * dow)

        self.closes.append(c)
        self.bars_seen += 1
        pad = self.seq_window - len(self.returns)
        window = (NAN,) * pad + tuple(self.returns)
        return FeatureVector(
            symbol=self.symbol, ts=bar.end, bar_start=bar.start,
            feature_set=FEATURE_SET_VERSION, warm=self.bars_seen >= self.warmup_bars,
            close=c, values=v, window=window,
        )

    # --- as a stage (see operators.stage) --------------------------------------------------
    def push(self, step: BarStep) -> list[FeatureStep]:
        return [FeatureStep(self.symbol, [self.update(b) for b in step.bars], step.tag,
                            step.clocks, step)]

    def finish(self) -> list[FeatureStep]:
        return []

    def snapshot(self) -> dict:
        state = dict(vars(self))
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


def features_for_bars(bars: Iterable[Bar], bar_seconds: int,
                      seq_window: int) -> list[FeatureVector]:
    """Run the live feature code over historical bars (training sets are built from this)."""
    engines: dict[str, FeatureEngine] = {}
    out = []
    for bar in bars:
        eng = engines.get(bar.symbol)
        if eng is None:
            eng = engines[bar.symbol] = FeatureEngine(bar.symbol, bar_seconds, seq_window)
        out.append(eng.update(bar))
    return out


@operator
def compute_features(step_id: str, up: KeyedStream[BarStep], bar_seconds: int,
                     seq_window: int) -> KeyedStream[FeatureStep]:
    """Per-symbol features on every closed bar (see the module docstring)."""
    if seq_window < 2:
        raise ValueError(f"{step_id}: seq_window must be at least 2, got {seq_window}")
    return op.stateful("features", up, stage_builder(
        lambda step: FeatureEngine(step.symbol, bar_seconds, seq_window), FeatureEngine.restore))
