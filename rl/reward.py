"""The PPO sizing reward: profit, minus the risk taken in volatile markets, minus new drawdown.

The audit's recommendation ("profit + risk + drawdown") and the project's requirement ("PnL, risk
taken, volatility, drawdown"), both in docs/audit.md, as one pure function of a closed trade::

    pnl      = net_pnl / equity_at_entry                      (fees and slippage included)
    risk     = size_frac * vol_daily                          (expected daily equity swing)
    drawdown = max(0, drawdown_after - drawdown_before)       (only new drawdown counts)
    bound    = sum over the action's coordinates of max(0, |a| - 1) ** 2
    reward   = scale * (pnl - risk_weight * risk - drawdown_weight * drawdown)
               - bound_weight * bound

``size_frac`` is the position notional / equity at entry: the risk taken; ``vol_daily`` is the
market's volatility, so the same size costs more in a wild market. Drawdowns are fractions of
the sub-account's peak equity (:attr:`rl.state.SubAccount.drawdown`); a loss that deepens the
drawdown is charged twice (at the default weight 1), a loss inside a recovery is not. A win
never earns a drawdown bonus. ``scale`` = 100 puts rewards in percent of equity, a range
PPO's value head fits without tiny gradients.

``bound`` keeps the policy where its actions matter. The policy samples a raw Gaussian action;
:func:`rl.state.map_action` clips each coordinate to [-1, 1], so every action beyond the box
trades like its edge. Without a cost there, a policy that learned "smaller is better" pushes
its mean ever further out (nothing pulls it back) and no later reward can move its trades
again. A small squared cost on the excess (``bound_weight`` 0.1, per unit of excess squared,
in reward units) holds the mean near the box, from where the next good trades can raise it.

A closed trade's reward is :func:`trade_reward` of its ``trade.opened`` and ``trade.closed``
records, and nothing else: the live learner and the pretraining environment call it on the
same records, built by the same execution code (:mod:`operators.portfolio`), so they agree to
the last bit. Its inputs: ``equity_at_entry = equity_after - net_pnl`` (the sub-account),
``size_frac = size_usd / equity_at_entry``, ``vol_daily`` and ``drawdown_before`` from the
entry's RL state vector (what the policy saw), ``drawdown_after`` from the exit state vector.

>>> w = RewardWeights()
>>> round(reward(net_pnl=20.0, equity_at_entry=10_000.0, size_frac=0.1, vol_daily=0.005,
...              drawdown_before=0.0, drawdown_after=0.0, weights=w), 6)
0.1975
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rl.state import NAMES
from schemas.trades import TradeClosed, TradeOpened

VOL = NAMES.index("vol_daily")
DRAWDOWN = NAMES.index("drawdown")


@dataclass(frozen=True, slots=True)
class RewardWeights:
    """Weights of the reward terms (all non-negative).

    * ``risk`` = 0.05: a trade's expected absolute PnL over a one-hour hold is of order
      ``size_frac * vol_daily * sqrt(1/24)`` ~ 0.2 x the risk term, so 0.05 charges about a
      quarter of that: sizing up must pay for itself, but risk is not forbidden.
    * ``drawdown`` = 1.0: new drawdown costs as much again as the loss that made it.
    * ``scale`` = 100: rewards in percent of equity.
    * ``bound`` = 0.1: per unit of squared action excess beyond [-1, 1] (module docstring).
    """

    risk: float = 0.05
    drawdown: float = 1.0
    scale: float = 100.0
    bound: float = 0.1

    def __post_init__(self) -> None:
        for name in ("risk", "drawdown", "scale", "bound"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"reward weight {name} must be finite and >= 0, got {v}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RewardWeights:
        return cls(**{k: float(v) for k, v in d.items()})


@dataclass(frozen=True, slots=True)
class RewardTerms:
    """The unweighted terms and the weighted total (for logging and the ClickHouse record)."""

    pnl: float
    risk: float
    drawdown: float
    total: float
    bound: float = 0.0


def reward_terms(
    *,
    net_pnl: float,
    equity_at_entry: float,
    size_frac: float,
    vol_daily: float,
    drawdown_before: float,
    drawdown_after: float,
    weights: RewardWeights,
    raw_action: Sequence[float] = (),
) -> RewardTerms:
    """Each term and the total (see the module docstring).

    Raises ``ValueError`` on a non-finite input, a non-positive equity or a negative size or
    volatility: a NaN reward would silently poison a PPO update, so it must never be built.
    """
    args = {
        "net_pnl": net_pnl,
        "equity_at_entry": equity_at_entry,
        "size_frac": size_frac,
        "vol_daily": vol_daily,
        "drawdown_before": drawdown_before,
        "drawdown_after": drawdown_after,
    }
    for name, v in args.items():
        if not math.isfinite(v):
            raise ValueError(f"reward input {name} is not finite: {v}")
    if equity_at_entry <= 0:
        raise ValueError(f"equity at entry must be positive, got {equity_at_entry}")
    if size_frac < 0 or vol_daily < 0:
        raise ValueError(f"size and volatility are non-negative, got {size_frac}, {vol_daily}")
    pnl = net_pnl / equity_at_entry
    risk = size_frac * vol_daily
    dd = max(0.0, drawdown_after - drawdown_before)
    bound = math.fsum(max(0.0, abs(a) - 1.0) ** 2 for a in raw_action if math.isfinite(a))
    total = (
        weights.scale * (pnl - weights.risk * risk - weights.drawdown * dd) - weights.bound * bound
    )
    return RewardTerms(pnl, risk, dd, total, bound)


def reward(
    *,
    net_pnl: float,
    equity_at_entry: float,
    size_frac: float,
    vol_daily: float,
    drawdown_before: float,
    drawdown_after: float,
    weights: RewardWeights,
    raw_action: Sequence[float] = (),
) -> float:
    """The scalar reward of one closed trade (:func:`reward_terms` ``.total``)."""
    return reward_terms(
        net_pnl=net_pnl,
        equity_at_entry=equity_at_entry,
        size_frac=size_frac,
        vol_daily=vol_daily,
        drawdown_before=drawdown_before,
        drawdown_after=drawdown_after,
        weights=weights,
        raw_action=raw_action,
    ).total


def trade_reward(opened: TradeOpened, closed: TradeClosed, weights: RewardWeights) -> float:
    """The reward of one closed trade from its two records (see the module docstring)."""
    equity_at_entry = closed.equity_after - closed.net_pnl
    state = opened.entry.rl.state
    return reward(
        net_pnl=closed.net_pnl,
        equity_at_entry=equity_at_entry,
        size_frac=opened.size_usd / equity_at_entry,
        vol_daily=state[VOL],
        drawdown_before=state[DRAWDOWN],
        drawdown_after=closed.exit_state[DRAWDOWN],
        weights=weights,
        raw_action=opened.entry.rl.raw_action,
    )
