"""A gymnasium environment that sizes historical signals: one step = one trade.

:class:`SizingEnv` replays a list of signals (:class:`SignalEvent`: symbol, the index of the bar
at whose close the signal was made, side, confidence, ``vol_daily``) over the bars they were
made on. Each step the agent's action sizes the current signal (:func:`rl.state.map_action`),
:func:`simulate_trade` plays the trade forward on that symbol's bars, the symbol's
:class:`~rl.state.SubAccount` books it, :mod:`rl.reward` scores it, and the observation is the
**next** signal's :class:`~rl.state.RLState`.

Execution rules (bar ``i`` is the signal's bar, ``H`` = ``max_holding_bars``, ``d`` = +1 long /
-1 short, ``slip`` and ``fee`` in bps / 10,000):

* Entry at the open of bar ``i+1`` (the first price after the decision), filled at
  ``open * (1 + d * slip)``. A signal on the last bar cannot be entered and is skipped.
* Levels from the entry fill ``e``: take-profit ``e * (1 + d * tp)``, stop-loss
  ``e * (1 - d * sl)``.
* Bars ``i+1 .. i+H`` are checked in order, the entry bar included (its high/low come after
  its open). A stop is hit when the bar's low (long) / high (short) reaches it, a target when
  the high (long) / low (short) does. Both in one bar: the **stop** is assumed first
  (the conservative reading of an OHLC bar). A stop gapped through fills at the bar's open
  (worse than the level); a target fills at its level (a limit order, no price improvement).
* Otherwise the trade closes at bar ``i+H``'s close (``time``), or at the last bar's close if
  the data ends first (``end``).
* Exit fill = exit price ``* (1 - d * slip)``. Quantity = size_usd / entry fill; each fill pays
  ``fee`` on its notional; ``net_pnl = d * qty * (exit_fill - entry_fill) - fees``.

Book-keeping, so that no state component looks ahead:

* One open position per symbol: a signal whose symbol still holds a position at its decision
  time (the previous trade exits on a bar after the signal's bar) is skipped (counted).
* The trade's PnL is booked to its sub-account at the step; the next signal on that symbol is
  necessarily after the exit, so its equity, drawdown and recent performance are exact.
* ``exposure`` = notional of the trades open at the decision time (decided at or before it,
  exiting after it), over the total equity of all sub-accounts counting only PnL of trades
  closed by then.

Episodes: one pass over the signals; ``terminated`` after the last enterable one (the final
observation is the post-trade state of the last signal's sub-account). Every trade is its own
PPO episode in the updates (see :mod:`rl.policy`), so train with ``gamma = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from rl.reward import RewardWeights, reward_terms
from rl.state import (
    ACTION_DIM,
    STATE_HIGH,
    STATE_LOW,
    ActionBounds,
    RLState,
    SubAccount,
    direction_of,
    map_action,
)
from schemas.bars import Bar
from schemas.features import FeatureVector
from schemas.signals import Action
from schemas.timeutil import to_ms
from settings import Settings


@dataclass(frozen=True, slots=True)
class SignalEvent:
    """A BUY or SELL signal made at the close of ``bars[symbol][bar_index]``."""

    symbol: str
    bar_index: int
    side: Action
    confidence: float
    vol_daily: float

    def __post_init__(self) -> None:
        direction_of(self.side)  # HOLD is not a signal to size


@dataclass(frozen=True, slots=True)
class EnvConfig:
    """Simulation and reward parameters. Defaults match :class:`settings.Settings` with two
    symbols (100k split in two, 0.5 bps fee and slippage per fill, 60 one-minute bars)."""

    start_equity: float = 50_000.0
    fee_bps: float = 0.5
    slippage_bps: float = 0.5
    max_holding_bars: int = 60
    perf_window: int = 20
    bounds: ActionBounds = field(default_factory=ActionBounds)
    weights: RewardWeights = field(default_factory=RewardWeights)

    def __post_init__(self) -> None:
        if self.max_holding_bars < 1:
            raise ValueError("a trade is held at least one bar")
        if self.fee_bps < 0 or self.slippage_bps < 0:
            raise ValueError("fees and slippage are non-negative")

    @classmethod
    def from_settings(cls, settings: Settings, n_symbols: int, **overrides: Any) -> EnvConfig:
        """The live flow's numbers: equity split per symbol, costs, holding time in bars."""
        values: dict[str, Any] = {
            "start_equity": settings.start_equity / max(1, n_symbols),
            "fee_bps": settings.fee_bps,
            "slippage_bps": settings.slippage_bps,
            "max_holding_bars": max(1, settings.max_holding_seconds // settings.bar_seconds),
        }
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True, slots=True)
class TradeOutcome:
    """One simulated trade. ``exit_reason``: ``tp``, ``sl``, ``time`` or ``end``."""

    symbol: str
    direction: float
    entry_index: int
    exit_index: int
    entry_price: float
    exit_price: float
    quantity: float
    notional: float
    fees: float
    gross_pnl: float
    net_pnl: float
    exit_reason: str
    entry_ms: int
    exit_ms: int


