"""Labels: what each bar should have done, from its realised forward return.

The label of the bar closing at t compares the log return from its close to the close
``horizon`` bars later, ``r = ln(c_{t+h} / c_t)``, with a threshold known at t::

    threshold_t = max(round_trip_cost + spread_t,  vol_mult * vol_ewma_t * sqrt(h))

BUY (1) if ``r > threshold``, SELL (2) if ``r < -threshold``, else HOLD (0). The cost term makes
a label worth trading after fees, slippage and the quoted spread; the volatility term scales it
with how far price usually moves in h bars. The last ``h`` bars of a symbol have no label (-1).
The label uses the close at t and later closes only; the features at t use data up to t only.

>>> import numpy as np
>>> thr = label_threshold(vol_ewma=0.001, spread_bps=float("nan"),
...                       cfg=LabelConfig(horizon=4, vol_mult=1.0, round_trip_cost=0.0004))
>>> round(thr, 6)
0.002
>>> classify(np.array([0.003, -0.003, 0.001]), np.array([thr] * 3)).tolist()
[1, 2, 0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from schemas.features import FeatureVector
from settings import DEFAULTS, Settings

UNLABELLED = -1


def _round_trip_cost(s: Settings) -> float:
    """Fees and slippage of both fills, as a fraction of notional."""
    return 2 * (s.fee_bps + s.slippage_bps) / 1e4


@dataclass(frozen=True)
class LabelConfig:
    """How bars are labelled (defaults: :data:`settings.DEFAULTS`; the cost was 0.002 here
    against 0.0002 from the settings before both came from one place)."""

    horizon: int = DEFAULTS.label_horizon_bars
    vol_mult: float = DEFAULTS.label_vol_mult
    round_trip_cost: float = _round_trip_cost(DEFAULTS)  # fraction of notional, both fills

    @classmethod
    def from_settings(cls, s: Settings) -> LabelConfig:
        return cls(
            horizon=s.label_horizon_bars,
            vol_mult=s.label_vol_mult,
            round_trip_cost=_round_trip_cost(s),
        )


def label_threshold(vol_ewma: float, spread_bps: float, cfg: LabelConfig) -> float:
    spread = 0.0 if math.isnan(spread_bps) else spread_bps / 1e4
    vol = 0.0 if math.isnan(vol_ewma) else vol_ewma
    return max(cfg.round_trip_cost + spread, cfg.vol_mult * vol * math.sqrt(cfg.horizon))


def classify(forward_return: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Class ids (0 HOLD, 1 BUY, 2 SELL); NaN returns -> -1 (no label)."""
    out = np.zeros(len(forward_return), dtype=np.int64)
    out[forward_return > threshold] = 1
    out[forward_return < -threshold] = 2
    out[np.isnan(forward_return)] = UNLABELLED
    return out


def label_symbol(
    vectors: Sequence[FeatureVector], cfg: LabelConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, forward returns and thresholds for one symbol's vectors (in time order)."""
    closes = np.array([v.close for v in vectors], dtype=np.float64)
    fwd = np.full(len(closes), np.nan)
    h = cfg.horizon
    if len(closes) > h:
        fwd[:-h] = np.log(closes[h:] / closes[:-h])
    thr = np.array(
        [label_threshold(v.values["vol_ewma"], v.values["spread_bps"], cfg) for v in vectors]
    )
    return classify(fwd, thr), fwd, thr
