"""The feature schema: the features' names, the parameters that define them, the version id
that names both (a model trained on one feature set refuses vectors of another), and the vectors
the models see for one symbol at one bar close. The code that computes them is
:mod:`operators.features`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from schemas.bars import BarStep
from schemas.records import quick_init
from schemas.ticks import BlockTag

RETURN_HORIZONS = (1, 5, 15, 60)
EWMA_VOL_ALPHA = 0.06
RSI_PERIOD = 14
ATR_PERIOD = 14
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
BB_PERIOD, BB_SIGMA = 20, 2.0
Z_PERIOD = 20

FEATURE_NAMES: tuple[str, ...] = (
    *(f"ret_{k}" for k in RETURN_HORIZONS),
    "vol_ewma",
    "vol_daily",
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_pctb",
    "atr_14",
    "volume_z",
    "activity_z",
    "range_hl",
    "vwap_dist",
    "spread_bps",
    "imbalance",
    "tod_sin",
    "tod_cos",
    "dow_sin",
    "dow_cos",
)
_PARAMS = (
    RETURN_HORIZONS,
    EWMA_VOL_ALPHA,
    RSI_PERIOD,
    ATR_PERIOD,
    MACD_FAST,
    MACD_SLOW,
    MACD_SIGNAL,
    BB_PERIOD,
    BB_SIGMA,
    Z_PERIOD,
)
_DIGEST = hashlib.sha256(repr((FEATURE_NAMES, _PARAMS)).encode()).hexdigest()
FEATURE_SET_VERSION = f"fs1-{_DIGEST[:8]}"


@quick_init
@dataclass(frozen=True, slots=True)
class FeatureVector:
    """Features of ``symbol`` known at ``ts`` (the close of the bar that starts at ``bar_start``).

    ``values`` maps feature name to value (NaN where the feed cannot provide it, e.g. spread
    on trades-only data). ``window`` is the last ``QT_SEQ_WINDOW`` bar log-returns, oldest
    first, NaN-padded during warm-up; the sequence models read it. ``warm`` is False until
    every feature has its full lookback: warm-up bars are marked, never guessed.
    ``feature_set`` is the version id of the code that computed them.
    """

    symbol: str
    ts: datetime
    bar_start: datetime
    feature_set: str
    warm: bool
    close: float
    values: dict[str, float]
    window: tuple[float, ...]


@dataclass(slots=True)
class FeatureStep:
    """What the feature step emits per bar step: the vectors of the bars it closed (one per
    bar, in order) and the bar step itself, whose ticks execution needs downstream."""

    symbol: str
    vectors: list[FeatureVector]
    tag: BlockTag | None
    clocks: list[int]
    bar_step: BarStep | None = None