def simulate_trade(bars: Sequence[Bar], bar_index: int, direction: float, size_usd: float,
                   tp_pct: float, sl_pct: float, fee_bps: float, slippage_bps: float,
                   max_holding_bars: int) -> TradeOutcome | None:
    """Play one trade forward on ``bars`` (rules in the module docstring); None if the signal's
    bar is the last one (nothing to enter on)."""
    entry_i = bar_index + 1
    if bar_index < 0 or entry_i >= len(bars):
        return None
    d = direction_of(direction)
    slip = slippage_bps / 10_000.0
    fee = fee_bps / 10_000.0
    entry = bars[entry_i].open * (1.0 + d * slip)
    tp_level = entry * (1.0 + d * tp_pct / 100.0)
    sl_level = entry * (1.0 - d * sl_pct / 100.0)
    last = min(bar_index + max_holding_bars, len(bars) - 1)
    exit_i, exit_raw, reason = last, bars[last].close, (
        "time" if last == bar_index + max_holding_bars else "end")
    for j in range(entry_i, last + 1):
        b = bars[j]
        if d > 0:
            sl_hit, tp_hit = b.low <= sl_level, b.high >= tp_level
            gap_fill = min(b.open, sl_level)
        else:
            sl_hit, tp_hit = b.high >= sl_level, b.low <= tp_level
            gap_fill = max(b.open, sl_level)
        if sl_hit:
            exit_i, exit_raw, reason = j, gap_fill, "sl"
            break
        if tp_hit:
            exit_i, exit_raw, reason = j, tp_level, "tp"
            break
    exit_fill = exit_raw * (1.0 - d * slip)
    qty = size_usd / entry
    exit_notional = qty * exit_fill
    fees = (size_usd + exit_notional) * fee
    gross = d * qty * (exit_fill - entry)
    return TradeOutcome(
        symbol=bars[entry_i].symbol, direction=d, entry_index=entry_i, exit_index=exit_i,
        entry_price=entry, exit_price=exit_fill, quantity=qty, notional=size_usd, fees=fees,
        gross_pnl=gross, net_pnl=gross - fees, exit_reason=reason,
        entry_ms=to_ms(bars[entry_i].start), exit_ms=to_ms(bars[exit_i].end))


@dataclass(slots=True)
class _Open:
    decided_ms: int
    exit_ms: int
    notional: float
    net_pnl: float


