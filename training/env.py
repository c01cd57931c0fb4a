"""A gymnasium environment that sizes historical orders with the live execution code.

:class:`SizingEnv` replays a history's ticks through :class:`operators.portfolio.Portfolio`,
exactly as the live flow's decision engine does, with the bars' trading decisions given
(:class:`SignalEvent`: a BUY or SELL with its confidence at the close of a bar; every other bar
is a HOLD). Each step is one order at its fill: the observation is the RL state the portfolio
builds there (the symbol's sub-account, the signal, ``vol_daily``, and ``exposure`` over every
open position and the whole account's equity), the action sizes it
(:func:`operators.sizing.sized_from`, as live), and the reward is
:func:`rl.reward.trade_reward` of the trade's opened and closed records, its close found by
running that symbol's own events ahead on a copy (:meth:`Portfolio.preview_close`: its stop,
target, holding limit, an opposite signal's fill, or the end of the data).

One state builder, one reward and one execution for pretraining and live sizing: given the same
ticks, decisions and actions, the environment and the live flow produce identical state vectors
and rewards (tests/rl/test_parity.py checks it on a real replay). The rules (fills at the first
tick after the decision, exits on ticks, one position per symbol, opposite signals reverse,
same-side signals are ignored) are :mod:`operators.portfolio`'s.

Episodes: one pass over the history; ``terminated`` after the last order (the final observation
is the last order's state). Every trade is its own PPO episode in the updates
(:mod:`rl.policy`), so train with ``gamma = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from models.base import MODEL_NAMES
from models.dataset import History
from operators.portfolio import EventKind, ExecConfig, Portfolio, SizingRequest
from operators.sizing import SizingConfig, sized_from
from rl.policy import action_space
from rl.reward import RewardWeights, trade_reward
from rl.state import STATE_HIGH, STATE_LOW, ActionBounds, direction_of, map_action
from schemas.decisions import BarDecision
from schemas.features import FeatureVector
from schemas.rl import SizingDecision
from schemas.signals import Action, Consensus, Signal, Vote
from schemas.timeutil import to_ms
from schemas.trades import TradeOpened
from settings import Settings

ENV_VERSION = "env"  # the policy version recorded on the environment's simulated orders


@dataclass(frozen=True, slots=True)
class SignalEvent:
    """A BUY or SELL signal made at the close of ``history.bars[symbol][bar_index]``."""

    symbol: str
    bar_index: int
    side: Action
    confidence: float
    vol_daily: float

    def __post_init__(self) -> None:
        direction_of(self.side)  # HOLD is not a signal to size


@dataclass(frozen=True)
class EnvConfig:
    """Execution, sizing and reward as the live flow has them (:meth:`from_settings`)."""

    execution: ExecConfig = field(default_factory=ExecConfig)
    sizing: SizingConfig = field(default_factory=SizingConfig)
    bounds: ActionBounds = field(default_factory=ActionBounds)
    weights: RewardWeights = field(default_factory=RewardWeights)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> EnvConfig:
        """The live flow's numbers: the same equity split, costs, limits and sizing rules."""
        values: dict[str, Any] = {
            "execution": ExecConfig.from_settings(settings),
            "sizing": SizingConfig.from_settings(settings),
        }
        values.update(overrides)
        return cls(**values)


def bar_decision(vector: FeatureVector, action: Action, confidence: float) -> BarDecision:
    """The decision a bar carries into execution (no supervisor verdict: the signals given
    are the tradable ones)."""
    votes = tuple(Vote(m, ENV_VERSION, action, confidence) for m in MODEL_NAMES)
    signal = Signal(
        vector.symbol,
        vector.ts,
        vector.bar_start,
        action,
        confidence,
        Consensus.UNANIMOUS,
        0.0,
        0.0,
        vector.values.get("vol_daily", math.nan),
        False,
        vector.warm,
        vector.feature_set,
        votes,
        (),
    )
    end = to_ms(vector.ts)
    return BarDecision(vector.symbol, end, end, signal, vector, None)


def env_decision(
    state: np.ndarray, raw: Sequence[float] | np.ndarray, bounds: ActionBounds, equity_usd: float
) -> SizingDecision:
    """The sizing record of an action taken in the environment (mapped as live)."""
    size, tp, sl, degenerate = map_action(raw, equity_usd, bounds)
    return SizingDecision(
        tuple(float(x) for x in state),
        tuple(float(x) for x in raw),
        0.0,
        0.0,
        ENV_VERSION,
        size,
        tp,
        sl,
        degenerate,
        True,
    )


