"""The RL sizing vocabulary: the state the PPO policy sees, its action bounds, its decision.

The policy sizes one accepted signal at a time. Its **state** (:class:`RLState`) has eight fixed,
named components; :meth:`RLState.to_array` is exactly what the network is fed, and that array
(not the dataclass) is what a trade stores, so the learning flow replays the very input the
policy acted on. Each component is clipped to the documented range and a NaN becomes its
documented neutral value:

======================  ================  ===========  =====================================
component               range (clipped)   if NaN       meaning
======================  ================  ===========  =====================================
``equity_ratio``        [0, 10]           1.0          sub-account equity / its start equity
``vol_daily``           [0, 1]            0.0          the ``vol_daily`` feature (EWMA vol
                                                       scaled to one day; FX ~0.002-0.01)
``win_rate``            [0, 1]            0.5          wins / closed trades among the last N
                                                       of this sub-account (0.5 with none)
``mean_pnl_pct``        [-10, 10]         0.0          mean net PnL of the last N closed
                                                       trades, percent of each one's notional
``drawdown``            [0, 1]            0.0          1 - equity / peak equity (sub-account)
``exposure``            [0, 10]           0.0          notional of all open positions at the
                                                       order's fill / the account's equity
                                                       (QT_START_EQUITY + realised PnL)
``confidence``          [0, 1]            0.0          the signal's confidence
``direction``           [-1, 1]           0.0          +1 BUY, -1 SELL
======================  ================  ===========  =====================================

The **action** is PPO's raw sample in ``Box([-1, 1]^3)`` (Gaussian samples may fall outside;
they are stored unclipped, since their log-probability is of the unclipped value). Each
coordinate is clipped to [-1, 1] and mapped affinely onto its :class:`ActionBounds` interval:
``lo + (a + 1) / 2 * (hi - lo)``: size as a fraction of sub-account equity, take-profit and
stop-loss distances in **percent** of the entry fill price. A NaN/inf action (or non-positive
equity) gives the documented safe default and ``degenerate=True``.

>>> acct = SubAccount(10_000.0)
>>> s = acct.state(vol_daily=0.004, confidence=0.8, direction=1, exposure=0.0)
>>> s.to_array().tolist() == [1.0, 0.004000000189989805, 0.5, 0.0, 0.0, 0.0, 0.800000011920929,
...                           1.0]
True
>>> map_action((1.0, -1.0, 0.0), 10_000.0, ActionBounds())
(2500.0, 0.05, 0.525, False)
>>> map_action((float("nan"), 0.0, 0.0), 10_000.0, ActionBounds())
(100.0, 1.025, 0.525, True)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from schemas.rl import SizingDecision as SizingDecision  # re-exported: the RL vocabulary
from schemas.signals import Action

NAMES: tuple[str, ...] = (
    "equity_ratio",
    "vol_daily",
    "win_rate",
    "mean_pnl_pct",
    "drawdown",
    "exposure",
    "confidence",
    "direction",
)
STATE_LOW = np.array([0.0, 0.0, 0.0, -10.0, 0.0, 0.0, 0.0, -1.0], dtype=np.float32)
STATE_HIGH = np.array([10.0, 1.0, 1.0, 10.0, 1.0, 10.0, 1.0, 1.0], dtype=np.float32)
STATE_NEUTRAL = np.array([1.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=np.float32)
ACTION_DIM = 3
ACTION_NAMES: tuple[str, ...] = ("size", "tp", "sl")
# The raw action space the policy samples in (wider than the [-1, 1] that map_action clips to,
# so that the learning algorithm sees its own unclipped samples; rl.reward charges the excess)
ACTION_LIMIT = 10.0


@dataclass(frozen=True, slots=True)
class RLState:
    """One decision's state (see the module table for ranges).

    ``equity_usd`` is context, not an observed component: it turns the size fraction the policy
    picks into dollars. It is keyword-only so positional construction follows :data:`NAMES`.
    """

    equity_ratio: float
    vol_daily: float
    win_rate: float
    mean_pnl_pct: float
    drawdown: float
    exposure: float
    confidence: float
    direction: float
    equity_usd: float = field(kw_only=True)

    NAMES = NAMES  # a class attribute (no annotation), not a field

    def to_array(self) -> np.ndarray:
        """The network input: float32, NaN -> neutral value, clipped to the documented range."""
        raw = np.array([getattr(self, n) for n in NAMES], dtype=np.float64)
        raw = np.where(np.isnan(raw), STATE_NEUTRAL, raw)
        return np.clip(raw, STATE_LOW, STATE_HIGH).astype(np.float32)

    @classmethod
    def from_array(cls, values: Sequence[float], equity_usd: float) -> RLState:
        """Rebuild a state from a stored vector (the order of :data:`NAMES`)."""
        if len(values) != len(NAMES):
            raise ValueError(f"RL state needs {len(NAMES)} values, got {len(values)}")
        return cls(*(float(v) for v in values), equity_usd=float(equity_usd))


def direction_of(side: Action | str | int | float) -> float:
    """+1.0 for BUY, -1.0 for SELL (also accepts +-1); anything else is an error, not a guess."""
    if isinstance(side, int | float) and not isinstance(side, bool):
        if side in (1, -1):
            return float(side)
    elif side in (Action.BUY, "BUY"):
        return 1.0
    elif side in (Action.SELL, "SELL"):
        return -1.0
    raise ValueError(f"a sized signal is BUY or SELL, got {side!r}")


@dataclass(frozen=True, slots=True)
class ActionBounds:
    """Where the policy's three outputs land, for 1-minute FX / crypto bars.

    * ``size``: fraction of the sub-account's equity, [1%, 25%].
    * ``tp``: take-profit distance, percent of the entry fill, [0.05%, 2%]: 0.05% is a few
      spreads on a major FX pair, 2% a large move for a one-hour hold even on crypto.
    * ``sl``: stop-loss distance, percent of the entry fill, [0.05%, 1%]: tighter cap than TP
      so a single loss stays bounded (at most 25% x 1% = 0.25% of equity before costs).

    Safe default (degenerate action): minimum size, middle TP and SL.
    """

    min_frac: float = 0.01
    max_frac: float = 0.25
    tp_min_pct: float = 0.05
    tp_max_pct: float = 2.0
    sl_min_pct: float = 0.05
    sl_max_pct: float = 1.0

    def __post_init__(self) -> None:
        pairs = (
            (self.min_frac, self.max_frac),
            (self.tp_min_pct, self.tp_max_pct),
            (self.sl_min_pct, self.sl_max_pct),
        )
        for lo, hi in pairs:
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
                raise ValueError(f"action bounds need 0 < lo <= hi, got {self!r}")
        if self.max_frac > 1:
            raise ValueError("max_frac above 1 would lever the sub-account")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ActionBounds:
        return cls(**{k: float(v) for k, v in d.items()})


def _affine(a: float, lo: float, hi: float) -> float:
    return lo + (min(max(a, -1.0), 1.0) + 1.0) * 0.5 * (hi - lo)


def map_action(
    raw: Sequence[float] | np.ndarray, equity_usd: float, bounds: ActionBounds
) -> tuple[float, float, float, bool]:
    """Raw PPO action -> (position_size_usd, tp_pct, sl_pct, degenerate).

    Clipped affine map per coordinate (module docstring). Degenerate, with the safe default
    (minimum size, middle TP/SL): a non-finite coordinate or a wrong length. Non-positive or
    non-finite equity is degenerate too and sizes 0: nothing left to risk.
    """
    vals = [float(x) for x in raw]
    tp_mid = 0.5 * (bounds.tp_min_pct + bounds.tp_max_pct)
    sl_mid = 0.5 * (bounds.sl_min_pct + bounds.sl_max_pct)
    if not (math.isfinite(equity_usd) and equity_usd > 0):
        return 0.0, tp_mid, sl_mid, True
    if len(vals) != ACTION_DIM or not all(math.isfinite(x) for x in vals):
        return bounds.min_frac * equity_usd, tp_mid, sl_mid, True
    frac = _affine(vals[0], bounds.min_frac, bounds.max_frac)
    return (
        frac * equity_usd,
        _affine(vals[1], bounds.tp_min_pct, bounds.tp_max_pct),
        _affine(vals[2], bounds.sl_min_pct, bounds.sl_max_pct),
        False,
    )


@dataclass
class SubAccount:
    """One symbol's paper sub-account: equity, peak and recent closed trades.

    The env and the live flow build states from this one class, so training and serving
    compute ``equity_ratio``, ``win_rate``, ``mean_pnl_pct`` and ``drawdown`` identically.
    ``window`` is N, the number of recent closed trades the performance components cover.
    """

    start_equity: float
    window: int = 20
    equity: float = field(init=False)
    peak: float = field(init=False)
    recent_pnl_pct: deque[float] = field(init=False)
    closed: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start_equity) and self.start_equity > 0):
            raise ValueError(f"start equity must be positive, got {self.start_equity}")
        if self.window < 1:
            raise ValueError("the performance window needs at least one trade")
        self.equity = self.start_equity
        self.peak = self.start_equity
        self.recent_pnl_pct = deque(maxlen=self.window)

    @property
    def drawdown(self) -> float:
        """1 - equity / peak: 0 at a new high, 1 when the sub-account is wiped out."""
        return max(0.0, 1.0 - self.equity / self.peak)

    def close_trade(self, net_pnl: float, notional: float) -> None:
        """Book one closed trade (net of fees) opened with ``notional`` dollars."""
        self.equity += net_pnl
        self.peak = max(self.peak, self.equity)
        pct = 100.0 * net_pnl / notional if notional > 0 else 0.0
        self.recent_pnl_pct.append(pct)
        self.closed += 1

    def state(
        self,
        *,
        vol_daily: float,
        confidence: float,
        direction: Action | str | float,
        exposure: float,
    ) -> RLState:
        """The RL state for a signal on this sub-account (``exposure`` is portfolio-wide)."""
        recent = self.recent_pnl_pct
        win_rate = sum(1 for p in recent if p > 0) / len(recent) if recent else 0.5
        mean_pnl = sum(recent) / len(recent) if recent else 0.0
        return RLState(
            self.equity / self.start_equity,
            vol_daily,
            win_rate,
            mean_pnl,
            self.drawdown,
            exposure,
            confidence,
            direction_of(direction),
            equity_usd=self.equity,
        )

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state for Bytewax recovery snapshots."""
        return {
            "start_equity": self.start_equity,
            "window": self.window,
            "equity": self.equity,
            "peak": self.peak,
            "recent_pnl_pct": list(self.recent_pnl_pct),
            "closed": self.closed,
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> SubAccount:
        acct = cls(float(snap["start_equity"]), int(snap["window"]))
        acct.equity = float(snap["equity"])
        acct.peak = float(snap["peak"])
        acct.recent_pnl_pct.extend(float(p) for p in snap["recent_pnl_pct"])
        acct.closed = int(snap["closed"])
        return acct