class SizingEnv(gym.Env):
    """Size each historical signal; reward from :mod:`rl.reward` (module docstring)."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 -- gymnasium's convention

    def __init__(self, bars: Mapping[str, Sequence[Bar]], signals: Iterable[SignalEvent],
                 config: EnvConfig | None = None) -> None:
        super().__init__()
        self.config = config or EnvConfig()
        self.bars = {s: list(b) for s, b in bars.items()}
        sigs = []
        for s in signals:
            if s.symbol not in self.bars:
                raise ValueError(f"signal on {s.symbol!r} without bars")
            if not 0 <= s.bar_index < len(self.bars[s.symbol]):
                raise ValueError(f"signal bar index {s.bar_index} out of range for {s.symbol}")
            sigs.append(s)
        # decision time = the close of the signal's bar; stable sort keeps the given tie order
        self.signals = sorted(sigs, key=lambda s: to_ms(self.bars[s.symbol][s.bar_index].end))
        if not any(s.bar_index + 1 < len(self.bars[s.symbol]) for s in self.signals):
            raise ValueError("no signal can be entered (each needs a later bar)")
        self.observation_space = gym.spaces.Box(STATE_LOW, STATE_HIGH, dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
        self._reset_book()

    @property
    def bounds(self) -> ActionBounds:
        return self.config.bounds

    def _reset_book(self) -> None:
        cfg = self.config
        self.accounts = {s: SubAccount(cfg.start_equity, cfg.perf_window) for s in self.bars}
        self._open: list[_Open] = []
        self._busy_until: dict[str, int] = {}  # symbol -> exit bar index of its last trade
        self._pos = -1
        self.skipped = 0
        self.trades: list[TradeOutcome] = []
        self.state: RLState | None = None

    def _decision_ms(self, sig: SignalEvent) -> int:
        return to_ms(self.bars[sig.symbol][sig.bar_index].end)

    def _advance(self) -> bool:
        """Move to the next enterable signal; False when there is none."""
        while True:
            self._pos += 1
            if self._pos >= len(self.signals):
                return False
            sig = self.signals[self._pos]
            no_entry_bar = sig.bar_index + 1 >= len(self.bars[sig.symbol])
            still_open = self._busy_until.get(sig.symbol, -1) > sig.bar_index
            if not (no_entry_bar or still_open):
                return True
            self.skipped += 1

    def exposure_at(self, t_ms: int) -> float:
        """Open notional at ``t_ms`` / total equity counting only trades closed by then."""
        self._open = [o for o in self._open if o.exit_ms > t_ms or o.decided_ms > t_ms]
        open_now = [o for o in self._open if o.decided_ms <= t_ms]
        equity = sum(a.equity for a in self.accounts.values())
        equity -= sum(o.net_pnl for o in self._open)  # booked early, not closed yet
        if equity <= 0:
            return float(STATE_HIGH[5])
        return sum(o.notional for o in open_now) / equity

    def _state_for(self, sig: SignalEvent) -> RLState:
        return self.accounts[sig.symbol].state(
            vol_daily=sig.vol_daily, confidence=sig.confidence, direction=sig.side,
            exposure=self.exposure_at(self._decision_ms(sig)))

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._reset_book()
        self._advance()
        self.state = self._state_for(self.signals[self._pos])
        return self.state.to_array(), {"signal": self.signals[self._pos]}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self.state is None or self._pos >= len(self.signals):
            raise RuntimeError("step() after the episode ended: call reset()")
        cfg = self.config
        sig = self.signals[self._pos]
        state = self.state
        acct = self.accounts[sig.symbol]
        equity, dd_before = acct.equity, acct.drawdown
        size_usd, tp_pct, sl_pct, degenerate = map_action(
            np.asarray(action, dtype=np.float64).ravel(), equity, cfg.bounds)
        trade = simulate_trade(self.bars[sig.symbol], sig.bar_index, state.direction, size_usd,
                               tp_pct, sl_pct, cfg.fee_bps, cfg.slippage_bps,
                               cfg.max_holding_bars)
        assert trade is not None  # _advance only stops on enterable signals
        acct.close_trade(trade.net_pnl, trade.notional)
        self._busy_until[sig.symbol] = trade.exit_index
        self._open.append(_Open(self._decision_ms(sig), trade.exit_ms, trade.notional,
                                trade.net_pnl))
        self.trades.append(trade)
        terms = reward_terms(
            net_pnl=trade.net_pnl, equity_at_entry=equity,
            size_frac=size_usd / equity if equity > 0 else 0.0,
            vol_daily=float(state.to_array()[1]), drawdown_before=dd_before,
            drawdown_after=acct.drawdown, weights=cfg.weights)
        info = {"signal": sig, "trade": trade, "terms": terms, "position_size_usd": size_usd,
                "tp_pct": tp_pct, "sl_pct": sl_pct, "degenerate": degenerate,
                "skipped": self.skipped}
        terminated = not self._advance()
        if terminated:
            last = acct.state(vol_daily=sig.vol_daily, confidence=sig.confidence,
                              direction=sig.side, exposure=self.exposure_at(trade.exit_ms))
            self.state = None
            obs = last.to_array()
        else:
            self.state = self._state_for(self.signals[self._pos])
            obs = self.state.to_array()
        return obs, float(terms.total), terminated, False, info


def momentum_signals(symbol: str, vectors: Sequence[FeatureVector], min_strength: float = 1.0,
                     horizon: int = 5) -> list[SignalEvent]:
    """A simple, documented signal rule for tests and bootstrapping without the ensemble.

    On each warm vector ``z = ret_h / (vol_ewma * sqrt(h))`` (the h-bar return in units of
    its expected size, h = ``horizon`` in 1, 5, 15, 60); ``|z| >= min_strength`` gives a
    signal in the direction of ``z`` (momentum) with confidence ``|z| / (1 + |z|)``.
    ``vectors[i]`` must belong to bar ``i`` (as in :class:`models.dataset.History`).
    """
    out: list[SignalEvent] = []
    for i, v in enumerate(vectors):
        if not v.warm:
            continue
        ret, vol = v.values[f"ret_{horizon}"], v.values["vol_ewma"]
        if not (math.isfinite(ret) and math.isfinite(vol)) or vol <= 0:
            continue
        z = ret / (vol * math.sqrt(horizon))
        if abs(z) >= min_strength:
            out.append(SignalEvent(symbol, i, Action.BUY if z > 0 else Action.SELL,
                                   abs(z) / (1.0 + abs(z)), v.values["vol_daily"]))
    return out