class SizingEnv(gym.Env):
    """Size each historical order; reward from its trade (module docstring)."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 -- gymnasium's convention

    def __init__(
        self, history: History, signals: Iterable[SignalEvent], config: EnvConfig | None = None
    ) -> None:
        super().__init__()
        if not history.steps:
            raise ValueError("SizingEnv replays ticks: build the history with keep_ticks=True")
        self.config = config or EnvConfig()
        self.history = history
        chosen: dict[tuple[str, int], tuple[Action, float]] = {}
        for s in signals:
            bars = history.bars.get(s.symbol)
            if bars is None:
                raise ValueError(f"signal on {s.symbol!r} without bars")
            if not 0 <= s.bar_index < len(bars):
                raise ValueError(f"signal bar index {s.bar_index} out of range for {s.symbol}")
            chosen[(s.symbol, to_ms(bars[s.bar_index].end))] = (s.side, s.confidence)
        if not chosen:
            raise ValueError("no signal to size")
        self._decisions: dict[tuple[str, int], BarDecision] = {}
        for symbol, vectors in history.vectors.items():
            for v in vectors:
                action, conf = chosen.get((symbol, to_ms(v.ts)), (Action.HOLD, 0.0))
                self._decisions[(symbol, to_ms(v.ts))] = bar_decision(v, action, conf)
        self.observation_space = gym.spaces.Box(STATE_LOW, STATE_HIGH, dtype=np.float32)
        self.action_space = action_space()  # raw samples, mapped (clipped) as live
        self.portfolio = Portfolio(self.config.execution)
        self.request: SizingRequest | None = None
        self._fill: Any = None
        self.trades: list[tuple[TradeOpened, Any]] = []

    @property
    def bounds(self) -> ActionBounds:
        return self.config.bounds

    def decide(self, symbol: str, bar_end_ms: int) -> BarDecision:
        return self._decisions[(symbol, bar_end_ms)]

    def _next_request(self) -> SizingRequest | None:
        """Run the portfolio to the next order that needs a size."""
        pf = self.portfolio
        while (ev := pf.pop(math.inf)) is not None:
            if ev.kind is EventKind.DECIDE:
                bar = pf.bar(ev)
                pf.apply(ev, bar, self.decide(ev.symbol, bar.bar_end_ms))
            elif ev.kind is EventKind.FILL:
                _, request = pf.begin_fill(ev)
                if request is not None:
                    self._fill = ev  # done once the order is sized (step)
                    return request
            else:
                pf.exit(ev)
            pf.done(ev)
        return None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.portfolio = Portfolio(self.config.execution)
        for symbol in sorted(self.history.steps):
            for step in self.history.steps[symbol]:
                self.portfolio.add(
                    symbol,
                    step.ticks,
                    [
                        (ci, clock, to_ms(bar.end), None)
                        for ci, clock, bar in zip(
                            step.close_index, step.clocks, step.bars, strict=True
                        )
                    ],
                )
        self.trades = []
        self.request = self._next_request()
        if self.request is None:
            raise ValueError("no signal can be filled (each needs a later tick)")
        return self.request.state.to_array(), {"request": self.request}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        req = self.request
        if req is None:
            raise RuntimeError("step() after the episode ended: call reset()")
        obs = req.state.to_array()
        raw = np.asarray(action, dtype=np.float64).ravel()
        decision = env_decision(obs, raw, self.bounds, req.state.equity_usd)
        sized = sized_from(decision, self.config.sizing, self.bounds, req.state.equity_usd)
        opened = self.portfolio.complete_fill(req, sized)
        self.portfolio.done(self._fill)
        reward = 0.0
        info: dict[str, Any] = {"request": req, "sized": sized}
        if opened:
            trade = opened[0].event
            assert isinstance(trade, TradeOpened)
            closed = self.portfolio.preview_close(req.symbol, self.decide)
            assert closed is not None
            reward = trade_reward(trade, closed, self.config.weights)
            self.trades.append((trade, closed))
            info.update(opened=trade, closed=closed)
        self.request = self._next_request()
        if self.request is None:
            self.portfolio.finish()  # the end of the data closes what is open
            return obs, float(reward), True, False, info
        return self.request.state.to_array(), float(reward), False, False, info


def momentum_signals(
    symbol: str, vectors: Sequence[FeatureVector], min_strength: float = 1.0, horizon: int = 5
) -> list[SignalEvent]:
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
            out.append(
                SignalEvent(
                    symbol,
                    i,
                    Action.BUY if z > 0 else Action.SELL,
                    abs(z) / (1.0 + abs(z)),
                    v.values["vol_daily"],
                )
            )
    return out
